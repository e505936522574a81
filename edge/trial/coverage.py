"""Mix coverage: of the neighbour updates an agent could have mixed in a round, how many it did.

An agent mixing at round r uses what its neighbours published at round r-1, for every branch it
shares with them (docs/ARCHITECTURE.md §The life of one round). Comparing the rows' `mixed_from`
with that expectation shows what delay, loss, a leaving agent or a broker restart did to the
exchange.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from edge.config.schema import FleetConfig
from edge.config.topology import build_graph
from edge.learning.sharing import branches_for
from edge.learning.strategies import get_strategy
from edge.records import MetricsRow

# (agent, round) -> branch key -> the neighbours expected to contribute
Expected = dict[tuple[str, int], dict[str, tuple[str, ...]]]


def agent_branch_keys(cfg: FleetConfig, strategy: str) -> dict[str, set[str]]:
    """Branch keys each agent shares under `strategy`."""
    row = get_strategy(strategy)
    arch = row.arch(cfg.model.arch)
    return {a.id: set(branches_for(row.sharing, a.modalities, arch, cfg.model.share_heads,
                                   cfg.model.synergy_scope))
            for a in cfg.agent_specs}


def expected_mixes(cfg: FleetConfig, strategy: str, rounds: int) -> Expected:
    """For every agent and round >= 1: per shared branch, the neighbours holding it."""
    ids = [a.id for a in cfg.agent_specs]
    keys = agent_branch_keys(cfg, strategy)
    out: Expected = {}
    for round_idx in range(1, rounds):
        graph = build_graph(cfg.topology, ids, cfg.training.seed, round_idx, cfg.source)
        for agent in ids:
            plan = {}
            for key in sorted(keys[agent]):
                senders = tuple(n for n in graph.get(agent, ()) if key in keys[n])
                if senders:
                    plan[key] = senders
            out[(agent, round_idx)] = plan
    return out


def mix_coverage(rows: list[MetricsRow], expected: Expected) -> dict[str, Any]:
    """Fraction of expected neighbour contributions that were mixed: overall, per round and per
    sender, from each agent's last row per round.
    """
    last: dict[tuple[str, int], MetricsRow] = {}
    for row in rows:
        last[(row["agent"], int(row["round"]))] = row
    got: dict[str, int] = defaultdict(int)
    want: dict[str, int] = defaultdict(int)
    by_round_got: dict[int, int] = defaultdict(int)
    by_round_want: dict[int, int] = defaultdict(int)
    pair_got: dict[tuple[str, int], int] = defaultdict(int)
    pair_want: dict[tuple[str, int], int] = defaultdict(int)
    for (agent, round_idx), row in sorted(last.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        plan = expected.get((agent, round_idx), {})
        mixed = row["mixed_from"]
        for key, senders in plan.items():
            used = set(mixed.get(key, ()))
            for sender in senders:
                want[sender] += 1
                by_round_want[round_idx] += 1
                pair_want[(sender, round_idx)] += 1
                if sender in used:
                    got[sender] += 1
                    by_round_got[round_idx] += 1
                    pair_got[(sender, round_idx)] += 1
    total_want = sum(want.values())
    return {
        "overall": sum(got.values()) / total_want if total_want else None,
        "expected": total_want,
        "mixed": sum(got.values()),
        "per_round": {r: by_round_got[r] / n for r, n in sorted(by_round_want.items()) if n},
        "per_sender": {s: got[s] / n for s, n in sorted(want.items()) if n},
        "per_sender_round": {s: {r: pair_got[(s, r)] / n for (s2, r), n in sorted(pair_want.items())
                                 if s2 == s} for s in sorted(want)},
    }


def sender_coverage(coverage: dict[str, Any], sender: str, rounds: range) -> float | None:
    """Coverage of one sender's updates over some mixing rounds (None: none expected)."""
    per_round = coverage.get("per_sender_round", {}).get(sender, {})
    values = [per_round[r] for r in rounds if r in per_round]
    return sum(values) / len(values) if values else None
