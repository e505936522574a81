"""One round of an agent, shared by the simulator and the networked agent.

Order (DESIGN.md §1): mix the branches received from the previous round -> local training ->
evaluate -> publish own branches. Only how branches travel differs between the two callers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from edge.sharing import metropolis_weights

if TYPE_CHECKING:  # the summary reads RoundResult without paying for torch
    from edge.learner import Learner

# agent -> its neighbours; agent -> {branch key: signature}
Graph = dict[str, tuple[str, ...]]
Holdings = dict[str, dict[str, str]]
# branch key -> {agent (self included): weight}
Plan = dict[str, dict[str, float]]


@dataclass
class RoundResult:
    """What one agent measured in one round."""

    agent_id: str
    round_idx: int
    accuracy: float
    n_test: int
    head_accuracy: dict[str, float]
    train_loss: float
    train_s: float
    mixed_from: dict[str, list[str]] = field(default_factory=dict)
    # Dense fp32 bytes of the branches published this round (the networked cost before codecs).
    dense_bytes_published: int = 0


def mixing_plan(agent_id: str, graph: Graph, holdings: Holdings) -> Plan:
    """Metropolis weights of `agent_id` for every branch some neighbour holds with the same
    signature; each computed on that branch's own subgraph. Other branches stay local."""
    plan: Plan = {}
    for key, signature in holdings[agent_id].items():
        members = {a for a, held in holdings.items() if held.get(key) == signature}
        sub = {a: tuple(n for n in graph.get(a, ()) if n in members) for a in members}
        if sub[agent_id]:
            plan[key] = metropolis_weights(agent_id, sub)
    return plan


def run_round(learner: Learner, agent_id: str, round_idx: int, plan: Plan,
              received: dict[str, dict[str, np.ndarray]], local_epochs: int,
              public: dict[str, np.ndarray] | None = None) -> tuple[RoundResult, dict[str, np.ndarray]]:
    """Mix -> train -> evaluate -> the branches to publish (key -> flat vector).

    `public` holds, per branch, our own copy as the neighbours decoded it (lossy codecs);
    missing entries mean the neighbours hold our exact parameters."""
    mixed_from = {}
    public = public or {}
    for key, weights in plan.items():
        used = learner.mix(key, weights, received.get(key, {}), agent_id, public.get(key))
        if used:
            mixed_from[key] = used
    started = time.perf_counter()
    stats = learner.train(local_epochs)
    train_s = time.perf_counter() - started
    evaluation = learner.evaluate()
    outbox = {key: learner.branch_vector(key) for key in plan}
    result = RoundResult(
        agent_id=agent_id, round_idx=round_idx, accuracy=evaluation.accuracy,
        n_test=evaluation.n_test, head_accuracy=evaluation.head_accuracy,
        train_loss=stats["loss"], train_s=train_s, mixed_from=mixed_from,
        dense_bytes_published=sum(v.nbytes for v in outbox.values()),
    )
    return result, outbox
