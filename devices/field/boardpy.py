"""The field boards' "system Python": this host's interpreter, carrying this host's packages.

A train bundle built without a wheelhouse makes its release venv with ``--system-site-packages``
from the board's interpreter (devices/board/install.py), the way a Jetson's venv sees JetPack's
torch. A field board's system Python is this one: a private prefix with a copy of the running
interpreter's binary, links to its standard library, and a ``site-packages`` holding one ``.pth``
naming the running environment's site-packages. So each release venv sees torch, onnxruntime and
the rest without a 1 GB install per board (tests/deploy_support.py builds the same for the
deploy tests).

It lives beside the board prefixes (``<prefixes>/.python``), like a board's system Python on its
disk: release venvs point at it, and `field down` keeps prefixes (and releases) for a re-flash.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

PTH_NAME = "field-host-packages.pth"


def _version() -> str:
    return f"python{sys.version_info[0]}.{sys.version_info[1]}"


def host_interpreter(root: Path) -> Path:
    """Make (or reuse) the board interpreter under `root`; returns ``root/bin/python3``.

    Parameters
    ----------
    root : Path
        Its prefix, e.g. ``<prefixes>/.python``.

    Raises
    ------
    RuntimeError
        When the interpreter made does not run (``python3 -c 'import sys'`` fails).
    """
    version = _version()
    binary, python3 = root / "bin" / version, root / "bin" / "python3"
    lib = root / "lib" / version
    purelib = sysconfig.get_paths()["purelib"]
    pth = lib / "site-packages" / PTH_NAME
    if not (python3.exists() and pth.is_file() and pth.read_text().strip() == purelib):
        shutil.rmtree(root, ignore_errors=True)
        (root / "bin").mkdir(parents=True)
        # A copy, not a link: a venv made from it must resolve its home to this prefix.
        shutil.copy2(Path(getattr(sys, "_base_executable", sys.executable)).resolve(), binary)
        python3.symlink_to(version)
        (lib / "site-packages").mkdir(parents=True)
        stdlib = Path(sys.base_prefix) / "lib" / version
        for entry in stdlib.iterdir():
            if entry.name != "site-packages":
                (lib / entry.name).symlink_to(entry)
        pth.write_text(purelib + "\n")
    done = subprocess.run([str(python3), "-c", "import sys"], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{python3}: the board interpreter does not run: "
                           f"{(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return python3


__all__ = ["host_interpreter"]
