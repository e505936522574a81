"""Flash a bundle onto one board over SSH: copy, verify, install a release, switch, (re)start.

Every step runs on the board through the board tools of :mod:`devices.board` (sent along on
stdin, so the board needs nothing but ``python3`` and ``sshd``); each prints one line, relayed
here with the board's name. Order: probe (platform, free space, current release) → copy the
bundle into ``<prefix>/incoming`` → install (sha256 of the copy, platform, MANIFEST, venv) →
activate (start the new release, health window, switch ``current`` atomically). Re-flashing an
installed, running release is a no-op. Any failure raises :class:`FlashError` with one line, and
the board keeps its previous release current and running.
"""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import subprocess
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devices import bundle as bundle_mod
from devices.board.release import HEALTH_S
from devices.ssh import SshError, SshOptions, SshSession, SshTarget, classify
from exporters.manifest import sha256_file

DEFAULT_PREFIX = "/opt/parse-edge"
Log = Callable[[str], None]

# Run on the board with `python3 -c`: unpack the board tools sent on stdin into a private
# temporary folder and run devices.board.install there.
BOOTSTRAP = (
    "import io, sys, tarfile, tempfile\n"
    "data = sys.stdin.buffer.read()\n"
    "with tempfile.TemporaryDirectory(prefix='parse-edge-') as d:\n"
    "    tarfile.open(fileobj=io.BytesIO(data)).extractall(d)\n"
    "    sys.path.insert(0, d)\n"
    "    from devices.board.install import main\n"
    "    code = main(sys.argv[1:])\n"
    "sys.exit(code)\n"
)


class FlashError(Exception):
    """A flash step failed on one board; the message is one line starting with the board."""


@dataclass(frozen=True)
class Board:
    """Where and how one agent is flashed."""

    name: str  # the agent id (or the host, for a single flash)
    target: SshTarget
    prefix: str = DEFAULT_PREFIX
    python: str = "python3"  # the board interpreter that runs the tools and makes venvs


@dataclass(frozen=True)
class FlashResult:
    """The outcome for one board."""

    board: str
    host: str
    release: str
    action: str  # installed | no-op | switched | rolled back
    seconds: float


def board_tools_tar() -> bytes:
    """Pack the board tools as an uncompressed tar (a few tens of KB), deterministically."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for f in bundle_mod.collect_board_tools():
            if not f.path.startswith("tools/"):
                continue
            data = f.source if isinstance(f.source, bytes) else f.source.read_bytes()
            info = tarfile.TarInfo(f.path.removeprefix("tools/"))
            info.size, info.mtime, info.mode = len(data), bundle_mod.FIXED_MTIME, 0o644
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


class BoardSession:
    """One board's SSH session running board-tool actions."""

    def __init__(self, board: Board, options: SshOptions, log: Log) -> None:
        self.board = board
        self.ssh = SshSession(board.target, options)
        self.log = log
        self._tools = board_tools_tar()

    def __enter__(self) -> BoardSession:
        """Open the (multiplexed) SSH connection."""
        self.ssh.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        """Close it."""
        self.ssh.__exit__(*exc)

    def fail(self, message: str) -> FlashError:
        """Build a FlashError naming this board."""
        return FlashError(f"{self.board.name} ({self.board.target}): {message}")

    def action(self, action: str, *args: str, quiet: bool = False) -> list[str]:
        """Run one board action; its stdout lines (each also logged unless `quiet`).

        Raises
        ------
        FlashError
            With the board's one-line error (or ssh's) when the action fails.
        """
        remote = [self.board.python, "-c", BOOTSTRAP, action, "--prefix", self.board.prefix,
                  "--python", self.board.python, *args]
        try:
            with self.ssh.popen(remote, stdin=subprocess.PIPE) as proc:
                assert proc.stdin is not None and proc.stdout is not None
                with contextlib.suppress(BrokenPipeError):  # ssh failed: its stderr says why
                    proc.stdin.write(self._tools)
                    proc.stdin.close()
                lines = []
                for raw in proc.stdout:
                    line = raw.decode(errors="replace").rstrip()
                    lines.append(line)
                    if not quiet:
                        self.log(f"{self.board.name}: {line}")
                assert proc.stderr is not None
                stderr = proc.stderr.read().decode(errors="replace")
                code = proc.wait()
        except OSError as exc:
            raise self.fail(f"cannot run ssh ({exc})") from None
        if code == 255:
            raise self.fail(str(classify(stderr, self.board.target, self.ssh.options)))
        if code != 0:
            errors = [ln for ln in stderr.splitlines() if ln.startswith("error: ")]
            text = errors[-1][len("error: "):] if errors else (stderr.strip().splitlines()
                                                               or [f"exit status {code}"])[-1]
            raise self.fail(text)
        return lines

    def json_action(self, action: str, *args: str) -> dict[str, Any]:
        """Run an action printing one JSON document."""
        lines = self.action(action, *args, quiet=True)
        try:
            doc: dict[str, Any] = json.loads(lines[-1])
        except (IndexError, ValueError):
            raise self.fail(f"{action}: expected a JSON answer from the board tools") from None
        return doc

    def copy(self, bundle: Path, remote_path: str) -> None:
        """Stream `bundle` to `remote_path` on the board (through a .part file)."""
        folder = remote_path.rsplit("/", 1)[0]
        script = (f"mkdir -p {shlex.quote(folder)} && cat > {shlex.quote(remote_path)}.part && "
                  f"mv {shlex.quote(remote_path)}.part {shlex.quote(remote_path)}")
        try:
            with bundle.open("rb") as f:
                proc = self.ssh.run(["sh", "-c", script], stdin=f)
        except SshError as exc:
            raise self.fail(str(exc)) from None
        if proc.returncode != 0:
            self.ssh.run(["rm", "-f", f"{remote_path}.part"])
            tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
            raise self.fail(f"copy to {remote_path} failed: {tail[0]}")


def flash(bundle: Path, board: Board, options: SshOptions, *, start: bool = True,
          health_s: float = HEALTH_S, log: Log = print) -> FlashResult:
    """Flash `bundle` onto `board`.

    Raises
    ------
    FlashError
        One line naming the board: unreachable, key or host key refused, another platform, full
        disk, checksum mismatch after copy, edited MANIFEST, failed install or start.
    """
    started = time.perf_counter()
    try:
        meta = bundle_mod.read_metadata(bundle)
    except bundle_mod.BundleError as exc:
        raise FlashError(f"{board.name}: {exc}") from None
    digest = sha256_file(bundle)
    release = bundle_mod.release_name(str(meta["version"]), digest)
    log(f"{board.name}: bundle {bundle.name}: agent {meta['agent']}, role {meta['role']}, "
        f"release {release}")
    with BoardSession(board, options, log) as session:
        probe = session.json_action("probe", "--name", release)
        log(f"{board.name}: connect: {board.target}, {probe['arch']}/Python {probe['python']}, "
            f"{probe['init']}, current {probe['current'] or 'none'}")
        target = meta.get("target") or {}
        if (target.get("arch"), target.get("python")) != (probe["arch"], probe["python"]):
            raise session.fail(f"bundle targets {target.get('arch')}/Python {target.get('python')}"
                               f", board has {probe['arch']}/Python {probe['python']}; expected a "
                               "bundle built for this board (bundle --target-arch/--target-python)")
        action = "installed"
        if probe["installed"]:
            log(f"{board.name}: copy: release {release} already installed, skipped")
        else:
            size = bundle.stat().st_size
            need = 2 * size + int(meta.get("venv_bytes_estimate", 0))
            if int(probe["free_bytes"]) < need:
                raise session.fail(f"{board.prefix}: {int(probe['free_bytes']) / 1e6:.0f} MB "
                                   f"free, expected at least {need / 1e6:.0f} MB (full disk)")
            remote = f"{board.prefix}/incoming/{release}.tar.gz"
            session.copy(bundle, remote)
            log(f"{board.name}: copy: {size / 1e6:.1f} MB to {remote}")
            try:
                session.action("install", "--bundle", remote, "--name", release,
                               "--sha256", digest)
            finally:
                with contextlib.suppress(SshError):
                    session.ssh.run(["rm", "-f", remote])
        lines = session.action("activate", "--name", release, "--health-s", f"{health_s:g}",
                               *([] if start else ["--no-start"]))
        if any("already current" in ln for ln in lines):
            action = "no-op"
        elif probe["installed"]:
            action = "switched"
    return FlashResult(board.name, str(board.target), release, action,
                       time.perf_counter() - started)


def rollback(board: Board, options: SshOptions, *, start: bool = True,
             health_s: float = HEALTH_S, log: Log = print) -> FlashResult:
    """Switch `board` back to its previous release (and restart it).

    Raises
    ------
    FlashError
        When there is no previous release, or the previous release does not start.
    """
    started = time.perf_counter()
    with BoardSession(board, options, log) as session:
        session.action("rollback", "--health-s", f"{health_s:g}",
                       *([] if start else ["--no-start"]))
        state = session.json_action("status")
    return FlashResult(board.name, str(board.target), str(state.get("current")), "rolled back",
                       time.perf_counter() - started)


def start_agent(board: Board, options: SshOptions, *, fresh: bool = False,
                run_id: str | None = None, log: Log = print) -> str:
    """Start the agent of the board's current release under its supervisor (or systemd).

    `fresh` removes the agent's state first (a new trial from round 0). `run_id` (32 hex
    digits) is the trial's run: the board keeps it and its agent signs for it from the start,
    restarts included. Returns the board's answer: 'started', or 'running' when the agent was
    already running (left alone).

    Raises
    ------
    FlashError
        Unreachable board, no current release, or a supervisor that does not start.
    """
    with BoardSession(board, options, log) as session:
        lines = session.action("start", *(["--fresh"] if fresh else []),
                               *(["--run-id", run_id] if run_id is not None else []))
    return "running" if any("already runs" in ln for ln in lines) else "started"


def stop_agent(board: Board, options: SshOptions, log: Log = print) -> None:
    """Stop the agent of the board's current release (SIGTERM through its supervisor).

    Raises
    ------
    FlashError
        When the board cannot be reached.
    """
    with BoardSession(board, options, log) as session:
        session.action("stop")


def board_status(board: Board, options: SshOptions) -> dict[str, Any]:
    """Ask the board for its current release, whether its agent runs, its last metrics line."""
    with BoardSession(board, options, lambda line: None) as session:
        return session.json_action("status")
