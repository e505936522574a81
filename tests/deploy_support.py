"""Real boards for deploy tests: a private sshd on 127.0.0.1, a board Python, a local wheelhouse.

- `Sshd` starts Debian's /usr/sbin/sshd on a free loopback port with throw-away host and user
  keys (ssh-keygen), root login by key only, and writes a known_hosts file for it.
- `board_python` builds a "board interpreter": a Python installation (the same CPython binary
  and standard library as the test interpreter, linked into a private prefix) whose system
  site-packages holds the heavy packages (torch, onnx, ...) of the test environment through a
  .pth file — the way a Jetson's system Python carries JetPack's torch. Release venvs made with
  `--system-site-packages` from it see them without installing 1 GB per release.
- `local_wheelhouse` assembles a wheelhouse with `pip download` from the machine's local package
  sources (/opt/wheels and the local index pip is configured with): no network.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from devices.ssh import SshOptions, SshTarget
from tests.conftest import free_port, port_open

SSHD = "/usr/sbin/sshd"


class Sshd:
    """One sshd on 127.0.0.1:<free port>, accepting root with a throw-away key."""

    def __init__(self, root: Path, client_key: Path | None = None) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.host_key = root / "host_ed25519"
        _keygen(self.host_key)
        self.client_key = client_key or root / "id_ed25519"
        if not self.client_key.exists():
            _keygen(self.client_key)
        self.authorized_keys = root / "authorized_keys"
        self.authorized_keys.write_text(Path(f"{self.client_key}.pub").read_text())
        self.known_hosts = root / "known_hosts"
        host_pub = Path(f"{self.host_key}.pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        config = root / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.host_key}\n"
            f"PidFile {root / 'sshd.pid'}\nAuthorizedKeysFile {self.authorized_keys}\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPrintMotd no\n"
            "MaxSessions 50\nMaxStartups 50\nLogLevel ERROR\n")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sshd did not start on port {self.port}")
            time.sleep(0.05)

    @property
    def target(self) -> SshTarget:
        """root@127.0.0.1:<port>."""
        return SshTarget("127.0.0.1", "root", self.port)

    def options(self, **overrides: object) -> SshOptions:
        """SSH options for this board: its key, its known_hosts, no user ssh_config."""
        values: dict[str, object] = {"identity": self.client_key, "known_hosts": self.known_hosts,
                                     "config_file": Path("/dev/null"), "connect_timeout_s": 5}
        values.update(overrides)
        return SshOptions(**values)  # type: ignore[arg-type]

    def stop(self) -> None:
        """Stop sshd (sessions it forked end with their connections)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "parse-edge-test",
                    "-f", str(path)], check=True)


def board_python(root: Path) -> Path:
    """A board interpreter whose system site-packages carry the test environment's packages.

    The prefix holds a copy of the interpreter binary (it finds libpython by its absolute
    rpath) and links to every standard library entry; `site-packages/` is its own, with one
    .pth naming this environment's site-packages. Returns `root/bin/python3`.
    """
    base = Path(sys.base_prefix)
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    stdlib = base / "lib" / version
    (root / "bin").mkdir(parents=True, exist_ok=True)
    binary = root / "bin" / version
    shutil.copy2(Path(getattr(sys, "_base_executable", sys.executable)).resolve(), binary)
    (root / "bin" / "python3").symlink_to(version)
    lib = root / "lib" / version
    (lib / "site-packages").mkdir(parents=True)
    for entry in stdlib.iterdir():
        if entry.name != "site-packages":
            (lib / entry.name).symlink_to(entry)
    purelib = sysconfig.get_paths()["purelib"]
    (lib / "site-packages" / "board-system-packages.pth").write_text(purelib + "\n")
    return root / "bin" / "python3"


def local_wheelhouse(dest: Path, requirements: list[str]) -> Path:
    """`pip download` `requirements` (with dependencies) from the machine's local sources."""
    dest.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:",
                    "-d", str(dest), *requirements], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    return dest


_WHEELS: dict[str, Path] = {}


def project_wheel(out_dir: Path) -> Path:
    """The parse-edge wheel, built once per test session (reproducibly; ~2 s)."""
    if "wheel" not in _WHEELS:
        from devices.wheel import build_wheel

        _WHEELS["wheel"] = build_wheel(out_dir)
    return _WHEELS["wheel"]
