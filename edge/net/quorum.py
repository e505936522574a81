"""The start barrier of a networked agent: wait for the fleet's quorum, or join a fleet under way.

Every agent announces a retained status (broker.discovery) saying whether it is online and which
round it runs (-1 while it waits here). Before its first round an agent watches those statuses:

- while no other agent runs a round, it waits until `training.quorum` agents are online (itself
  included), then starts at its resume round (0 for a fresh agent) - the first board to boot does
  not train alone (Flower's `min_available_clients` plays the same part for a server);
- once another agent runs a round, the fleet is under way: the agent joins at the round
  `edge.learning.rounds.join_round` gives for its neighbours' rounds, and the rounds before it
  are missed - unless the agent already holds every update it needs to start where it is
  (`edge.learning.rounds.holds_every_update`: the last agent of the quorum, slow to read the
  statuses of neighbours that started on its own announcement);
- after `training.start_timeout_s` without either, it gives up: `QuorumTimeout`, naming who is
  missing (the CLI exits non-zero).

Stale retained statuses (an agent killed without its last will reaching the broker) count as
online until the broker notices the dead connection; signed statuses with a run id (the security
work) will tell them apart.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from broker.discovery import NeighbourTable
from edge.learning.rounds import holds_every_update, join_round

# How often a waiting agent repeats where it stands when nothing changes.
REMIND_EVERY_S = 10.0
# How long to let retained statuses arrive before joining a fleet under way without hearing from
# every neighbour (one that never started has no status to wait for).
SETTLE_S = 1.0


class QuorumTimeout(Exception):
    """The quorum was not reached and no fleet was under way within the start timeout."""


@dataclass(frozen=True)
class StartDecision:
    """Where an agent starts, and what it saw when it decided."""

    start_round: int          # the first round it runs
    resume_round: int         # the round it would have run next on its own
    waited_s: float           # time spent at the barrier
    online: int               # agents online (itself included) when it decided
    fleet_round: int          # furthest round its neighbours (else any agent) ran; -1: none
    joined_under_way: bool    # True: another agent already ran a round when it decided

    @property
    def missed_rounds(self) -> list[int]:
        """Rounds it skipped to join the fleet (not trained, not published)."""
        return list(range(self.resume_round, self.start_round))


def await_start(table: NeighbourTable, agent_id: str, fleet_ids: Collection[str],
                neighbours: Collection[str], quorum: int, resume_round: int, timeout_s: float,
                say: Callable[[str], None], poll_s: float = 0.05, settle_s: float = SETTLE_S,
                clock: Callable[[], float] = time.monotonic,
                held_from: Callable[[], Mapping[str, int]] = dict) -> StartDecision:
    """Block until the agent may start; return where.

    Parameters
    ----------
    table : NeighbourTable
        Fed with every status of the fleet by the agent's MQTT client (network thread).
    agent_id : str
        This agent (counted as online: it announced itself before calling this).
    fleet_ids, neighbours : collections of str
        Every agent of the fleet; the neighbours it mixes from (sharing a branch with it): only
        their rounds decide where it joins.
    quorum : int
        Agents that must be online before round 0 (edge.config.schema.quorum_count).
    resume_round : int
        The round after the agent's checkpoint, or 0.
    timeout_s : float
        Give up after this many seconds.
    say : callable
        Receives one line per change of the waiting state (and a reminder every 10 s).
    settle_s : float
        Before joining a fleet under way, wait this long for every neighbour's status.
    held_from : callable
        The earliest round of which the agent holds an update of each neighbour (its inbox).

    Raises
    ------
    QuorumTimeout
        After `timeout_s` with fewer than `quorum` agents online and no fleet under way.
    """
    started = clock()
    fleet = set(fleet_ids) - {agent_id}
    last_said, last_line = -REMIND_EVERY_S, ""
    while True:
        statuses = {a: s for a, s in table.online_statuses().items() if a in fleet}
        running = {a: s.round_idx for a, s in statuses.items() if s.round_idx >= 0}
        online = len(statuses) + 1
        # Retained statuses arrive one by one after we subscribed: a fleet under way is judged
        # on every neighbour's status, or on what came within `settle_s`.
        settled = (all(table.status(n) is not None for n in neighbours if n != agent_id)
                   or clock() - started >= settle_s)
        if (running and settled) or (not running and online >= quorum):
            near = [r for a, r in running.items() if a in neighbours]
            fleet_round = max(near or running.values(), default=-1)
            near_rounds = {a: r for a, r in running.items() if a in neighbours}
            firsts = {a: statuses[a].first_round for a in near_rounds}
            start = (resume_round if holds_every_update(resume_round, near_rounds, held_from(),
                                                        firsts)
                     else join_round(resume_round, near_rounds.values()))
            return StartDecision(start, resume_round, clock() - started, online, fleet_round,
                                 bool(running))
        waited = clock() - started
        missing = sorted(fleet - set(statuses))
        line = (f"waiting for the quorum: {online}/{len(fleet) + 1} agents online (need {quorum}); "
                f"missing {_names(missing)}")
        if waited >= timeout_s:
            raise QuorumTimeout(f"quorum not reached after {timeout_s:g} s: {online}/{len(fleet) + 1} "
                                f"agents online, need {quorum}; missing {_names(missing)}")
        if line != last_line or clock() - last_said >= REMIND_EVERY_S:
            say(line + (f" ({waited:.0f} s)" if line == last_line else ""))
            last_said, last_line = clock(), line
        time.sleep(poll_s)


def _names(agents: list[str], shown: int = 6) -> str:
    if len(agents) <= shown:
        return ", ".join(agents)
    return ", ".join(agents[:shown]) + f" and {len(agents) - shown} more"
