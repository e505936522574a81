"""Aggregate per-agent round results into the summary schema shared by simulate and trial."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np

from edge.config import FleetConfig
from edge.counting import cumulative_total
from edge.rounds import RoundResult
from edge.version import software_version


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


def bytes_block(per_agent: dict[str, int], rounds: int) -> dict:
    """Total, per-round and per-agent bytes."""
    total = sum(per_agent.values())
    return {"total": total, "per_round": total / rounds if rounds else 0.0,
            "per_agent": dict(per_agent)}


def _strategy_block(name: str, arch: str, history: list[dict[str, RoundResult]],
                    final: dict[str, RoundResult], kinds: dict[str, str], sent: dict[str, int],
                    wall_s: float) -> dict:
    rounds = len(history)
    return {
        "strategy": name,
        "arch": arch,
        "accuracy": accuracy_block(final, kinds),
        "per_head": per_head_block(final, kinds),
        "bytes_sent": bytes_block(sent, rounds),
        "rounds": rounds,
        "wall_s": wall_s,
        "history": history_block(history, kinds),
    }


def strategy_summary(name: str, arch: str, history: list[dict[str, RoundResult]],
                     kinds: dict[str, str], wall_s: float) -> dict:
    """The `strategies.<name>` block of summary.json."""
    sent: dict[str, int] = defaultdict(int)
    for round_results in history:
        for agent, res in round_results.items():
            sent[agent] += res.dense_bytes_published
    final = history[-1] if history else {}
    return _strategy_block(name, arch, history, final, kinds, dict(sent), wall_s)


# --- the networked trial: the same blocks, built from the agents' metrics rows -----------------


def row_result(row: dict) -> RoundResult:
    """A RoundResult from one metrics row of a networked agent."""
    return RoundResult(
        agent_id=row["agent"], round_idx=int(row["round"]), accuracy=float(row["accuracy"]),
        n_test=int(row.get("n_test", 0)), head_accuracy=dict(row.get("head_accuracy") or {}),
        train_loss=float(row.get("train_loss", float("nan"))), train_s=float(row.get("train_s", 0.0)),
        mixed_from=dict(row.get("mixed_from") or {}),
        dense_bytes_published=int(row.get("dense_bytes_published", 0)))


def rows_by_round(rows: Iterable[dict]) -> list[dict[str, RoundResult]]:
    """Rows grouped by round (an agent that ran a round twice after a restart: the later row)."""
    rounds: dict[int, dict[str, RoundResult]] = defaultdict(dict)
    for row in rows:
        res = row_result(row)
        rounds[res.round_idx][res.agent_id] = res
    return [rounds[r] for r in sorted(rounds)]


def final_rows(rows: Iterable[dict]) -> dict[str, dict]:
    """Each agent's row of its highest round (its final model)."""
    final: dict[str, dict] = {}
    for row in rows:
        agent = row["agent"]
        if agent not in final or int(row["round"]) >= int(final[agent]["round"]):
            final[agent] = row
    return final


def agent_rows(rows: Iterable[dict]) -> dict[str, list[dict]]:
    """Rows per agent, in the order they were written."""
    out: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        out[row["agent"]].append(row)
    return dict(out)


def wire_bytes(rows: list[dict]) -> dict[str, int]:
    """Bytes on the wire one agent sent and received over the trial (restarts included)."""
    return {
        "sent": int(cumulative_total(r.get("bytes_sent", 0) for r in rows)),
        "received": int(cumulative_total(r.get("bytes_received", 0) for r in rows)),
    }


def trial_strategy_summary(name: str, arch: str, rows: list[dict], kinds: dict[str, str],
                           wall_s: float) -> dict:
    """The `strategies.<name>` block of a trial's summary.json, from the agents' metrics rows.

    Same keys as `strategy_summary`; accuracy is each agent's last round (an agent that left
    early counts with its last model); `bytes_sent` holds measured bytes on the wire (payload and
    MQTT header) and `bytes_dense` the dense fp32 size of what was published."""
    history = rows_by_round(rows)
    final = {a: row_result(r) for a, r in final_rows(rows).items()}
    per_agent = agent_rows(rows)
    sent = {a: wire_bytes(r)["sent"] for a, r in per_agent.items()}
    received = {a: wire_bytes(r)["received"] for a, r in per_agent.items()}
    dense = {a: sum(int(r.get("dense_bytes_published", 0)) for r in final_rows_per_round(rs))
             for a, rs in per_agent.items()}
    rounds = len(history)
    block = _strategy_block(name, arch, history, final, kinds, sent, wall_s)
    block.update({
        "bytes_received": bytes_block(received, rounds),
        "bytes_dense": bytes_block(dense, rounds),
        "rounds_completed": {a: len({int(r["round"]) for r in rs}) for a, rs in per_agent.items()},
    })
    return block


def final_rows_per_round(rows: list[dict]) -> list[dict]:
    """One agent's rows with a re-run round counted once (the later row)."""
    by_round = {int(r["round"]): r for r in rows}
    return [by_round[k] for k in sorted(by_round)]


def fleet_header(cfg: FleetConfig, agents: dict[str, dict]) -> dict:
    """The top of summary.json, shared by simulate and trial: what ran, on what, and who."""
    return {
        "software_version": software_version(),
        "config": cfg.source,
        "fleet": cfg.fleet,
        "dataset": cfg.data.dataset,
        "seed": cfg.training.seed,
        "agents": agents,
    }
