"""A small process supervisor for boards without systemd (stdlib only; shipped in every bundle).

``supervisor.py start --run-dir D --log F --release R -- CMD...`` starts a detached supervisor
(a new process in its own session; ``run`` instead of ``start`` stays in the foreground) that
writes ``D/supervisor.pid`` and keeps ``CMD`` running: a child that exits non-zero or dies from a
signal is restarted after an exponential backoff (1 s doubling to 30 s, reset once a child has
run for 60 s), the way systemd's ``Restart=on-failure`` with ``RestartSec`` behaves; a child that
exits 0 has finished its work and is not restarted. Child output is appended to the log file.
``D/state.json`` records the supervisor and child pids, restarts and the last exit status.
``supervisor.py stop --run-dir D`` sends SIGTERM (forwarded to the child, SIGKILL after a grace
period) and waits; ``supervisor.py status --run-dir D`` prints that state as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
# A child that stayed up this long was healthy: the next failure starts the backoff afresh.
BACKOFF_RESET_AFTER_S = 60.0
STOP_GRACE_S = 10.0


def read_state(run_dir: Path) -> dict[str, Any]:
    """Read the state file merged with liveness: ``running`` is True while the pid lives.

    Parameters
    ----------
    run_dir : Path
        The supervisor's run directory.

    Returns
    -------
    dict
        ``state.json`` (empty when absent) plus ``running`` (bool).
    """
    # The pid file first: a supervisor whose child finished writes `finished` to the state and
    # only then removes its pid file, so a reader that finds no pid file reads `finished` too
    # (read the other way round, a finished agent could look like one that died).
    pid = _read_pid(run_dir / "supervisor.pid")
    alive = pid is not None and _alive(pid)
    try:
        state: dict[str, Any] = json.loads((run_dir / "state.json").read_text())
    except (OSError, ValueError):
        state = {}
    state["running"] = alive
    return state


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); its /proc state is 'Z'.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _write_state(run_dir: Path, state: dict[str, Any]) -> None:
    tmp = run_dir / "state.json.tmp"
    tmp.write_text(json.dumps(state, sort_keys=True))
    os.replace(tmp, run_dir / "state.json")


class _Supervisor:
    def __init__(self, run_dir: Path, log: Path, release: str, command: list[str]) -> None:
        self.run_dir = run_dir
        self.log = log
        self.command = command
        self.child: subprocess.Popen[bytes] | None = None
        self.stopping = False
        self.state: dict[str, Any] = {
            "supervisor_pid": os.getpid(), "child_pid": None, "restarts": 0, "last_exit": None,
            "release": release, "started_at": time.time(), "finished": False,
        }

    def on_term(self, signum: int, frame: object) -> None:
        self.stopping = True
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)

    def run(self) -> int:
        backoff_s = BACKOFF_FIRST_S
        while not self.stopping:
            started = time.monotonic()
            with self.log.open("ab") as out:
                self.child = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=out,
                                              stderr=subprocess.STDOUT, start_new_session=True)
            self.state["child_pid"] = self.child.pid
            _write_state(self.run_dir, self.state)
            code = self._wait_child()
            self.state["last_exit"] = code
            self.state["child_pid"] = None
            if self.stopping:
                break
            if code == 0:
                self.state["finished"] = True
                _write_state(self.run_dir, self.state)
                self._note("child exited 0 (finished); not restarting")
                return 0
            if time.monotonic() - started >= BACKOFF_RESET_AFTER_S:
                backoff_s = BACKOFF_FIRST_S
            self.state["restarts"] = int(self.state["restarts"]) + 1
            _write_state(self.run_dir, self.state)
            self._note(f"child exited with status {code}; restarting in {backoff_s:.0f} s")
            self._sleep(backoff_s)
            backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)
        _write_state(self.run_dir, self.state)
        return 0

    def _wait_child(self) -> int:
        assert self.child is not None
        deadline: float | None = None
        while True:
            try:
                return self.child.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
            if self.stopping:
                deadline = deadline or time.monotonic() + STOP_GRACE_S
                if time.monotonic() > deadline:
                    self.child.kill()

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < end:
            time.sleep(0.1)

    def _note(self, line: str) -> None:
        with self.log.open("a") as out:
            out.write(f"[supervisor {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}] {line}\n")


def start(run_dir: Path, log: Path, release: str, command: list[str]) -> int:
    """Start a detached supervisor for `command`; returns 0 once its pid file exists.

    The supervisor is a new process in its own session (``supervisor.py run ...``, started with
    ``setsid`` semantics and stdio on /dev/null), not a fork of the caller, so a caller with
    threads (a test runner, an SSH session) cannot leave it holding a lock or a pipe.

    Raises
    ------
    RuntimeError
        When a supervisor already runs for `run_dir`.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    pid_file = run_dir / "supervisor.pid"
    old = _read_pid(pid_file)
    if old is not None and _alive(old):
        raise RuntimeError(f"{run_dir}: a supervisor already runs (pid {old})")
    pid_file.unlink(missing_ok=True)
    (run_dir / "state.json").unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "run", "--run-dir",
                             str(run_dir), "--log", str(log), "--release", release, "--",
                             *command], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    deadline = time.monotonic() + 10
    while not pid_file.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return 0 if pid_file.exists() else 1


def run(run_dir: Path, log: Path, release: str, command: list[str]) -> int:
    """Supervise `command` in the foreground until stopped (what ``start`` runs detached)."""
    supervisor = _Supervisor(run_dir, log, release, command)
    signal.signal(signal.SIGTERM, supervisor.on_term)
    signal.signal(signal.SIGINT, supervisor.on_term)
    _write_state(run_dir, supervisor.state)
    pid_file = run_dir / "supervisor.pid"
    tmp = run_dir / "supervisor.pid.tmp"
    tmp.write_text(str(os.getpid()))
    os.replace(tmp, pid_file)
    try:
        return supervisor.run()
    finally:
        pid_file.unlink(missing_ok=True)


def stop(run_dir: Path, timeout_s: float = STOP_GRACE_S + 5) -> bool:
    """Stop the supervisor of `run_dir` and its child; True if one was running."""
    pid = _read_pid(run_dir / "supervisor.pid")
    if pid is None or not _alive(pid):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    return True


def main(argv: list[str] | None = None) -> int:
    """Command line: start | stop | status."""
    parser = argparse.ArgumentParser(prog="supervisor.py", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "run", "stop", "status"])
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--log", type=Path, default=None)
    parser.add_argument("--release", default="")
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after `--` is the supervised command, options included.
    command = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if args.action in ("start", "run"):
        if not command or args.log is None:
            parser.error(f"{args.action} needs --log and a command after --")
        if args.action == "run":
            return run(args.run_dir, args.log, args.release, command)
        try:
            return start(args.run_dir, args.log, args.release, command)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.action == "stop":
        stop(args.run_dir)
        return 0
    print(json.dumps(read_state(args.run_dir), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
