"""The round loop: one function runs an agent's rounds, for the simulator and the networked agent.

A round (docs/ARCHITECTURE.md §The life of one round):

1. the communication graph of the round (edge.config.topology),
2. the mixing plan: Metropolis weights per branch on that branch's subgraph (edge.learning.gossip),
3. collect the neighbours' updates of the previous round from the transport,
4. mix them into our branches with the CHOCO consensus step (or a robust rule), then
5. local training, both guarded (edge.learning.guard), 6. evaluation on the agent's own test split,
7. publish our branches (except after the last round: nobody mixes them),
8. checkpoint, 9. the metrics row.

Only the `Transport` differs between the simulator (in memory, lock-step) and a board (MQTT).

Rounds are numbered by their 0-based index everywhere (files, logs, console, report, plots):
"round 3 of 0-11" is the fourth of twelve rounds.

Joining (`join_round`): an agent that starts while its neighbours are already past round 0 -
late, restarted or back from a leave - joins at the first round whose inputs it can still
receive, the round after its neighbours' current one; the rounds in between are *missed*, not
trained alone. Its first round then waits for the neighbours' updates like any other round.
Unless it already holds them (`holds_every_update`): an agent that subscribed before its
neighbours published - the last of a quorum, slow to read their statuses - starts where it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from edge.config.schema import FleetConfig
from edge.config.topology import build_graph
from edge.learning.gossip import Holdings, mixing_plan
from edge.learning.guard import mix_and_train
from edge.learning.learner import Learner
from edge.learning.sharing import combination
from edge.learning.strategies import Schedule
from edge.learning.transport import Transport
from edge.records import MetricsRow
from edge.summary import head_label

# Extra fields for a row (time, CPU, memory, energy, telemetry, rejections), given the round index
# and the bytes sent and received so far; their names and types are MetricsRow's optional fields.
Resources = Callable[[int, int, int], Mapping[str, object]]


@dataclass
class AgentRounds:
    """Everything one agent's loop needs, built once before round `start_round`."""

    cfg: FleetConfig
    agent_id: str
    learner: Learner
    holdings: Holdings          # every agent's branches: who can mix what with whom
    schedule: Schedule
    start_round: int = 0        # > 0 when resuming or joining a fleet already under way


def publishes_after(round_idx: int, rounds: int) -> bool:
    """Whether an agent publishes after `round_idx`: not after the last round, which nobody mixes."""
    return round_idx < rounds - 1


def join_round(resume_round: int, neighbour_rounds: Iterable[int]) -> int:
    """Return the round an agent starts at, from its resume round and its neighbours' rounds.

    The neighbours' rounds come from their statuses (-1 while they wait for the quorum).

    Round r mixes the neighbours' updates of round r-1, and an MQTT update is not retained: an
    agent can only mix what is published after it subscribed. With its neighbours in round F > 0,
    their round F-1 updates are gone, so it joins at F+1 and mixes their round F updates. Round 0
    mixes nothing, so an agent whose neighbours are at round 0 (or waiting) loses nothing by
    starting at `resume_round`.

    Parameters
    ----------
    resume_round : int
        0 for a fresh agent, the round after its checkpoint for a restarted one.
    neighbour_rounds : iterable of int
        Current round of each online neighbour.

    Returns
    -------
    int
        max(resume_round, F + 1) with F the furthest neighbour when F > 0, else resume_round;
        rounds resume_round .. result - 1 are missed.
    """
    furthest = max(neighbour_rounds, default=-1)
    return max(resume_round, furthest + 1) if furthest > 0 else resume_round


def holds_every_update(resume_round: int, neighbour_rounds: Mapping[str, int],
                       held_from: Mapping[str, int],
                       first_rounds: Mapping[str, int] | None = None) -> bool:
    """Whether an agent can start at `resume_round` although its neighbours are ahead.

    An agent subscribes before it announces itself, so every update published after that is in
    its inbox. When the quorum is reached by the agent's own announcement, its neighbours start
    round 0 at once and may be in round 2 before this agent has read their statuses; their round
    0 and 1 updates are nevertheless in its inbox, so joining later (`join_round`) would throw away
    rounds it can run. It starts at `resume_round` when, from every neighbour whose first needed
    update - of round max(resume_round - 1, 0), or the neighbour's own first round if it joined
    later - is already out, it holds that update or an earlier one (later rounds follow on the
    same subscription). With no neighbour ahead, nothing is lost either.

    Parameters
    ----------
    resume_round : int
        0 for a fresh agent, the round after its checkpoint for a restarted one.
    neighbour_rounds : mapping of str to int
        Each online neighbour's status round: its updates of the rounds before it are out.
    held_from : mapping of str to int
        The earliest round of which the agent holds an update of each neighbour.
    first_rounds : mapping of str to int, optional
        Each neighbour's first round (its status): it sends nothing of the rounds before.
    """
    firsts = first_rounds or {}
    for agent, status_round in neighbour_rounds.items():
        needed = max(resume_round - 1, 0, firsts.get(agent, 0))
        if status_round > needed and held_from.get(agent, needed + 1) > needed:
            return False
    return True


def run_rounds(run: AgentRounds, transport: Transport,
               checkpoint: Callable[[int], None] | None = None,
               resources: Resources | None = None) -> Iterator[MetricsRow]:
    """Run rounds `run.start_round` .. `run.schedule.rounds - 1`, yielding one metrics row each.

    A generator: the simulator advances every agent's loop one round at a time (lock-step); a
    networked agent simply iterates. `checkpoint(round_idx)` is called after publishing,
    `resources(round_idx, bytes_sent, bytes_received)` adds measured fields to the row.
    """
    cfg, agent, learner = run.cfg, run.agent_id, run.learner
    rounds = run.schedule.rounds
    ids = cfg.agent_ids
    kind = combination(learner.data.modalities)
    for round_idx in range(run.start_round, rounds):
        round_started = time.perf_counter()
        transport.begin_round(round_idx)
        graph = build_graph(cfg.topology, ids, cfg.training.seed, round_idx, cfg.source)
        plan = mixing_plan(agent, graph, run.holdings)
        # Updates neighbours published after the previous round. A (re)joining agent starts at a
        # round whose inputs are still to come (see join_round), so its first round waits too.
        wait_started = time.perf_counter()
        received = transport.collect(round_idx - 1, plan, wait=True) if round_idx > 0 else {}
        wait_s = time.perf_counter() - wait_started
        public = transport.public_copies(plan)
        # Mix and train, guarded: a non-finite model is restored and the neighbour skipped.
        step = mix_and_train(learner, agent, plan, received, public, run.schedule.local_epochs,
                             round_idx)
        mixed_from, stats, train_s = step.mixed_from, step.stats, step.train_s
        evaluation = learner.evaluate()
        outbox = {key: learner.branch_vector(key) for key in plan}
        published = publishes_after(round_idx, rounds)
        if published:
            transport.publish(round_idx, outbox)
        if checkpoint is not None:
            checkpoint(round_idx)
        sent, received_bytes = transport.wire_bytes()
        row: MetricsRow = {
            "agent": agent, "kind": kind, "round": round_idx, "rounds": rounds,
            "accuracy": evaluation.accuracy,
            "head_accuracy": {head_label(h, kind): a for h, a in evaluation.head_accuracy.items()},
            "n_test": evaluation.n_test, "train_loss": stats["loss"], "train_s": train_s,
            "wait_s": wait_s, "round_s": time.perf_counter() - round_started,
            "mixed_from": mixed_from, "bytes_sent": sent, "bytes_received": received_bytes,
            "dense_bytes_published": sum(v.nbytes for v in outbox.values()) if published else 0,
        }
        if step.refused or step.skipped:
            row.update({"refused": step.refused, "skipped": step.skipped})
        if resources is not None:
            row.update(resources(round_idx, sent, received_bytes))  # type: ignore[typeddict-item]
        yield row
