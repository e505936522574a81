"""Gossip averaging, the pure maths: Metropolis–Hastings weights, the mixing plan, the CHOCO step.

No torch here: every function takes and returns plain Python or numpy values, so the maths is
tested on its own (tests/test_edge_gossip.py) and reused by the simulator and the networked agent.

Vocabulary used throughout code, config and docs:
- **public copy** x̂_i: agent i's branch as its neighbours hold it, i.e. as they decoded it (equal
  to x_i with the fp32 codec, lagging behind it with lossy codecs);
- **consensus step** γ (`comm.consensus_step`): how far one round moves towards the neighbours.
"""

from __future__ import annotations

from collections.abc import Mapping

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
