"""PID estimates for a fleet's modality pairs: one agent's, the fleet's (gossip), or pooled (oracle).

No agent sees pooled data. The fleet estimate of a pair (a, b) is built from sums that agents
gossip-average with Metropolis–Hastings weights (edge.sharing.metropolis_weights) over the whole
communication graph, agents without the data contributing zeros, so the average times the fleet
size is the fleet-wide sum:

1. per modality m, over the agents holding m: feature moments (a shared standardisation), then
   k-means centres — every holder proposes its own k local centres, all proposals are gathered
   and clustered into k, then Lloyd iterations run on the union of the holders' data through
   gossip-averaged per-centre sums and counts (Datta, Giannella and Kargupta 2009);
2. per pair, over the agents holding both: the joint counts (cluster_a, cluster_b, label) under
   those shared centres; their sum is the fleet's table, and BROJA runs on it.

Why counts and not estimates: PID atoms are non-linear in the table, and the plug-in estimate of
a table with few samples per cell is biased upwards (on synergy); averaging per-agent estimates
keeps each agent's small-sample bias and weights a 30-sample agent like a 300-sample one, while
summing counts gives the estimate of the union of the holders' data. The price is the shared
cluster centres of step 1 (counts under different discretisations cannot be added). Counts are
k_a * k_b * n_classes numbers per pair, a few kB.

`pooled` (simulation only, an oracle): every agent's training split with every fleet modality,
centralised, as if one machine held all the data.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from itertools import combinations

import numpy as np

from edge.config.schema import FleetConfig
from edge.config.topology import Graph, build_graph
from edge.data.fleet_data import AgentData, Split, agent_data
from edge.errors import UserError
from edge.learning.gossip import metropolis_weights
from edge.learning.pid import (
    Pid,
    PidEstimate,
    SynergyScope,
    assign,
    auto_split,
    bootstrap_pid,
    cluster_sums,
    joint_counts,
    kmeans,
    lloyd_update,
    planted_pid,
    synergy_scope,
)


@dataclass(frozen=True)
class PidOptions:
    """Estimator settings: clusters per modality, bootstrap draws and level, seed, Lloyd rounds."""

    k: int = 10
    draws: int = 20
    level: float = 0.9
    seed: int = 0
    lloyd_iters: int = 30


@dataclass(frozen=True)
class PairPid:
    """One modality pair: its estimate, whose data went in, the planted truth (synthetic-pid)."""

    a: str
    b: str
    estimate: PidEstimate
    holders: tuple[str, ...]
    planted: Pid | None = None


@dataclass(frozen=True)
class FleetPid:
    """Every pair's estimate plus what they decide: the `split: auto` widths and s_m scopes."""

    mode: str
    pairs: tuple[PairPid, ...]
    split: tuple[int, int, int]
    latent: int
    scopes: dict[str, SynergyScope]
    gossip_steps: int
    options: PidOptions

    def as_dict(self) -> dict[str, object]:
        """JSON-ready document (`parse-edge pid --json`)."""
        return {
            "mode": self.mode, "k": self.options.k, "gossip_steps": self.gossip_steps,
            "pairs": [{"a": p.a, "b": p.b, "holders": list(p.holders), **p.estimate.as_dict(),
                       "planted": p.planted.as_dict() if p.planted else None} for p in self.pairs],
            "split_auto": {"widths": list(self.split), "latent": self.latent},
            "synergy_scope": {m: s.value for m, s in self.scopes.items()},
        }


# --- gossip --------------------------------------------------------------------------------------

class Gossip:
    """Synchronous Metropolis–Hastings averaging on the fleet graph, run to consensus; counts steps."""

    def __init__(self, graph: Graph, tol: float = 1e-10, max_steps: int = 100_000) -> None:
        self.ids = list(graph)
        if not _connected(graph):
            raise UserError("pid: the topology is not connected, so gossip cannot combine "
                            "estimates across the fleet; use --agent ID or --pooled")
        index = {a: i for i, a in enumerate(self.ids)}
        self.w = np.zeros((len(self.ids), len(self.ids)))
        for a in self.ids:
            for j, weight in metropolis_weights(a, graph).items():
                self.w[index[a], index[j]] = weight
        self.tol, self.max_steps = tol, max_steps
        self.steps = 0

    def total(self, values: dict[str, np.ndarray]) -> np.ndarray:
        """Sum `values` over the fleet (agents absent from it hold zeros).

        The value every agent holds after gossip-averaging to consensus (max deviation from
        the mean <= tol * scale).
        """
        shape = next(iter(values.values())).shape
        x = np.zeros((len(self.ids), int(np.prod(shape))))
        for i, a in enumerate(self.ids):
            if a in values:
                x[i] = values[a].ravel()
        target = x.mean(axis=0)
        scale = max(1.0, float(np.abs(target).max()))
        for step in range(self.max_steps):
            if np.abs(x - target).max() <= self.tol * scale:
                self.steps += step
                break
            x = self.w @ x
        else:  # pragma: no cover - a connected graph converges geometrically
            raise RuntimeError("gossip did not converge")
        return np.asarray(x[0] * len(self.ids)).reshape(shape)


def _connected(graph: Graph) -> bool:
    start = next(iter(graph))
    seen, todo = {start}, deque([start])
    while todo:
        for j in graph[todo.popleft()]:
            if j not in seen:
                seen.add(j)
                todo.append(j)
    return len(seen) == len(graph)


# --- estimates -------------------------------------------------------------------------------------

def raw_features(data: AgentData, split: Split, m: str) -> np.ndarray:
    """Give the (N, D) float64 features of modality m as recorded.

    The agent's normalisation is undone and windows are flattened: a space every agent shares.
    """
    x = split.x[m].reshape(len(split), -1).astype(np.float64)
    norm = data.norm[m]
    reps = x.shape[1] // norm.mean.size
    return x * np.repeat(norm.std.astype(np.float64), reps) + np.repeat(norm.mean.astype(np.float64), reps)


def pairs_held(cfg: FleetConfig) -> list[tuple[str, str]]:
    """Modality pairs some agent holds both of, in fleet order."""
    held = {tuple(p) for s in cfg.agent_specs for p in combinations(s.modalities, 2)}
    return [p for p in combinations(cfg.modalities, 2) if p in held]


def agent_pid(cfg: FleetConfig, agent_id: str, options: PidOptions,
              data: dict[str, AgentData] | None = None) -> FleetPid:
    """One multimodal agent's own estimate on its own training split (its own centres).

    Raises
    ------
    UserError
        If the agent is unknown or holds a single modality.
    """
    specs = {s.id: s for s in cfg.agent_specs}
    if agent_id not in specs:
        raise UserError(f"--agent: unknown agent {agent_id!r}; expected one of {', '.join(specs)}")
    spec = specs[agent_id]
    if len(spec.modalities) < 2:
        multi = [s.id for s in cfg.agent_specs if len(s.modalities) > 1]
        raise UserError(f"--agent: {agent_id} holds one modality ({spec.modalities[0]}), so no pair "
                        f"to decompose; multimodal agents: {', '.join(multi) or 'none'}")
    own = (data or agent_data(cfg))[agent_id]
    n_classes = len(own.labels)
    labels = {m: _discretise(own.train.x[m].reshape(len(own.train), -1), options) for m in spec.modalities}
    pairs = []
    for a, b in combinations(spec.modalities, 2):
        table = joint_counts(labels[a], labels[b], own.train.y, (options.k, options.k, n_classes))
        pairs.append(_pair(cfg, a, b, table, (agent_id,), options))
    return _decide(cfg, f"agent {agent_id} (own training split)", pairs, 0, options)


def fleet_pid(cfg: FleetConfig, options: PidOptions, data: dict[str, AgentData] | None = None,
              progress: Callable[[str], None] | None = None) -> FleetPid:
    """Estimate every held pair for the fleet: counts summed by gossip under shared centres."""
    data = data if data is not None else agent_data(cfg)
    graph = build_graph(cfg.topology, [s.id for s in cfg.agent_specs], cfg.training.seed, 0, cfg.source)
    gossip = Gossip(graph)
    pairs_todo = pairs_held(cfg)
    if not pairs_todo:
        raise UserError(f"pid: {cfg.source}: no agent holds two modalities, so no pair to decompose")
    needed = sorted({m for p in pairs_todo for m in p}, key=cfg.modalities.index)
    centres = {m: _shared_centres(cfg, data, m, gossip, options) for m in needed}
    n_classes = len(next(iter(data.values())).labels)
    pairs = []
    for a, b in pairs_todo:
        if progress:
            progress(f"pair {a}/{b}: counts, BROJA and {options.draws} bootstrap draws")
        holders = tuple(s.id for s in cfg.agent_specs if a in s.modalities and b in s.modalities)
        tables = {}
        for h in holders:
            d = data[h]
            la = assign(_standard(raw_features(d, d.train, a), centres[a][1]), centres[a][0])
            lb = assign(_standard(raw_features(d, d.train, b), centres[b][1]), centres[b][0])
            shape = (len(centres[a][0]), len(centres[b][0]), n_classes)
            tables[h] = joint_counts(la, lb, d.train.y, shape).astype(np.float64)
        table = np.rint(gossip.total(tables)).astype(np.int64)
        pairs.append(_pair(cfg, a, b, table, holders, options))
    return _decide(cfg, "fleet (joint counts summed by gossip)", pairs, gossip.steps, options)


def pooled_pid(cfg: FleetConfig, options: PidOptions) -> FleetPid:
    """Simulation-only oracle: every agent's training split with every modality, centralised.

    Raises
    ------
    UserError
        If some agent has its own data file (there is no pool to read other modalities from).
    """
    if any(s.data for s in cfg.agent_specs):
        raise UserError("--pooled: agents with their own data files have no shared pool to pool")
    full = replace(cfg, agent_specs=tuple(replace(s, modalities=cfg.modalities) for s in cfg.agent_specs))
    data = agent_data(full)
    n_classes = len(next(iter(data.values())).labels)
    y = np.concatenate([d.train.y for d in data.values()])
    labels = {}
    for m in cfg.modalities:
        x = np.concatenate([raw_features(d, d.train, m) for d in data.values()])
        labels[m] = _discretise((x - x.mean(axis=0)) / _std(x), options)
    pairs = [_pair(cfg, a, b, joint_counts(labels[a], labels[b], y, (options.k, options.k, n_classes)),
                   tuple(data), options)
             for a, b in combinations(cfg.modalities, 2)]
    return _decide(cfg, "pooled (simulation-only oracle)", pairs, 0, options)


# --- helpers -------------------------------------------------------------------------------------

def _discretise(x: np.ndarray, options: PidOptions) -> np.ndarray:
    return assign(x, kmeans(x, options.k, options.seed))


def _std(x: np.ndarray) -> np.ndarray:
    s = x.std(axis=0)
    return np.where(s < 1e-9, 1.0, s)


def _standard(x: np.ndarray, moments: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    out: np.ndarray = (x - moments[0]) / moments[1]
    return out


def _shared_centres(cfg: FleetConfig, data: dict[str, AgentData], m: str, gossip: Gossip,
                    options: PidOptions) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Compute k-means centres of modality m over the union of its holders' training data.

    Only gossip-averaged sums travel. Returns (centres (k, D), (mean, std) of the shared standardisation).
    """
    holders = [s.id for s in cfg.agent_specs if m in s.modalities]
    raw = {h: raw_features(data[h], data[h].train, m) for h in holders}
    dim = next(iter(raw.values())).shape[1]
    moments = gossip.total({h: np.concatenate([[len(x)], x.sum(axis=0), (x * x).sum(axis=0)])
                            for h, x in raw.items()})
    n = moments[0]
    mean = moments[1:1 + dim] / n
    std = np.sqrt(np.maximum(moments[1 + dim:] / n - mean * mean, 0.0))
    std = np.where(std < 1e-9, 1.0, std)
    x = {h: (v - mean) / std for h, v in raw.items()}
    k = options.k
    # Every holder proposes k local centres (fewer if it has fewer samples); the gathered
    # proposals, clustered into k, seed Lloyd on the union.
    slots = {h: i for i, h in enumerate(holders)}
    proposals = {}
    for h, v in x.items():
        local = kmeans(v, k, options.seed)
        block = np.full((len(holders), k, dim + 1), 0.0)
        block[slots[h], : len(local), :dim] = local
        block[slots[h], : len(local), dim] = 1.0  # marks a real proposal
        proposals[h] = block
    gathered = gossip.total(proposals).reshape(-1, dim + 1)
    seeds = gathered[gathered[:, dim] > 0.5, :dim]
    centres = kmeans(seeds, k, options.seed)
    for _ in range(options.lloyd_iters):
        stats = {h: np.concatenate([s, c[:, None]], axis=1)
                 for h, (s, c) in ((h, cluster_sums(v, centres)) for h, v in x.items())}
        total = gossip.total(stats)
        new = lloyd_update(centres, total[:, :dim], total[:, dim])
        if np.allclose(new, centres):
            break
        centres = new
    return centres, (mean, std)


def _pair(cfg: FleetConfig, a: str, b: str, table: np.ndarray, holders: tuple[str, ...],
          options: PidOptions) -> PairPid:
    estimate = bootstrap_pid(table, options.draws, options.seed, options.level)
    planted = None
    if cfg.data.dataset == "synthetic-pid":
        syn = cfg.data.synthetic
        first = syn.modalities[0]
        planted = planted_pid(syn.redundant_bits, syn.unique_bits, syn.synergy_bits,
                              first in (a, b))
    return PairPid(a, b, estimate, holders, planted)


def _decide(cfg: FleetConfig, mode: str, pairs: list[PairPid], steps: int,
            options: PidOptions) -> FleetPid:
    """Derive the split and the synergy scopes from the estimates of the pairs agents hold."""
    held = set(pairs_held(cfg))
    used = [p.estimate.point for p in pairs if (p.a, p.b) in held] or [p.estimate.point for p in pairs]
    latent = min(f.latent for f in cfg.families.values())
    scopes = {m: synergy_scope([p.estimate.point for p in pairs if m in (p.a, p.b) and (p.a, p.b) in held])
              for m in cfg.modalities}
    return FleetPid(mode, tuple(pairs), auto_split(used, latent), latent, scopes, steps, options)
