"""The boards of a field trial: bundle, flash, start, stop and read back, as on a real fleet.

Every step goes through the deploy code a real fleet uses (devices.bundle, devices.flash over the
OpenSSH client into each board's sshd, the board's supervisor), aimed at the field's boards: one
bundle per agent whose config names the board's *site* broker, flashed into the board's prefix
without starting, then every agent started at once (`install.py start --fresh`: a trial starts
from round 0, never from an earlier trial's checkpoint). Metrics are read from the board's prefix
while the trial runs (the field's boards share this machine's file system: the runner sees a
round as soon as it is written) and fetched over SSH into the trial's folder at the end.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from devices.board import supervisor
from devices.bundle import write_bundle
from devices.field.boardpy import host_interpreter
from devices.field.iproute import FieldCommandError, LinkCounters, link_counters
from devices.field.lifecycle import FieldPaths
from devices.field.plan import SSH_PORT, BoardPlan, FieldPlan
from devices.field.spec import FieldSpec
from devices.flash import Board, FlashError, flash, start_agent, stop_agent
from devices.ssh import SshError, SshOptions, SshSession, SshTarget
from devices.wheel import build_wheel
from edge.config.schema import FleetConfig
from edge.deploy import BundleRequest, bundle_spec
from edge.errors import UserError

Log = Callable[[str], None]
# Files of an agent's folder the record is built from (edge/net/agent.py writes them).
AGENT_FILES = ("metrics.jsonl", "final.json")
FLASH_WORKERS = 4


@dataclass
class Counters:
    """A board's eth0 counters at the three moments a trial reads them."""

    before_start: LinkCounters | None = None   # before the SSH session that starts the agent
    started: LinkCounters | None = None        # once that session ended (the agent connects later)
    ended: LinkCounters | None = None          # when the agent had ended, before any stop session


@dataclass
class FieldBoard:
    """One board of the trial: where it is, how to reach it, what it counted."""

    plan: BoardPlan
    board: Board
    counters: Counters = field(default_factory=Counters)
    release: str = ""
    flash_action: str = ""
    log_offset: int = 0      # the board's agent.log accumulates across trials: ours starts here

    @property
    def agent_dir(self) -> Path:
        """Where the board's agent writes metrics.jsonl, checkpoint.pt and final.json."""
        return self.plan.prefix / "state" / "agents" / self.plan.id

    @property
    def run_dir(self) -> Path:
        """The board supervisor's run directory (pid and state files)."""
        return self.plan.prefix / "run"

    @property
    def log_path(self) -> Path:
        """The agent's log on the board (the supervisor appends to it)."""
        return self.plan.prefix / "log" / "agent.log"

    def read_counters(self) -> LinkCounters | None:
        """The eth0 counters now (None once the field is gone)."""
        try:
            return link_counters(self.plan.near)
        except FieldCommandError:
            return None


def board_config_text(text: str, cfg: FleetConfig, quorum: int) -> str:
    """The bundled config with the trial's effective settings the agents must agree on.

    Rounds, strategy, quorum and start timeout as the runner computed them (its overrides and
    the quorum it waits for), and the model's `auto` split and synergy scope as the runner
    resolved them before round 0 (edge.learning.auto_model: a board cannot build `auto`), so
    every board runs what the report says ran.
    """
    doc: dict[str, Any] = yaml.safe_load(text) or {}
    model = doc.get("model")
    if isinstance(model, dict):
        if model.get("split") == "auto" and not isinstance(cfg.model.split, str):
            model["split"] = [float(w) for w in cfg.model.split]
        scope = cfg.model.synergy_scope
        if model.get("synergy_scope") == "auto" and scope != "auto":
            model["synergy_scope"] = dict(scope) if isinstance(scope, dict) else scope
    doc["strategy"] = cfg.strategy
    training = doc.setdefault("training", {}) or {}
    doc["training"] = training
    training["rounds"] = cfg.training.rounds
    training["quorum"] = quorum
    training["start_timeout_s"] = cfg.training.start_timeout_s
    return yaml.safe_dump(doc, sort_keys=False)


def board_python(spec: FieldSpec) -> str:
    """The boards' interpreter: the field file's `board_python`, else this host's (boardpy)."""
    if spec.doc.board_python:
        return spec.doc.board_python
    return str(host_interpreter(spec.prefixes / ".python"))


class FieldBoards:
    """Bundles, flashing and agent control for every board of a field that is up."""

    def __init__(self, spec: FieldSpec, plan: FieldPlan, paths: FieldPaths, log: Log) -> None:
        self.spec = spec
        self.plan = plan
        self.log = log
        self.options = SshOptions(identity=paths.identity, known_hosts=paths.known_hosts,
                                  config_file=Path(os.devnull), connect_timeout_s=10)
        python = board_python(spec)
        self.boards = {
            b.id: FieldBoard(b, Board(b.id, SshTarget(str(b.address), "root", SSH_PORT),
                                      str(b.prefix), python))
            for b in plan.boards}
        self._started: set[str] = set()

    # --- flash ------------------------------------------------------------------------------

    def flash_all(self, cfg: FleetConfig, quorum: int, health_s: float) -> None:
        """Bundle every agent for its site's broker and flash it over SSH (not started).

        A board already holding the same release is left as it is (flash's no-op).

        Raises
        ------
        UserError
            When a bundle cannot be built or a board cannot be flashed (one line per board).
        """
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"parse-edge-field-{self.plan.name}-") as tmp:
            wheel = build_wheel(Path(tmp))
            bundles: dict[str, Path] = {}
            for agent_id, fb in self.boards.items():
                # The field's boards are this machine: bundles target its architecture, whatever
                # board the agent's device profile names (that profile still gives the energy
                # estimates, reported as emulated).
                request = BundleRequest(broker_url=fb.plan.broker_url,
                                        target_arch=platform.machine(),
                                        target_python=f"{sys.version_info[0]}.{sys.version_info[1]}")
                bspec = bundle_spec(cfg, agent_id, request, wheel)
                bspec = replace(bspec, config_text=board_config_text(bspec.config_text, cfg, quorum))
                bundles[agent_id] = write_bundle(bspec, Path(tmp) / f"{agent_id}.tar.gz").path
            self.log(f"[field] {len(bundles)} bundles built in {time.monotonic() - t0:.1f} s; "
                     f"flashing over SSH ({FLASH_WORKERS} boards at a time)")
            errors: list[str] = []

            def one(agent_id: str) -> None:
                fb = self.boards[agent_id]
                try:
                    result = flash(bundles[agent_id], fb.board, self.options, start=False,
                                   health_s=health_s, log=lambda line: None)
                except FlashError as exc:
                    errors.append(str(exc))
                    return
                fb.release, fb.flash_action = result.release, result.action

            with ThreadPoolExecutor(max_workers=FLASH_WORKERS) as pool:
                list(pool.map(one, list(self.boards)))
        if errors:
            raise UserError(f"flash: {sorted(errors)[0]}"
                            + (f" (and {len(errors) - 1} more boards)" if len(errors) > 1 else ""))
        actions = sorted({fb.flash_action for fb in self.boards.values()})
        self.log(f"[field] flashed {len(self.boards)} boards in {time.monotonic() - t0:.1f} s "
                 f"({', '.join(actions)})")

    # --- agents -----------------------------------------------------------------------------

    def start(self, agent_id: str, run_id: str | None = None) -> BoardHandle:
        """Start the board's agent through its supervisor; fresh state on the trial's first start.

        `run_id` (32 hex digits): the trial's run, kept by the board for its agent's starts.

        Raises
        ------
        RuntimeError
            When the board does not start its agent.
        """
        fb = self.boards[agent_id]
        fresh = agent_id not in self._started
        if fresh:
            fb.counters.before_start = fb.read_counters()
            fb.log_offset = fb.log_path.stat().st_size if fb.log_path.is_file() else 0
        try:
            start_agent(fb.board, self.options, fresh=fresh, run_id=run_id, log=lambda line: None)
        except FlashError as exc:
            raise RuntimeError(str(exc)) from None
        if fresh:
            fb.counters.started = fb.read_counters()
        self._started.add(agent_id)
        return BoardHandle(self, fb)

    def stop_quietly(self, agent_id: str) -> None:
        """Stop the board's agent over SSH; an unreachable board is stopped by `field down`."""
        try:
            stop_agent(self.boards[agent_id].board, self.options, log=lambda line: None)
        except FlashError as exc:
            self.log(f"[field] {agent_id}: stop: {exc}")

    def collect(self, out: Path) -> None:
        """Fetch each board's metrics.jsonl, final.json and agent log into `out/agents/<id>/`.

        Over SSH, as from a real board (`cat`, and `tail -c` for the part of the log this trial
        wrote); a board that cannot be reached is read from its prefix instead, and says so.
        """
        with ThreadPoolExecutor(max_workers=FLASH_WORKERS) as pool:
            list(pool.map(lambda agent_id: self._collect_one(agent_id, out), list(self.boards)))

    def _collect_one(self, agent_id: str, out: Path) -> None:
        fb = self.boards[agent_id]
        dest = out / "agents" / agent_id
        dest.mkdir(parents=True, exist_ok=True)
        wanted = [(["cat", str(fb.agent_dir / name)], dest / name, fb.agent_dir / name, 0)
                  for name in AGENT_FILES]
        # After the runner's own lines in agent.log: the failure tail in the report is the board's.
        wanted.append((["tail", "-c", f"+{fb.log_offset + 1}", str(fb.log_path)],
                       dest / "agent.log", fb.log_path, fb.log_offset))
        try:
            with SshSession(fb.board.target, self.options) as ssh:
                for remote, local, _, _ in wanted:
                    done = ssh.run(remote, timeout_s=60)
                    if done.returncode == 0:
                        with local.open("ab" if local.name == "agent.log" else "wb") as f:
                            f.write(done.stdout)
            return
        except (SshError, subprocess.TimeoutExpired) as exc:
            self.log(f"[field] {agent_id}: files read from its prefix (SSH: {exc})")
        for _, local, source, offset in wanted:
            if source.is_file():
                with source.open("rb") as src, local.open("ab" if local.name == "agent.log"
                                                          else "wb") as f:
                    src.seek(offset)
                    f.write(src.read())


class BoardHandle:
    """A board's supervised agent as the trial runner sees a process (edge.trial.launch).

    Running while the board's supervisor runs (it restarts a killed agent itself); ended with
    status 0 when the agent finished, else the agent's last exit status (negative: a signal).
    """

    def __init__(self, boards: FieldBoards, board: FieldBoard) -> None:
        self.boards = boards
        self.board = board
        self._stopper: threading.Thread | None = None
        self._pid = self._read_pid()

    def _read_pid(self) -> int:
        try:
            return int((self.board.run_dir / "supervisor.pid").read_text().strip())
        except (OSError, ValueError):
            return -1

    @property
    def pid(self) -> int:
        """The board supervisor's pid (the agent is its child)."""
        return self._pid

    def poll(self) -> int | None:
        """Return the exit status once the supervisor ended, else None."""
        state = supervisor.read_state(self.board.run_dir)
        if state["running"] or (self._stopper is not None and self._stopper.is_alive()):
            return None
        if self.board.counters.ended is None:
            self.board.counters.ended = self.board.read_counters()
        if state.get("finished"):
            return 0
        last = state.get("last_exit")
        return int(last) if isinstance(last, int) and last != 0 else -int(signal.SIGTERM)

    def send_signal(self, sig: int) -> None:
        """Stop through the board's supervisor over SSH (SIGTERM, in the background).

        Any other signal goes to the supervisor and its agent directly.
        """
        if sig == signal.SIGTERM:
            if self._stopper is None or not self._stopper.is_alive():
                if self.board.counters.ended is None:
                    self.board.counters.ended = self.board.read_counters()
                self._stopper = threading.Thread(
                    target=self.boards.stop_quietly, args=(self.board.plan.id,), daemon=True)
                self._stopper.start()
            return
        state = supervisor.read_state(self.board.run_dir)
        for pid in (self._pid, state.get("child_pid")):
            if isinstance(pid, int) and pid > 0:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)

    def wait(self, timeout_s: float) -> int | None:
        """Wait up to `timeout_s` for the supervisor to end."""
        deadline = time.monotonic() + timeout_s
        while True:
            code = self.poll()
            if code is not None or time.monotonic() >= deadline:
                return code
            time.sleep(0.1)


class BoardLauncher:
    """The trial runner's launcher for a field: an agent start is a supervisor start over SSH."""

    name = "board supervisors over SSH"

    def __init__(self, boards: FieldBoards) -> None:
        self.boards = boards

    def start(self, argv: list[str], log_path: Path, env: dict[str, str]) -> BoardHandle:
        """Start the agent named by `--agent` in `argv` on its board.

        The run id (`--run-id`) goes to the board, which keeps it for its agent's starts; the
        rest of argv is the runner's local command line, unused: the board runs its bundled
        config.
        """
        agent_id = argv[argv.index("--agent") + 1]
        run_id = argv[argv.index("--run-id") + 1] if "--run-id" in argv else None
        handle = self.boards.start(agent_id, run_id)
        with log_path.open("a") as log:
            log.write(f"[trial] started on board {agent_id} "
                      f"({self.boards.boards[agent_id].board.target}); its log: "
                      f"{self.boards.boards[agent_id].log_path}\n")
        return handle

    def close(self) -> None:
        """Nothing to release."""


__all__ = ["BoardHandle", "BoardLauncher", "Counters", "FieldBoard", "FieldBoards",
           "board_config_text", "board_python"]
