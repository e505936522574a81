"""Build the parse-edge wheel reproducibly, for bundles.

The source tree is copied (packages, pyproject.toml, README.md; no caches, no build/ or egg-info
left over from earlier builds) with normalised modes, and built by ``pip wheel --no-deps
--no-build-isolation`` with ``SOURCE_DATE_EPOCH`` set: setuptools' bdist_wheel writes entries in
sorted order and stamps them with that time, so the same sources give the same wheel bytes
(https://reproducible-builds.org/docs/source-date-epoch/).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from devices.bundle import FIXED_MTIME, BundleError

PACKAGES = ("edge", "broker", "exporters", "devices")
TOP_FILES = ("pyproject.toml", "README.md")


def project_root() -> Path:
    """Find the source checkout this parse-edge runs from.

    Raises
    ------
    BundleError
        When parse-edge runs from an installed wheel (no pyproject.toml beside the packages).
    """
    root = Path(__file__).resolve().parents[1]
    if not (root / "pyproject.toml").is_file() or not all((root / p).is_dir() for p in PACKAGES):
        raise BundleError(f"{root}: expected a parse-edge source checkout to build the wheel "
                          "from; pass --wheel FILE.whl instead")
    return root


def _copy_sources(root: Path, dest: Path) -> None:
    for name in TOP_FILES:
        shutil.copyfile(root / name, dest / name)
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*")):
            if "__pycache__" in path.parts or path.suffix in (".pyc", ".pyo") or not path.is_file():
                continue
            target = dest / path.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    for path in dest.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
        os.utime(path, (FIXED_MTIME, FIXED_MTIME))


def build_wheel(out_dir: Path, root: Path | None = None) -> Path:
    """Build the project wheel into `out_dir`; returns its path.

    Raises
    ------
    BundleError
        When the build fails (its last output line is in the message).
    """
    root = root or project_root()
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="parse-edge-wheel-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        _copy_sources(root, src)
        built = Path(tmp) / "dist"
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(FIXED_MTIME), "PYTHONHASHSEED": "0",
               "PIP_CONFIG_FILE": os.devnull}
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                               "--no-build-isolation", "--no-index", "-w", str(built), str(src)],
                              env=env, capture_output=True, text=True, cwd=tmp)
        wheels = sorted(built.glob("*.whl")) if built.is_dir() else []
        if proc.returncode != 0 or len(wheels) != 1:
            lines = (proc.stderr or proc.stdout).strip().splitlines() or ["no wheel written"]
            raise BundleError(f"{root}: building the wheel failed: {lines[-1]}")
        target = out_dir / wheels[0].name
        shutil.copyfile(wheels[0], target)
    return target
