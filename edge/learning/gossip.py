"""Gossip averaging, the pure maths: Metropolis–Hastings weights, the mixing plan, the CHOCO step.

No torch here: every function takes and returns plain Python or numpy values, so the maths is
tested on its own (tests/test_edge_gossip.py) and reused by the simulator and the networked agent.

Bounding what is mixed (issue 14): every neighbour's copy first passes `screen` (finite, of our
shape, norm and distance within `max_norm_ratio` of our own); then `robust_step` combines the
admitted copies by the fleet's rule: plain gossip (the default, exactly `consensus_step`),
coordinate-wise median or trimmed mean, or ClippedGossip.

Vocabulary used throughout code, config and docs:
- **public copy** x̂_i: agent i's branch as its neighbours hold it, i.e. as they decoded it (equal
  to x_i with the fp32 codec, lagging behind it with lossy codecs);
- **consensus step** γ (`comm.consensus_step`): how far one round moves towards the neighbours.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

# agent -> its neighbours; agent -> {branch key: signature}
Graph = dict[str, tuple[str, ...]]
Holdings = dict[str, dict[str, str]]
# branch key -> {agent (self included): weight}
Plan = dict[str, dict[str, float]]


def metropolis_weights(agent: str, holders: Mapping[str, tuple[str, ...]]) -> dict[str, float]:
    """Metropolis–Hastings mixing weights of `agent` on one branch's subgraph.

    Parameters
    ----------
    agent
        The agent whose row of the mixing matrix is wanted.
    holders
        Every agent of the subgraph -> its neighbours *within* the subgraph (agents holding the
        branch with the same signature).

    Returns
    -------
    dict
        Neighbour (and `agent` itself) -> weight. w_ij = 1 / (1 + max(d_i, d_j)) and the self
        weight takes the rest, so each row sums to one and the matrix is symmetric, hence doubly
        stochastic (Xiao, Boyd and Kim 2007, "Distributed average consensus with least-mean-square
        deviation", the Metropolis–Hastings rule).
    """
    nbrs = holders[agent]
    weights = {j: 1.0 / (1.0 + max(len(nbrs), len(holders[j]))) for j in nbrs}
    weights[agent] = 1.0 - sum(weights.values())
    return weights


def mixing_plan(agent: str, graph: Graph, holdings: Holdings) -> Plan:
    """Metropolis weights of `agent` for every branch some neighbour holds with the same signature.

    Each branch's weights are computed on that branch's own subgraph, degrees counted among its
    holders only (docs/ARCHITECTURE.md §Method). Branches no neighbour holds are absent: they stay local.
    """
    plan: Plan = {}
    for key, signature in holdings[agent].items():
        members = {a for a, held in holdings.items() if held.get(key) == signature}
        sub = {a: tuple(n for n in graph.get(a, ()) if n in members) for a in members}
        if sub[agent]:
            plan[key] = metropolis_weights(agent, sub)
    return plan


def consensus_step(own: np.ndarray, public_copy: np.ndarray | None,
                   received: Mapping[str, np.ndarray], weights: Mapping[str, float],
                   step: float) -> np.ndarray:
    """One CHOCO-gossip consensus step on a flat branch vector.

    x_i <- x_i + γ Σ_j w_ij (x̂_j − x̂_i)   (Koloskova, Stich and Jaggi 2019, "Decentralized
    stochastic optimization and gossip algorithms with compressed communication", Algorithm 1)

    Parameters
    ----------
    own
        x_i, shape (n,), our current parameters.
    public_copy
        x̂_i, shape (n,), our copy as the neighbours decoded it; None means they hold x_i exactly
        (fp32), and the step is plain gossip averaging.
    received
        Neighbour j -> x̂_j, shape (n,); neighbours absent here are skipped (their weight stays
        with us).
    weights
        w_ij for the neighbours (other keys, e.g. our own, are ignored).
    step
        γ in (0, 1].

    Returns
    -------
    numpy.ndarray
        The new x_i, float32, shape (n,). Summed in float64 in the order of `received`.
    """
    mixed = own.astype(np.float64)
    base = mixed.copy() if public_copy is None else public_copy.astype(np.float64)
    for j, copy in received.items():
        mixed += step * weights[j] * (copy.astype(np.float64) - base)
    return mixed.astype(np.float32)


# --- bounding what is mixed ------------------------------------------------------------------
# Robust mixing rules (`comm.mixing`); "gossip" is the CHOCO step above, exactly.
MixingRule = Literal["gossip", "median", "trimmed-mean", "clipped-gossip"]
# Our norm is taken as at least this RMS per coordinate, so a branch near zero (just
# initialised biases) does not make every neighbour look absurdly large.
FLOOR_RMS = 1e-2


@dataclass(frozen=True)
class Mixing:
    """How one agent combines its neighbours' copies of a branch (the `comm` section).

    Attributes
    ----------
    rule : str
        "gossip" (the CHOCO step, the default), "median" or "trimmed-mean" (coordinate-wise,
        over our public copy and the neighbours'), or "clipped-gossip" (He, Karimireddy and
        Jaggi 2022).
    trim : int
        trimmed-mean: values dropped at each end of every coordinate.
    clip_radius : float or None
        clipped-gossip: a fixed radius τ; None picks it per branch and round (`clip_radius`).
    clip_neighbours : int
        clipped-gossip with an adaptive radius: how many of the farthest neighbours are clipped.
    max_norm_ratio : float
        The gate every rule applies first (`screen`): a copy whose norm, or whose distance to
        our public copy, exceeds this many times our own norm is refused.
    """

    rule: MixingRule = "gossip"
    trim: int = 1
    clip_radius: float | None = None
    clip_neighbours: int = 1
    max_norm_ratio: float = 10.0


def reference_norm(own: np.ndarray) -> float:
    """Return our branch's L2 norm, floored at `FLOOR_RMS` per coordinate (the gate's yardstick)."""
    return max(float(np.linalg.norm(own.astype(np.float64))), FLOOR_RMS * float(np.sqrt(own.size)))


def relative_distance(own: np.ndarray, base: np.ndarray, copy: np.ndarray) -> float:
    """Measure how far a neighbour's copy is from ours: ||x̂_j − x̂_i|| / `reference_norm`(x_i).

    Infinite when the copy is not finite or not of our shape.
    """
    if copy.shape != base.shape or not np.isfinite(copy).all():
        return float("inf")
    return float(np.linalg.norm(copy.astype(np.float64) - base)) / reference_norm(own)


def screen(own: np.ndarray, public_copy: np.ndarray | None, received: Mapping[str, np.ndarray],
           max_norm_ratio: float) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Gate neighbours' copies of one branch on finiteness, norm and distance.

    A copy is refused when it holds NaN or inf, has another shape, its L2 norm exceeds
    `max_norm_ratio` x our norm, or its distance to our public copy does. Honest neighbours
    start from the same weights (edge.learning.learner.build_model) and move by a few
    optimizer steps per round, so they stay well inside any ratio above a few; a copy from a
    broken or hostile board (the issue's 1e30 update) does not.

    Parameters
    ----------
    own : numpy.ndarray
        x_i, shape (n,).
    public_copy : numpy.ndarray or None
        x̂_i, shape (n,); None: the neighbours hold x_i exactly.
    received : mapping
        Neighbour -> x̂_j.
    max_norm_ratio : float
        The bound, >= 1.

    Returns
    -------
    tuple of dict
        (admitted: neighbour -> copy, refused: neighbour -> reason "non-finite", "shape",
        "norm" or "distance").
    """
    base = (own if public_copy is None else public_copy).astype(np.float64)
    limit = max_norm_ratio * reference_norm(own)
    admitted: dict[str, np.ndarray] = {}
    refused: dict[str, str] = {}
    for j, copy in received.items():
        if copy.shape != own.shape:
            refused[j] = "shape"
        elif not np.isfinite(copy).all():
            refused[j] = "non-finite"
        elif float(np.linalg.norm(copy.astype(np.float64))) > limit:
            refused[j] = "norm"
        elif float(np.linalg.norm(copy.astype(np.float64) - base)) > limit:
            refused[j] = "distance"
        else:
            admitted[j] = copy
    return admitted, refused


def coordinate_median(vectors: np.ndarray) -> np.ndarray:
    """Coordinate-wise median of stacked vectors (m, n) -> (n,), float64.

    With an even m, the mean of the two middle values (numpy.median).
    """
    return np.median(vectors.astype(np.float64), axis=0)


def trimmed_mean(vectors: np.ndarray, trim: int) -> np.ndarray:
    """Coordinate-wise trimmed mean of stacked vectors (m, n) -> (n,), float64.

    Drops the `trim` largest and `trim` smallest values of every coordinate and averages the
    rest (Yin, Chen, Ramchandran and Bartlett 2018, "Byzantine-robust distributed learning:
    towards optimal statistical rates", Definition 2). With m <= 2 * trim, as many values are
    dropped as leave at least one (m odd) or two (m even): the median.
    """
    m = vectors.shape[0]
    b = min(trim, (m - 1) // 2)
    ordered = np.sort(vectors.astype(np.float64), axis=0)
    mean: np.ndarray = ordered[b: m - b].mean(axis=0)
    return mean


def clip(z: np.ndarray, radius: float) -> np.ndarray:
    """CLIP(z, τ) = min(1, τ / ||z||) z (He, Karimireddy and Jaggi 2022, §3)."""
    norm = float(np.linalg.norm(z))
    return z if norm <= radius else z * (radius / norm)


def adaptive_radius(distances: list[float], clipped: int) -> float:
    """Choose the clipping radius τ_i of one branch: the (clipped + 1)-th largest distance.

    The `clipped` farthest neighbours are clipped to the distance of the next one and the rest
    pass unchanged: the adaptive choice of the ClippedGossip experiments (He, Karimireddy and
    Jaggi 2022; with `clipped` = 1 the authors' public code takes the second-largest distance).
    With `clipped` or fewer neighbours there is no honest distance to compare with, and τ is the
    smallest distance.
    """
    ordered = sorted(distances, reverse=True)
    return ordered[clipped] if len(ordered) > clipped else ordered[-1]


def robust_step(own: np.ndarray, public_copy: np.ndarray | None,
                received: Mapping[str, np.ndarray], weights: Mapping[str, float], step: float,
                mixing: Mixing) -> np.ndarray:
    """One mixing step of a branch under `mixing.rule`, on already screened copies.

    - gossip: `consensus_step`, unchanged;
    - median / trimmed-mean: x_i += γ (agg − x̂_i), agg the coordinate-wise median / trimmed
      mean of {x̂_i} ∪ {x̂_j} (unweighted: a robust statistic has no Metropolis weights);
    - clipped-gossip: x_i += γ Σ_j w_ij CLIP(x̂_j − x̂_i, τ_i) (He, Karimireddy and Jaggi 2022,
      "Byzantine-robust decentralized learning via ClippedGossip", arXiv:2202.01545, eq. (2)),
      τ_i = `mixing.clip_radius` or `adaptive_radius`.

    Returns
    -------
    numpy.ndarray
        The new x_i, float32, shape (n,).
    """
    if mixing.rule == "gossip" or not received:
        return consensus_step(own, public_copy, received, weights, step)
    mixed = own.astype(np.float64)
    base = mixed.copy() if public_copy is None else public_copy.astype(np.float64)
    if mixing.rule in ("median", "trimmed-mean"):
        stacked = np.stack([base, *(c.astype(np.float64) for c in received.values())])
        agg = (coordinate_median(stacked) if mixing.rule == "median"
               else trimmed_mean(stacked, mixing.trim))
        mixed += step * (agg - base)
    else:
        diffs = {j: c.astype(np.float64) - base for j, c in received.items()}
        radius = (mixing.clip_radius if mixing.clip_radius is not None else adaptive_radius(
            [float(np.linalg.norm(d)) for d in diffs.values()], mixing.clip_neighbours))
        for j, diff in diffs.items():
            mixed += step * weights[j] * clip(diff, radius)
    return mixed.astype(np.float32)
