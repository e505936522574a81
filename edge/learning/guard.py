"""The finiteness gate on the model: an agent whose model turns non-finite never exits.

One round's mixing and local training (steps 4 and 5 of docs/ARCHITECTURE.md §The life of one
round), guarded: the state before mixing is kept; if the model (or the training loss) is not
finite after training, that state is restored, the neighbour whose copy was farthest from ours
is skipped — logged, counted in the metrics row, and not mixed for `QUARANTINE_ROUNDS` rounds —
and the round is mixed and trained again without it. When no mixed neighbour is left to blame,
local training itself diverged: the good state is kept and the round's training is skipped.

Copies a neighbour sends are first screened per branch (edge.learning.gossip.screen); this is
the second line, for what passes the screen and still breaks the model.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from edge.learning.gossip import Plan, relative_distance
from edge.learning.transport import Received

if TYPE_CHECKING:  # the learner holds the torch model; this module needs only its methods
    from edge.learning.learner import Learner

log = logging.getLogger(__name__)

# Rounds a neighbour is skipped after its copy broke our model; then it is screened again
# (a board that rebooted from a bad state gets another chance, a hostile one is skipped again).
QUARANTINE_ROUNDS = 5


@dataclass
class GuardedStep:
    """What one guarded round of mixing and training did."""

    mixed_from: dict[str, list[str]]           # branch key -> neighbours mixed
    stats: dict[str, float]                    # edge.learning.learner.Learner.train's
    train_s: float                             # training seconds, retries included
    refused: dict[str, dict[str, str]] = field(default_factory=dict)  # branch -> nbr -> reason
    skipped: dict[str, str] = field(default_factory=dict)  # neighbour -> why it was skipped


def mix_and_train(learner: Learner, agent: str, plan: Plan, received: Received,
                  public: dict[str, np.ndarray], epochs: int, round_idx: int) -> GuardedStep:
    """Mix the neighbours' copies into every planned branch, then train, never leaving NaN.

    Parameters
    ----------
    learner : Learner
        The agent's learner (its `quarantine` is read and updated).
    agent : str
        The agent's id.
    plan : dict
        Branch key -> Metropolis weights (edge.learning.gossip.mixing_plan).
    received : dict
        Branch key -> neighbour -> its public copy, flat float32.
    public : dict
        Branch key -> our public copy (absent: the neighbours hold our branch exactly).
    epochs : int
        Local epochs.
    round_idx : int
        The round (0-based), for the quarantine.

    Returns
    -------
    GuardedStep
        Mixed neighbours, training statistics, refused and skipped neighbours.
    """
    good = learner.snapshot()
    skipped = {j: "quarantined: its copy broke this model before"
               for j, until in learner.quarantine.items() if round_idx < until}
    distance = _distances(learner, agent, plan, received, public)
    train_s = 0.0
    while True:
        mixed_from: dict[str, list[str]] = {}
        refused: dict[str, dict[str, str]] = {}
        for key, weights in plan.items():
            offered = {j: v for j, v in received.get(key, {}).items() if j not in skipped}
            outcome = learner.mix(key, weights, offered, agent, public.get(key))
            if outcome.used:
                mixed_from[key] = outcome.used
            if outcome.refused:
                refused[key] = outcome.refused
        started = time.perf_counter()
        stats = learner.train(epochs)
        train_s += time.perf_counter() - started
        if learner.is_finite() and math.isfinite(stats["loss"]):
            return GuardedStep(mixed_from, stats, train_s, refused, skipped)
        learner.restore(good)
        suspects = {j for used in mixed_from.values() for j in used}
        if not suspects:
            log.warning("%s round %d: local training made the model non-finite; kept the last "
                        "good state and skipped this round's training", agent, round_idx)
            stats = {**stats, "loss": float("nan")}
            return GuardedStep({}, stats, train_s, refused, skipped)
        offender = max(sorted(suspects), key=lambda j: distance.get(j, 0.0))
        skipped[offender] = "its copy made this model non-finite; last good state restored"
        learner.quarantine[offender] = round_idx + 1 + QUARANTINE_ROUNDS
        log.warning("%s round %d: model non-finite after mixing; restored the last good state, "
                    "skipping %s for %d rounds", agent, round_idx, offender, QUARANTINE_ROUNDS)


def _distances(learner: Learner, agent: str, plan: Plan, received: Received,
               public: dict[str, np.ndarray]) -> dict[str, float]:
    """Neighbour -> its largest relative distance to our copy over the planned branches."""
    out: dict[str, float] = {}
    for key in plan:
        own = learner.branch_vector(key)
        base = public.get(key, own).astype(np.float64)
        for j, copy in received.get(key, {}).items():
            if j != agent:
                out[j] = max(out.get(j, 0.0), relative_distance(own, base, copy))
    return out
