"""A trial's record: summary.json (simulate's schema plus what the network measured), metrics.jsonl,
report.md and plots, built from the agents' metrics rows and final.json files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from edge.counting import cumulative_total
from edge.coverage import expected_mixes, mix_coverage
from edge.faults import describe_outcomes
from edge.sharing import combination
from edge.strategies import get_strategy
from edge.summary import agent_rows, trial_strategy_summary, wire_bytes

if TYPE_CHECKING:
    from edge.trial import TrialRunner


def read_final(path: Path) -> dict | None:
    """An agent's final.json, or None when it did not write one (or it is unreadable)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _counter(rows: list[dict], final: dict | None, key: str, single_run: bool) -> float:
    # The agent's final.json covers its last process; rows carry per-process running totals.
    if final is not None and single_run and isinstance(final.get(key), (int, float)):
        return float(final[key])
    return cumulative_total(float(r.get(key, 0.0)) for r in rows)


def agent_resources(rows: list[dict], final: dict | None, starts: int, rounds: int) -> dict:
    """Per agent: bytes on the wire (total, per round, per branch), CPU, peak RSS, energy."""
    wire = wire_bytes(rows)
    done = len({int(r["round"]) for r in rows})
    single = starts <= 1
    peak_rows = max((float(r.get("rss_mb", 0.0)) for r in rows), default=0.0)
    peak_final = float(final.get("peak_rss_mb", 0.0)) if final else 0.0
    source = (final or {}).get("energy_source") or (rows[-1].get("energy_source") if rows else None)
    per_branch = ((final or {}).get("bytes") or {}).get("per_branch", {})
    return {
        "rounds_completed": done,
        "completed_all": done >= rounds,
        "bytes": {"sent": wire["sent"], "received": wire["received"], "per_branch": per_branch,
                  "sent_per_round": wire["sent"] / done if done else 0.0,
                  "received_per_round": wire["received"] / done if done else 0.0},
        "dense_bytes_per_round": (sum(float(r.get("dense_bytes_published", 0)) for r in rows) / len(rows)
                                  if rows else 0.0),
        "cpu_s": _counter(rows, final, "cpu_s", single),
        "train_s": sum(float(r.get("train_s", 0.0)) for r in rows),
        "peak_rss_mb": max(peak_rows, peak_final),
        "energy_j": _counter(rows, final, "energy_j", single),
        "energy_source": source,
        "wall_s": float(final["wall_s"]) if final and single and "wall_s" in final else None,
        "rejected": (final or {}).get("rejected", {}),
        "final_json": final is not None,
    }


def trial_document(runner: TrialRunner, failed: list[str], exit_code: int) -> dict:
    """The whole summary.json of a trial."""
    from edge.version import software_version

    cfg = runner.cfg
    rows = runner.watch.rows
    rounds = cfg.training.rounds
    strategy = get_strategy(cfg.strategy)
    arch = strategy.arch(cfg.model.arch)
    kinds = {a.id: combination(a.modalities) for a in cfg.agent_specs}
    wall_s = runner.ended_s if runner.ended_s is not None else runner.now_s()
    block = trial_strategy_summary(cfg.strategy, arch, rows, kinds, wall_s)
    by_agent = agent_rows(rows)
    agents_block = {}
    for spec in cfg.agent_specs:
        proc = runner.agents.get(spec.id)
        final = read_final(runner.out / "agents" / spec.id / "final.json")
        res = agent_resources(by_agent.get(spec.id, []), final, proc.starts if proc else 0, rounds)
        res.update({
            "exit": proc.exit_kind.value if proc and proc.starts else "not started",
            "returncode": proc.returncode if proc else None,
            "starts": proc.starts if proc else 0,
            "restarts": runner.restarts.get(spec.id, []),
            "mqtt_metrics_rows": len(runner.monitor.metrics_seen.get(spec.id, ()))
            if runner.monitor else 0,
        })
        for restart in res["restarts"]:
            later = by_agent.get(spec.id, [])[restart["rows_before"]:]
            restart["resumed_at_round"] = int(later[0]["round"]) if later else None
        agents_block[spec.id] = res
    block["agents"] = agents_block
    coverage = mix_coverage(rows, expected_mixes(cfg, cfg.strategy, rounds))
    describe_outcomes(runner.plan.records, by_agent, coverage, rounds)
    return {
        "software_version": software_version(),
        "config": cfg.source,
        "fleet": cfg.fleet,
        "dataset": cfg.data.dataset,
        "seed": cfg.training.seed,
        "agents": {a.id: {"modalities": list(a.modalities), "kind": kinds[a.id], "device": a.device,
                          "n_test": int(by_agent[a.id][-1].get("n_test", 0)) if by_agent.get(a.id) else 0}
                   for a in cfg.agent_specs},
        "strategies": {cfg.strategy: block},
        "trial": {
            "status": runner.status,
            "exit_code": exit_code,
            "reason": runner.reason,
            "strategy": cfg.strategy,
            "rounds_planned": rounds,
            "codec": cfg.comm.codec,
            "topology": cfg.topology.kind,
            "deadline_s": cfg.comm.deadline_s,
            "broker": {"url": runner.url, "kind": "embedded" if runner.embedded else "external"},
            "out": str(runner.out),
            "wall_s": wall_s,
            "timeout_s": runner.timeout_s,
            "stall_timeout_s": runner.stall_timeout_s,
            "failed_agents": [{"agent": a, "exit": runner.agents[a].exit_kind.value,
                               "returncode": runner.agents[a].returncode,
                               "log_tail": runner.agents[a].log_tail(20)} for a in failed],
            "faults": [r.to_dict() for r in runner.plan.records],
            "events": runner.events,
            "mix_coverage": coverage,
            "metrics_rows": len(rows),
            "metrics_rows_over_mqtt": sum(len(v) for v in runner.monitor.metrics_seen.values())
            if runner.monitor else 0,
            "unreadable_metrics_lines": runner.watch.bad_lines,
        },
    }


def write_record(out: Path, doc: dict, rows: list[dict], plots: bool = True,
                 progress: Callable[[str], None] | None = None) -> None:
    """metrics.jsonl, plots, summary.json and report.md in `out`."""
    from edge.report import render_report
    from edge.trial import write_json

    say = progress or (lambda line: None)
    ordered = sorted(rows, key=lambda r: (int(r["round"]), str(r["agent"])))
    with (out / "metrics.jsonl").open("w") as fh:
        for row in ordered:
            fh.write(json.dumps(row, default=float) + "\n")
    doc["trial"]["plots"] = {}
    if plots and rows:
        try:
            from edge.plots import write_plots

            doc["trial"]["plots"] = {k: str(p.relative_to(out)) for k, p in
                                     write_plots(doc, ordered, out / "plots").items()}
        except ImportError as exc:
            doc["trial"]["plots_error"] = f"no plots: {exc} (install the 'report' extra)"
            say(f"[trial] {doc['trial']['plots_error']}")
    write_json(out / "summary.json", doc)
    (out / "report.md").write_text(render_report(doc))
    say(f"[trial] wrote {out / 'summary.json'}, {out / 'report.md'}, {out / 'metrics.jsonl'}"
        + (f" and {len(doc['trial']['plots'])} plots" if doc["trial"]["plots"] else ""))
