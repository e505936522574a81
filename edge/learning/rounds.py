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
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
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

# Extra fields for a row (CPU, memory, energy), given the round index and the wire bytes so far.
Resources = Callable[[int, int], dict[str, float | str]]


@dataclass
class AgentRounds:
    """Everything one agent's loop needs, built once before round `start_round`."""

    cfg: FleetConfig
    agent_id: str
    learner: Learner
    holdings: Holdings          # every agent's branches: who can mix what with whom
    schedule: Schedule
    start_round: int = 0        # > 0 when resuming from a checkpoint


def publishes_after(round_idx: int, rounds: int) -> bool:
    """Whether an agent publishes after `round_idx`: not after the last round, which nobody mixes."""
    return round_idx < rounds - 1


def run_rounds(run: AgentRounds, transport: Transport,
               checkpoint: Callable[[int], None] | None = None,
               resources: Resources | None = None) -> Iterator[MetricsRow]:
    """Run rounds `run.start_round` .. `run.schedule.rounds - 1`, yielding one metrics row each.

    A generator: the simulator advances every agent's loop one round at a time (lock-step); a
    networked agent simply iterates. `checkpoint(round_idx)` is called after publishing,
    `resources(round_idx, wire_bytes)` adds measured fields to the row.
    """
    cfg, agent, learner = run.cfg, run.agent_id, run.learner
    rounds = run.schedule.rounds
    ids = cfg.agent_ids
    kind = combination(learner.data.modalities)
    for round_idx in range(run.start_round, rounds):
        round_started = time.perf_counter()
        graph = build_graph(cfg.topology, ids, cfg.training.seed, round_idx, cfg.source)
        plan = mixing_plan(agent, graph, run.holdings)
        # Updates neighbours published after the previous round. Right after a (re)start nothing
        # more of that round can still arrive, so the first round of a run does not wait.
        wait_started = time.perf_counter()
        received = (transport.collect(round_idx - 1, plan, wait=round_idx > run.start_round)
                    if round_idx > 0 else {})
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
            "accuracy": evaluation.accuracy, "head_accuracy": evaluation.head_accuracy,
            "n_test": evaluation.n_test, "train_loss": stats["loss"], "train_s": train_s,
            "wait_s": wait_s, "round_s": time.perf_counter() - round_started,
            "mixed_from": mixed_from, "bytes_sent": sent, "bytes_received": received_bytes,
            "dense_bytes_published": sum(v.nbytes for v in outbox.values()) if published else 0,
        }
        if step.refused or step.skipped:
            row.update({"refused": step.refused, "skipped": step.skipped})
        if resources is not None:
            row.update(resources(round_idx, sent + received_bytes))  # type: ignore[typeddict-item]
        yield row
