"""What the trial console says, and when: start-up phases, one line per round, events.

Start-up phases (agents started, connected, quorum reached), one line per round, and events as
they happen (an agent offline or back, where it joins, the broker down or up, updates rejected).

The narrator reads what the runner watches - metrics rows (the record) and retained statuses (the
live view, edge.trial.watch) - and hands every event to the runner's `emit`, which timestamps it,
keeps it for the report's timeline and prints it. Rounds are shown by their 0-based index, the
number in metrics.jsonl ("round 3 of 0-11"); a round's accuracies are computed from that round's
rows exactly as the report's per-round table is (edge.summary.accuracy_block).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field
from typing import Any

from edge.summary import accuracy_block, cumulative_total, round_span
from edge.trial.console import Console
from edge.trial.watch import FleetWatch, Presence, PresenceMonitor

Emit = Callable[..., None]   # emit(kind, agent, detail, **extra)

# A round's line waits for every running agent; after this long past the first report of the
# round (plus the round deadline) it is shown with whoever reported.
ROUND_LINE_GRACE_S = 30.0
# A round held back this long for a few agents is said to be waiting, once, naming them: a
# link outage or a slow board otherwise shows as a silent console for up to the deadline.
WAITING_SAY_S = 5.0
# After the runner restarted the broker itself, its own reconnect is not news for this long.
BROKER_QUIET_S = 10.0


@dataclass
class Startup:
    """Seconds from the first process start to each start-up phase (None: not reached).

    The first process is the fork server, or the first isolated agent.
    """

    launcher: str = ""
    agents_launched: int = 0
    launched_s: float | None = None      # the last agent of the launch started (fork server
                                         # included: it imports torch before the first fork)
    connected_s: float | None = None     # every launched agent online
    quorum_s: float | None = None        # the first agent ran round 0
    round0_s: float | None = None        # every launched agent ran round 0: the start-up time

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


@dataclass
class Narrator:
    """Turns the runner's observations into console lines and timeline events."""

    console: Console
    emit: Emit
    ids: list[str]
    rounds: int
    deadline_s: float
    elapsed: Callable[[], float]         # seconds since the runner started (the lines' clock)
    clock: Callable[[], float] = time.monotonic
    startup: Startup = field(default_factory=Startup)
    first_launch_at: float | None = None
    launched: set[str] = field(default_factory=set)
    _connected_shown: int = -1
    _connected_said_at: float = 0.0
    _presence: dict[str, Presence] = field(default_factory=dict)
    _broker_up: bool | None = None
    _broker_down_at: float = 0.0
    _quiet_until: float = 0.0
    _next_round: int = 0
    _round_first_seen: dict[int, float] = field(default_factory=dict)
    _waiting_said: set[int] = field(default_factory=set)
    _rejected: dict[str, dict[str, int]] = field(default_factory=dict)

    # --- start-up -------------------------------------------------------------------------------

    def launching(self) -> None:
        """Mark now as the start of the first process (fork server or first agent).

        The start-up is timed from here.
        """
        self.first_launch_at = self.clock()

    def agents_started(self, agents: Collection[str], launcher: str) -> None:
        """Note that the runner started the first agents (the ones not held back by a fault)."""
        now = self.clock()
        self.first_launch_at = self.first_launch_at or now
        self.launched |= set(agents)
        self.startup.launcher, self.startup.agents_launched = launcher, len(self.launched)
        self.startup.launched_s = now - self.first_launch_at
        self.console.line(f"[trial {self._t():6.1f} s] agents started {len(self.launched)}/"
                          f"{len(self.ids)} ({launcher}, {self.startup.launched_s:.1f} s)")

    def watch_startup(self, monitor: PresenceMonitor | None, quorum: int) -> None:
        """Say connected n/N (at most one line a second), quorum reached, every agent in round 0."""
        if monitor is None or self.first_launch_at is None or self.startup.round0_s is not None:
            return
        online = {a for a in self.launched if a in monitor.first_online_at}
        now = self.clock()
        if online and len(online) != self._connected_shown and (
                now - self._connected_said_at >= 1.0 or len(online) == len(self.launched)):
            self._connected_shown, self._connected_said_at = len(online), now
            self.console.line(f"[trial {self._t():6.1f} s] connected {len(online)}/{len(self.launched)}")
        if len(online) == len(self.launched) and self.startup.connected_s is None:
            self.startup.connected_s = max(monitor.first_online_at[a] for a in online) - self.first_launch_at
        running = {a: monitor.first_running_at[a] for a in self.launched if a in monitor.first_running_at}
        if running and self.startup.quorum_s is None:
            self.startup.quorum_s = min(running.values()) - self.first_launch_at
            self.emit("quorum", None, f"quorum reached ({quorum} of {len(self.ids)} agents): round 0 "
                                      f"starts {self.startup.quorum_s:.1f} s after the first agent started")
        if len(running) == len(self.launched):
            self.startup.round0_s = max(running.values()) - self.first_launch_at
            self.console.line(f"[trial {self._t():6.1f} s] start-up done: every agent runs round 0, "
                              f"{self.startup.round0_s:.1f} s after the first one started")

    # --- events ---------------------------------------------------------------------------------

    def watch_presence(self, monitor: PresenceMonitor | None, watch: FleetWatch) -> None:
        """Say when agents go offline, come back online, and where a returning agent joins.

        An agent that reported the last round and goes offline has finished: not an event.
        """
        if monitor is None:
            return
        for agent, now in sorted(monitor.snapshot().items()):
            before = self._presence.get(agent)
            self._presence[agent] = now
            if before is None:
                continue
            finished = watch.completed.get(agent, -1) >= self.rounds - 1
            if before.online and not now.online and not finished:
                self.emit("offline", agent, f"offline (it was in round {before.round_idx})")
            elif now.online and not before.online:
                self.emit("online", agent, "back online")
            if now.online and now.round_idx >= 0 > before.round_idx and now.first_round > 0:
                self.emit("joined", agent, f"joins at round {now.first_round} (its first round since "
                                           f"it started again)")

    def broker_restarted(self, down_s: float) -> None:
        """Say that the runner restarted the embedded broker itself (a fault).

        Its own connection dropping for it is not reported again.
        """
        self.emit("broker", None, "broker down (restart fault)")
        self.emit("broker", None, f"broker up again after {down_s:.1f} s")
        self._quiet_until = self.clock() + BROKER_QUIET_S

    def watch_broker(self, monitor: PresenceMonitor | None) -> None:
        """Say when the runner's own MQTT connection goes down and up: the broker, as it sees it."""
        if monitor is None:
            return
        up = monitor.connected
        if self.clock() < self._quiet_until:
            pass
        elif self._broker_up and not up:
            self._broker_down_at = self.clock()
            self.emit("broker", None, "broker down (the runner lost its MQTT connection)")
        elif self._broker_up is False and up:
            self.emit("broker", None, f"broker up again after {self.clock() - self._broker_down_at:.1f} s")
        if up or self._broker_up is not None:
            self._broker_up = up

    def watch_rejections(self, watch: FleetWatch) -> None:
        """Say which updates an agent's receiver rejected since the last look, by reason."""
        for agent, row in watch.latest().items():
            now = dict(row.get("rejected", {}))
            seen = self._rejected.get(agent, {})
            if sum(now.values()) < sum(seen.values()):   # a restarted process counts from zero
                seen = {}
            new = {k: n - seen.get(k, 0) for k, n in now.items() if n > seen.get(k, 0)}
            self._rejected[agent] = now
            if new:
                reasons = ", ".join(f"{k} {n}" for k, n in sorted(new.items()))
                self.emit("rejected", agent, f"rejected {sum(new.values())} messages ({reasons})")

    # --- rounds ---------------------------------------------------------------------------------

    def watch_rounds(self, watch: FleetWatch, running: Collection[str]) -> None:
        """Say one line per round, once every running agent reported it (or joined after it)."""
        while self._next_round < self.rounds:
            r = self._next_round
            rows = watch.round_rows(r)
            if not rows:
                return
            first_seen = self._round_first_seen.setdefault(r, self.clock())
            due = [a for a in running
                   if a not in rows and self._presence.get(a, Presence(True)).first_round <= r
                   and watch.completed.get(a, -1) < r]
            held_s = self.clock() - first_seen
            late = held_s > self.deadline_s + ROUND_LINE_GRACE_S
            if due and not late:
                if held_s > WAITING_SAY_S and r not in self._waiting_said:
                    self._waiting_said.add(r)
                    self.console.line(
                        f"[trial {self._t():6.1f} s] round {r}: {len(rows)}/{len(rows) + len(due)} "
                        f"agents reported; waiting for {', '.join(sorted(due))} (their "
                        f"neighbours mix without them after the {self.deadline_s:g} s deadline)")
                return
            self.console.line(self.round_line(r, rows, watch, len(rows) + len(due)))
            self._next_round += 1

    def flush_rounds(self, watch: FleetWatch) -> None:
        """At the end: a line for every reported round not shown yet."""
        while self._next_round < self.rounds and watch.round_rows(self._next_round):
            rows = watch.round_rows(self._next_round)
            self.console.line(self.round_line(self._next_round, rows, watch, len(rows)))
            self._next_round += 1

    def round_line(self, round_idx: int, rows: dict[str, Any], watch: FleetWatch, expected: int) -> str:
        """`round 3 of 0-11: 8/8 agents, accuracy 0.712 (accel 0.700, ...), 1.23 MB sent so far`.

        Bytes sent by the agents, as in the closing line (what was received is the same
        traffic counted again at the other end).
        """
        acc = accuracy_block(rows)
        kinds = ", ".join(f"{k} {v:.3f}" for k, v in sorted(acc["by_kind"].items()))
        sent = sum(cumulative_total(float(r.get("bytes_sent", 0))
                                    for r in agent_rows if int(r["round"]) <= round_idx)
                   for agent_rows in watch.rows_by_agent.values())
        return (f"[trial {self._t():6.1f} s] round {round_idx} of {round_span(self.rounds)}: "
                f"{len(rows)}/{expected} agents, accuracy {acc['overall']:.3f} ({kinds}), "
                f"{sent / 1e6:.2f} MB sent so far")

    def footer(self, online: int | None, running: int) -> str:
        """Compose the live footer: phase, round, agents online, elapsed time."""
        if self.startup.round0_s is None:
            phase = "starting"
        elif self._next_round >= self.rounds:
            phase = "finishing"
        else:
            phase = f"round {self._next_round} of {round_span(self.rounds)}"
        who = f"{online}/{len(self.ids)} online" if online is not None else f"{running} running"
        return f"{phase} · {who} · {self._t():.0f} s"

    def _t(self) -> float:
        return self.elapsed()
