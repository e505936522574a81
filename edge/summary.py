"""Aggregate per-agent round results into the summary schema shared by simulate and trial."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np

from edge.rounds import RoundResult


def head_label(head: str, kind: str) -> str:
    """Readable head names: R, U/<m>, S/<combination>, late."""
    if head.startswith("U_"):
        return f"U/{head[2:]}"
    return f"S/{kind}" if head == "S" else head


def _mean(values: Iterable[float]) -> float:
    vals = list(values)
    return float(np.mean(vals)) if vals else float("nan")


def accuracy_block(final: dict[str, RoundResult], kinds: dict[str, str]) -> dict:
    """Overall accuracy (mean over agents of their own test accuracy), by kind, per agent."""
    by_kind: dict[str, list[float]] = defaultdict(list)
    for agent, res in final.items():
        by_kind[kinds[agent]].append(res.accuracy)
    return {
        "overall": _mean(r.accuracy for r in final.values()),
        "by_kind": {k: _mean(v) for k, v in by_kind.items()},
        "per_agent": {a: r.accuracy for a, r in final.items()},
    }


def per_head_block(final: dict[str, RoundResult], kinds: dict[str, str]) -> dict[str, float]:
    """Mean test accuracy of each head type over the agents that have it."""
    heads: dict[str, list[float]] = defaultdict(list)
    for agent, res in final.items():
        for head, acc in res.head_accuracy.items():
            heads[head_label(head, kinds[agent])].append(acc)
    return {h: _mean(v) for h, v in sorted(heads.items())}


def history_block(history: list[dict[str, RoundResult]], kinds: dict[str, str]) -> list[dict]:
    """Per round: overall and by-kind accuracy, dense bytes published."""
    rows = []
    for round_results in history:
        if not round_results:
            continue
        acc = accuracy_block(round_results, kinds)
        rows.append({
            "round": next(iter(round_results.values())).round_idx,
            "overall": acc["overall"],
            "by_kind": acc["by_kind"],
            "dense_bytes": sum(r.dense_bytes_published for r in round_results.values()),
        })
    return rows


def strategy_summary(name: str, arch: str, history: list[dict[str, RoundResult]],
                     kinds: dict[str, str], wall_s: float) -> dict:
    """The `strategies.<name>` block of summary.json."""
    final = history[-1] if history else {}
    sent: dict[str, int] = defaultdict(int)
    for round_results in history:
        for agent, res in round_results.items():
            sent[agent] += res.dense_bytes_published
    rounds = len(history)
    total = sum(sent.values())
    return {
        "strategy": name,
        "arch": arch,
        "accuracy": accuracy_block(final, kinds),
        "per_head": per_head_block(final, kinds),
        "bytes_sent": {
            "total": total,
            "per_round": total / rounds if rounds else 0.0,
            "per_agent": dict(sent),
        },
        "rounds": rounds,
        "wall_s": wall_s,
        "history": history_block(history, kinds),
    }
