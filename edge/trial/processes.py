"""Agent processes of a trial: launch, stop, restart and classify how each one ended."""

from __future__ import annotations

import os
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from edge.trial.launch import AgentHandle, Launcher


class ExitKind(str, Enum):
    """How an agent process ended."""

    RUNNING = "running"
    FINISHED = "finished"      # exit status 0
    STOPPED = "stopped"        # the runner stopped it (leave fault, Ctrl-C, timeout)
    KILLED = "killed"          # killed by a signal nobody in the runner sent (OOM killer, kill -9)
    FAILED = "failed"          # non-zero exit status the runner did not cause


def tail_lines(path: Path, lines: int = 20) -> list[str]:
    """Return the last `lines` lines of a text file (empty when it does not exist)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return []
    return list(deque(text.splitlines(), maxlen=lines))


@dataclass
class AgentProcess:
    """One agent: its `parse-edge` arguments, its folder, the current process and its history."""

    agent_id: str
    argv: list[str]
    folder: Path
    env: dict[str, str]
    launcher: Launcher
    handle: AgentHandle | None = None
    starts: int = 0
    stop_requested: bool = False
    exit_kind: ExitKind = ExitKind.RUNNING
    returncode: int | None = None
    started_at: float = 0.0
    exits: list[dict[str, Any]] = field(default_factory=list)

    @property
    def log_path(self) -> Path:
        """The agent's stdout and stderr, appended across restarts."""
        return self.folder / "agent.log"

    @property
    def pid_path(self) -> Path:
        """Where the current process id is written."""
        return self.folder / "agent.pid"

    @property
    def pid(self) -> int | None:
        """The current process id (None before the first start)."""
        return self.handle.pid if self.handle is not None else None

    @property
    def alive(self) -> bool:
        """Whether the current process is running."""
        return self.handle is not None and self.handle.poll() is None

    def start(self, note: str = "") -> None:
        """Start (or restart) the process; output is appended to agent.log."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.starts:
            with self.log_path.open("ab") as log:
                log.write(f"--- trial runner: restart {self.starts} ({note}) ---\n".encode())
        self.handle = self.launcher.start(self.argv, self.log_path, self.env)
        self.pid_path.write_text(f"{self.handle.pid}\n")
        self.starts += 1
        self.started_at = time.monotonic()
        self.stop_requested = False
        self.exit_kind = ExitKind.RUNNING
        self.returncode = None

    def poll(self) -> ExitKind | None:
        """If the process ended since the last call, classify and return how; else None."""
        if self.handle is None or self.exit_kind != ExitKind.RUNNING:
            return None
        code = self.handle.poll()
        if code is None:
            return None
        self.returncode = code
        if code == 0:
            self.exit_kind = ExitKind.FINISHED
        elif self.stop_requested:
            self.exit_kind = ExitKind.STOPPED
        elif code < 0:
            self.exit_kind = ExitKind.KILLED
        else:
            self.exit_kind = ExitKind.FAILED
        self.exits.append({"returncode": code, "kind": self.exit_kind.value,
                           "ran_s": round(time.monotonic() - self.started_at, 3)})
        return self.exit_kind

    def request_stop(self) -> None:
        """SIGTERM (the agent publishes offline status and exits); `wait_stopped` escalates."""
        if self.alive:
            assert self.handle is not None
            self.stop_requested = True
            self.handle.send_signal(signal.SIGTERM)

    def wait_stopped(self, timeout_s: float) -> None:
        """Wait for the exit; SIGKILL after `timeout_s`."""
        if self.handle is None:
            return
        if self.handle.wait(timeout_s) is None:
            self.handle.send_signal(signal.SIGKILL)
            self.handle.wait(30.0)

    def log_tail(self, lines: int = 20) -> list[str]:
        """Return the last lines the agent wrote (stdout and stderr)."""
        return tail_lines(self.log_path, lines)


def agent_env(n_agents: int, cores: int | None = None) -> dict[str, str]:
    """Build the environment of agent processes: torch threads split over the cores.

    So that N agents on C cores do not oversubscribe the CPU (the agents also set one torch
    thread themselves).
    """
    cores = cores or os.cpu_count() or 1
    threads = str(max(1, cores // max(1, n_agents)))
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})
    return env


def stop_all(agents: list[AgentProcess], timeout_s: float = 10.0) -> None:
    """SIGTERM every live agent at once, then wait for each (SIGKILL the ones that hang)."""
    for agent in agents:
        agent.request_stop()
    deadline = time.monotonic() + timeout_s
    for agent in agents:
        agent.wait_stopped(max(0.1, deadline - time.monotonic()))
        agent.poll()
