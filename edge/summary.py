"""summary.json's strategy blocks, built from metrics rows: the same code for simulate and trial.

Both the simulator and the networked agents produce one `MetricsRow` per agent and round (see
edge.learning.rounds), so a strategy's block is computed one way whatever carried the updates.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from edge.config.schema import FleetConfig
from edge.records import (
    AccuracyBlock,
    AgentInfo,
    BytesBlock,
    HistoryRow,
    MetricsRow,
    StrategyBlock,
    SummaryDoc,
)
from edge.version import software_version


def cumulative_total(values: Iterable[float]) -> float:
    """Total of a per-process running counter read once per round.

    A drop means the process restarted and counted from zero again, so each run's last value is
    added up.
    """
    total, last = 0.0, 0.0
    for value in values:
        if value < last:
            total += last
        last = value
    return total + last


def round_span(rounds: int) -> str:
    """Show rounds to people as their 0-based index range, e.g. "0-11" for 12 rounds.

    The numbers of metrics.jsonl and of the fault config: "round 3 of 0-11".
    """
    return f"0-{rounds - 1}"


def round_ranges(rounds: Iterable[int]) -> str:
    """Round indices as ranges: [1, 2, 3, 6] -> "1-3, 6"."""
    spans: list[list[int]] = []
    for r in sorted(rounds):
        if spans and r == spans[-1][1] + 1:
            spans[-1][1] = r
        else:
            spans.append([r, r])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def head_label(head: str, kind: str) -> str:
    """Readable head names: R, U/<m>, S/<combination>, late."""
    if head.startswith("U_"):
        return f"U/{head[2:]}"
    return f"S/{kind}" if head == "S" else head


def _mean(values: Iterable[float]) -> float:
    vals = list(values)
    return float(np.mean(vals)) if vals else float("nan")


def agent_rows(rows: Iterable[MetricsRow]) -> dict[str, list[MetricsRow]]:
    """Rows per agent, in the order they were written."""
    out: dict[str, list[MetricsRow]] = defaultdict(list)
    for row in rows:
        out[row["agent"]].append(row)
    return dict(out)


def last_per_round(rows: Iterable[MetricsRow]) -> list[MetricsRow]:
    """One agent's rows with a re-run round (after a restart) counted once: the later row."""
    by_round = {int(r["round"]): r for r in rows}
    return [by_round[k] for k in sorted(by_round)]


def final_rows(rows: Iterable[MetricsRow]) -> dict[str, MetricsRow]:
    """Each agent's row of its highest round (its final model)."""
    final: dict[str, MetricsRow] = {}
    for row in rows:
        agent = row["agent"]
        if agent not in final or int(row["round"]) >= int(final[agent]["round"]):
            final[agent] = row
    return final


def accuracy_block(final: Mapping[str, MetricsRow]) -> AccuracyBlock:
    """Overall accuracy (mean over agents of their own test accuracy), by kind, per agent."""
    by_kind: dict[str, list[float]] = defaultdict(list)
    for row in final.values():
        by_kind[row["kind"]].append(float(row["accuracy"]))
    return {
        "overall": _mean(float(r["accuracy"]) for r in final.values()),
        "by_kind": {k: _mean(v) for k, v in by_kind.items()},
        "per_agent": {a: float(r["accuracy"]) for a, r in final.items()},
    }


def per_head_block(final: Mapping[str, MetricsRow]) -> dict[str, float]:
    """Mean test accuracy of each head type over the agents that have it."""
    heads: dict[str, list[float]] = defaultdict(list)
    for row in final.values():
        for head, acc in row["head_accuracy"].items():
            heads[head_label(head, row["kind"])].append(acc)
    return {h: _mean(v) for h, v in sorted(heads.items())}


def history_block(rows: Iterable[MetricsRow]) -> list[HistoryRow]:
    """Summarise each round: overall and by-kind accuracy, dense bytes published.

    A round an agent ran twice counts with its later row.
    """
    by_round: dict[int, dict[str, MetricsRow]] = defaultdict(dict)
    for row in rows:
        by_round[int(row["round"])][row["agent"]] = row
    history: list[HistoryRow] = []
    for round_idx in sorted(by_round):
        acc = accuracy_block(by_round[round_idx])
        history.append({
            "round": round_idx, "overall": acc["overall"], "by_kind": acc["by_kind"],
            "dense_bytes": sum(int(r["dense_bytes_published"]) for r in by_round[round_idx].values()),
        })
    return history


def bytes_block(per_agent: Mapping[str, int], rounds: int,
                round_0: Mapping[str, int] | None = None) -> BytesBlock:
    """Total, per-round and per-agent bytes; `round_0`: each agent's bytes of round 0."""
    total = sum(per_agent.values())
    later = (total - sum(round_0.values())) / (rounds - 1) if round_0 is not None and rounds > 1 \
        else None
    return {"total": total, "per_round": total / rounds if rounds else 0.0,
            "per_round_after_0": later, "per_agent": dict(per_agent)}


def wire_bytes(rows: Sequence[MetricsRow]) -> dict[str, int]:
    """Bytes one agent sent and received over the run (process restarts included), and in round 0."""
    return {
        "sent": int(cumulative_total(r["bytes_sent"] for r in rows)),
        "received": int(cumulative_total(r["bytes_received"] for r in rows)),
        # The running counters as round 0 ended (0 for an agent that joined later).
        "sent_round_0": next((int(r["bytes_sent"]) for r in rows if int(r["round"]) == 0), 0),
        "received_round_0": next((int(r["bytes_received"]) for r in rows if int(r["round"]) == 0),
                                 0),
    }


def strategy_block(name: str, arch: str, rows: Sequence[MetricsRow], wall_s: float) -> StrategyBlock:
    """Build the `strategies.<name>` block of summary.json from every agent's metrics rows.

    Accuracy is each agent's last round (an agent that left early counts with its last model);
    `bytes_sent` / `bytes_received` are the transport's counts (encoded updates in the simulator,
    MQTT payload + header in a trial) and `bytes_dense` the fp32 size of what was published.
    """
    history = history_block(rows)
    final = final_rows(rows)
    per_agent = agent_rows(rows)
    traffic = {a: wire_bytes(r) for a, r in per_agent.items()}
    dense = {a: sum(int(r["dense_bytes_published"]) for r in last_per_round(rs))
             for a, rs in per_agent.items()}
    rounds = len(history)
    return {
        "strategy": name,
        "arch": arch,
        "accuracy": accuracy_block(final),
        "per_head": per_head_block(final),
        "bytes_sent": bytes_block({a: t["sent"] for a, t in traffic.items()}, rounds,
                                  {a: t["sent_round_0"] for a, t in traffic.items()}),
        "bytes_received": bytes_block({a: t["received"] for a, t in traffic.items()}, rounds,
                                      {a: t["received_round_0"] for a, t in traffic.items()}),
        "bytes_dense": bytes_block(dense, rounds),
        "rounds": rounds,
        "rounds_completed": {a: len({int(r["round"]) for r in rs}) for a, rs in per_agent.items()},
        "wall_s": wall_s,
        "history": history,
    }


def fleet_header(cfg: FleetConfig, agents: dict[str, AgentInfo],
                 strategies: dict[str, StrategyBlock]) -> SummaryDoc:
    """summary.json without the trial block: what ran, on what, who, and each strategy's block."""
    return {
        "software_version": software_version(),
        "config": cfg.source,
        "fleet": cfg.fleet,
        "dataset": cfg.data.dataset,
        "seed": cfg.training.seed,
        "model": {"split": cfg.model.split if isinstance(cfg.model.split, str)
                  else list(cfg.model.split), "synergy_scope": cfg.model.synergy_scope},
        "agents": agents,
        "strategies": strategies,
    }
