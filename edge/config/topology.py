"""Communication graphs: ring, chordal ring, random regular, complete, Erdős–Rényi, explicit."""

from __future__ import annotations

import random

from edge.config.schema import TopologyConfig
from edge.errors import ConfigError

Graph = dict[str, tuple[str, ...]]


def build_graph(cfg: TopologyConfig, ids: list[str], seed: int, round_idx: int = 0,
                source: str = "<config>") -> Graph:
    """Neighbour lists (in agent order) for the fleet; random kinds re-draw per round if asked."""
    n = len(ids)
    draw = round_idx if cfg.resample_each_round else 0
    rng = random.Random(f"{seed}/{draw}")
    index = {a: i for i, a in enumerate(ids)}
    if cfg.kind == "ring":
        pairs = {(i, (i + 1) % n) for i in range(n)}
    elif cfg.kind == "chordal-ring":
        pairs = {(i, (i + c) % n) for i in range(n) for c in cfg.chords}
    elif cfg.kind == "complete":
        pairs = {(i, j) for i in range(n) for j in range(i + 1, n)}
    elif cfg.kind == "erdos-renyi":
        pairs = _erdos_renyi(n, cfg.p, rng)
    elif cfg.kind == "random-regular":
        pairs = _random_regular(n, cfg.degree, rng, source)
    else:
        pairs = set()
        for k, edge in enumerate(cfg.edges):
            if len(edge) != 2 or edge[0] not in index or edge[1] not in index:
                raise ConfigError(source, f"topology.edges[{k}]",
                                  f"expected a pair of known agent ids, got {list(edge)}")
            pairs.add((index[edge[0]], index[edge[1]]))
    adj: dict[int, set[int]] = {i: set() for i in range(n)}
    for i, j in pairs:
        if i != j:
            adj[i].add(j)
            adj[j].add(i)
    return {ids[i]: tuple(ids[j] for j in sorted(adj[i])) for i in range(n)}


def check_topology(cfg: TopologyConfig, ids: list[str], seed: int, source: str) -> Graph:
    """Build round 0's graph and reject settings that leave an agent without a neighbour."""
    n = len(ids)
    if n < 2:
        raise ConfigError(source, "agents", f"expected at least two agents, got {n}")
    if cfg.kind == "chordal-ring" and (not cfg.chords or min(cfg.chords) < 1):
        raise ConfigError(source, "topology.chords", "expected positive chord offsets like [1, 3]")
    if cfg.kind == "chordal-ring" and max(cfg.chords) > n:
        # An offset beyond n wraps around the ring (30 on 8 agents is 6, the same chord as 2),
        # so the graph would not be the one written. An offset of n itself adds no edge and is
        # let through: the usual [1, 3] on a fleet of three is the ring.
        raise ConfigError(source, "topology.chords", f"expected offsets from 1 to {n} for "
                          f"{n} agents, got {max(cfg.chords)}")
    if cfg.kind == "erdos-renyi" and not 0 < cfg.p <= 1:
        raise ConfigError(source, "topology.p", f"expected a probability in (0, 1], got {cfg.p}")
    graph = build_graph(cfg, ids, seed, 0, source)
    lonely = [a for a, nbrs in graph.items() if not nbrs]
    if lonely:
        raise ConfigError(source, "topology",
                          f"{cfg.kind} leaves agent {lonely[0]} with no neighbour "
                          f"({len(lonely)} isolated); expected every agent to have one")
    return graph


def edge_count(graph: Graph) -> int:
    """Undirected edges in a graph."""
    return sum(len(n) for n in graph.values()) // 2


def _erdos_renyi(n: int, p: float, rng: random.Random) -> set[tuple[int, int]]:
    return {(i, j) for i in range(n) for j in range(i + 1, n) if rng.random() < p}


def _random_regular(n: int, degree: int, rng: random.Random, source: str) -> set[tuple[int, int]]:
    if not 1 <= degree < n or (n * degree) % 2:
        raise ConfigError(source, "topology.degree",
                          f"expected 1 <= degree < {n} with agents x degree even, got {degree}")
    # Pairing model with restarts: simple and fast for the fleet sizes we run (<= a few hundred).
    for _ in range(1000):
        stubs = [i for i in range(n) for _ in range(degree)]
        rng.shuffle(stubs)
        pairs = {(min(a, b), max(a, b)) for a, b in zip(stubs[::2], stubs[1::2], strict=True)}
        if len(pairs) == n * degree // 2 and all(a != b for a, b in pairs):
            return pairs
    raise ConfigError(source, "topology.degree", f"could not draw a {degree}-regular graph")
