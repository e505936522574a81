"""Starting agent processes on this host: from a fork server, or as fresh isolated interpreters.

Each agent is its own process either way - its own MQTT client, log file, pid and memory - and
runs `parse-edge agent ...` with the package the runner runs, never an `edge/` from the working
directory:

- `ForkServerLauncher` (the default): multiprocessing's *forkserver* start method. One server
  process imports torch and the project once (`edge.trial.preload`); each agent is forked from it
  in milliseconds and shares those pages copy-on-write, so a fleet starts in a fraction of the time
  and each agent's unique memory (USS) is a fraction of its RSS. The server imports from the
  package root of the runner's `edge` (its working directory while it starts), and every forked
  agent drops the working directory from `sys.path`.
- `IsolatedLauncher` (`--isolated`): a fresh `python -I` per agent (isolated mode: no working
  directory or user site on `sys.path`, no PYTHON* variables), importing the runner's package by
  its absolute path.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import edge

PR_SET_PDEATHSIG = 1
# The directory holding the `edge` package the runner imported (a checkout or site-packages).
PACKAGE_ROOT = str(Path(edge.__file__).resolve().parents[1])
# What the fork server imports once, before it forks any agent.
PRELOAD = ["edge.trial.preload"]
# `python -I -c BOOT args...`: the runner's package first on sys.path, then the CLI.
BOOT = ("import sys; sys.path.insert(0, sys.argv.pop(1)); from edge.cli import main; "
        "sys.exit(main(sys.argv[1:]))")


def _load_prctl() -> Any:
    # Resolved once in the runner: a child between fork and exec should only call it (loading a
    # library there could wait forever on a lock another runner thread held at fork time).
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent dies, even by SIGKILL.

    So no agent learns on after a crashed runner (for a forked agent the parent is the fork
    server, which exits with the runner).
    """
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, int(signal.SIGTERM))


class AgentHandle(Protocol):
    """A started agent process, as the runner controls it.

    Popen's conventions: a negative return code is the signal that ended the process.
    """

    @property
    def pid(self) -> int:
        """The process id."""

    def poll(self) -> int | None:
        """Return the return code once the process ended, else None."""

    def send_signal(self, sig: int) -> None:
        """Send a signal (ignored when the process is gone)."""

    def wait(self, timeout_s: float) -> int | None:
        """Wait up to `timeout_s`; the return code, or None if it still runs."""


class Launcher(Protocol):
    """Starts agent processes; `close` releases what the launcher holds (not the agents)."""

    name: str

    def start(self, argv: list[str], log_path: Path, env: dict[str, str]) -> AgentHandle:
        """Start `parse-edge <argv>` with stdout and stderr appended to `log_path`."""

    def close(self) -> None:
        """Release the launcher's resources."""


class PopenHandle:
    """An agent started as a subprocess."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process

    @property
    def pid(self) -> int:
        """The process id."""
        return self.process.pid

    def poll(self) -> int | None:
        """Return the return code once ended, else None."""
        return self.process.poll()

    def send_signal(self, sig: int) -> None:
        """Send `sig` unless the process is gone."""
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(sig)

    def wait(self, timeout_s: float) -> int | None:
        """Wait up to `timeout_s` for the exit."""
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None


class ForkedHandle:
    """An agent forked from the fork server (a `multiprocessing.Process`)."""

    def __init__(self, process: Any) -> None:
        self.process = process

    @property
    def pid(self) -> int:
        """The process id."""
        return int(self.process.pid)

    def poll(self) -> int | None:
        """Return the return code once ended (negative: the signal), else None."""
        code = self.process.exitcode
        return None if code is None else int(code)

    def send_signal(self, sig: int) -> None:
        """Send `sig` unless the process has already ended."""
        if self.process.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, sig)

    def wait(self, timeout_s: float) -> int | None:
        """Wait up to `timeout_s` for the exit."""
        self.process.join(timeout_s)
        return self.poll()


class IsolatedLauncher:
    """A fresh `python -I` interpreter per agent (today's behaviour, minus the working directory)."""

    name = "isolated"

    def __init__(self, python: str = sys.executable) -> None:
        self.python = python

    def command(self, argv: list[str]) -> list[str]:
        """Return the full command line of one agent (unbuffered, isolated, the runner's package)."""
        return [self.python, "-I", "-u", "-c", BOOT, PACKAGE_ROOT, *argv]

    def start(self, argv: list[str], log_path: Path, env: dict[str, str]) -> AgentHandle:
        """Start the agent in its own session (Ctrl-C at the terminal reaches the runner only)."""
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                self.command(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, start_new_session=True,
                preexec_fn=die_with_parent if _PRCTL is not None else None)
        return PopenHandle(process)

    def close(self) -> None:
        """Nothing to release."""


@contextlib.contextmanager
def _working_directory(path: str) -> Iterator[None]:
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


class ForkServerLauncher:
    """Agents forked from one multiprocessing fork server that preloaded `edge.trial.preload`.

    The server is shared by every trial of this process (multiprocessing keeps one) and exits
    with it.
    """

    name = "fork server"

    def __init__(self) -> None:
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(PRELOAD)
        # Python < 3.14 starts the server with `python -c`, whose sys.path[0] is its working
        # directory: let that be the root of the runner's own package, never the user's.
        with _working_directory(PACKAGE_ROOT):
            multiprocessing.forkserver.ensure_running()

    def start(self, argv: list[str], log_path: Path, env: dict[str, str]) -> AgentHandle:
        """Fork one agent (its working directory and sys.path come from the runner)."""
        process = self.context.Process(target=agent_main, args=(argv, str(log_path), env),
                                       name=f"parse-edge agent {' '.join(argv[:4])}", daemon=True)
        process.start()
        return ForkedHandle(process)

    def close(self) -> None:
        """Nothing to release: the server is reused by later trials and exits with the runner."""


def agent_main(argv: list[str], log_path: str, env: dict[str, str]) -> None:
    """Run a forked agent: its own session and log, then `parse-edge <argv>`."""
    os.setsid()
    die_with_parent()
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    os.environ.update(env)
    cwd = os.getcwd()
    # Lazy imports must not find an `edge/` (or anything else) in the working directory either.
    sys.path[:] = [p for p in sys.path if p not in ("", ".", cwd) or p == PACKAGE_ROOT]
    from edge.cli import main

    sys.exit(main(argv))


def make_launcher(isolated: bool, python: str = sys.executable) -> Launcher:
    """Make the launcher a trial uses: isolated interpreters, or the fork server (default)."""
    return IsolatedLauncher(python) if isolated else ForkServerLauncher()
