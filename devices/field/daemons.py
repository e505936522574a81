"""Daemons inside a namespace: spawn detached, wait until they answer, stop them.

A daemon is started as ``ip netns exec NS DAEMON …`` in the foreground (``sshd -D``,
``mosquitto -c``) in its own session, with stdout and stderr appended to a log file; `ip netns
exec` execs the daemon in place, so the spawned pid is the daemon's. It outlives the command that
started it (`field up` exits; the field stays). `field down` stops every process inside the
field's namespaces, whoever started it (the deploy's supervisor and its agents included): the
namespaces are the field's, so is everything in them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import time
from collections.abc import Sequence
from pathlib import Path

from devices.field import iproute

BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8"}
STOP_GRACE_S = 5.0


class DaemonError(RuntimeError):
    """A daemon did not start; the message is one line with the last line of its log."""


def spawn_in_netns(netns: str, argv: Sequence[str], log: Path) -> int:
    """Start `argv` inside `netns` in a new session, logging to `log`; return its pid."""
    ip = shutil.which("ip") or "/usr/sbin/ip"
    full = iproute.netns_exec_argv(netns, argv)
    full[0] = ip
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(log), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    return os.posix_spawn(ip, full, BASE_ENV, file_actions=actions, setsid=True)


def reap(pid: int) -> bool:
    """Collect `pid` if it is our exited child; True when it has exited (or is not ours)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return not Path(f"/proc/{pid}").exists()
    return done == pid


def last_log_line(log: Path) -> str:
    """Return the last non-empty line of a log file, or a note that it is empty."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        lines = []
    return lines[-1] if lines else f"(nothing in {log})"


def wait_listening(pid: int, host: str, port: int, log: Path, what: str,
                   timeout_s: float = 10.0) -> None:
    """Wait until `host:port` accepts TCP connections while `pid` runs.

    Raises
    ------
    DaemonError
        When the daemon exits first or the port stays closed for `timeout_s`.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if reap(pid):
            raise DaemonError(f"{what} exited: {last_log_line(log)}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise DaemonError(f"{what} did not listen on {host}:{port} within {timeout_s:g} s: "
                                  f"{last_log_line(log)}") from None
            time.sleep(0.05)


def stop_netns_processes(netns: str, grace_s: float = STOP_GRACE_S) -> list[int]:
    """SIGTERM every process in `netns`, SIGKILL what is left after `grace_s`; return the pids.

    Raises
    ------
    FieldCommandError
        When processes are still in the namespace after SIGKILL.
    """
    stopped: list[int] = []
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        # Listed again before SIGKILL: a supervisor may have restarted a child meanwhile.
        pids = iproute.netns_pids(netns)
        if not pids:
            return stopped
        stopped += [p for p in pids if p not in stopped]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            for pid in pids:
                reap(pid)
            if not iproute.netns_pids(netns):
                return stopped
            time.sleep(0.05)
    left = iproute.netns_pids(netns)
    if left:
        raise iproute.FieldCommandError(f"ip netns pids {netns}: still running after SIGKILL: {left}")
    return stopped
