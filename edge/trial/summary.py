"""A trial's record: summary.json, metrics.jsonl, report.md and plots.

summary.json has simulate's schema plus what the network measured; all of it is built from the
agents' metrics rows and final.json files.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edge.config.schema import FleetConfig
from edge.learning.sharing import combination
from edge.learning.strategies import get_strategy
from edge.records import AgentInfo, MetricsRow, SummaryDoc
from edge.summary import agent_rows, cumulative_total, fleet_header, round_span, strategy_block, wire_bytes
from edge.trial.coverage import Expected, expected_mixes, mix_coverage
from edge.trial.faults import FaultRecord, describe_outcomes
from edge.trial.host import emulated_devices, host_facts
from edge.trial.report import render_report
from edge.trial.setup import write_json


def read_final(path: Path) -> dict[str, Any] | None:
    """Read an agent's final.json; None when it did not write one (or it is unreadable)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _counter(rows: list[MetricsRow], final: dict[str, Any] | None,
             key: Literal["cpu_s", "energy_j", "idle_j", "compute_j", "radio_j", "attributable_j"]
             ) -> float:
    # final.json and the rows carry the agent's running totals over all its processes (a
    # restarted agent carries them on from its checkpoint); final.json is the later reading.
    # cumulative_total also adds up records of versions whose counters restarted at zero.
    energy = (final or {}).get("energy") or {}
    value = (final or {}).get(key, energy.get(key))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return cumulative_total(float(r.get(key, 0.0)) for r in rows)


def _peak(rows: list[MetricsRow], final: dict[str, Any] | None,
          row_key: Literal["rss_mb", "uss_mib", "pss_mib"], final_key: str) -> float:
    peak_rows = max((float(r.get(row_key, 0.0)) for r in rows), default=0.0)
    peak_final = float(final.get(final_key, 0.0) or 0.0) if final else 0.0
    return max(peak_rows, peak_final)


def round_participation(rows: list[MetricsRow], rounds: int,
                        expected: Expected) -> dict[str, list[int]]:
    """Sort an agent's rounds into trained, missed and trained alone.

    Missed: not trained (away, or skipped to rejoin the fleet). Alone: it expected neighbours'
    updates and mixed none.
    """
    by_round = {int(r["round"]): r for r in rows}
    trained = sorted(by_round)
    alone = [r for r, row in sorted(by_round.items())
             if r > 0 and expected.get((row["agent"], r)) and not row["mixed_from"]]
    return {"trained": trained, "missed": [r for r in range(rounds) if r not in by_round],
            "alone": alone}


def agent_resources(rows: list[MetricsRow], final: dict[str, Any] | None, starts: int,
                    rounds: int) -> dict[str, Any]:
    """Sum up one agent's resources: traffic, CPU, peak memory and energy.

    Bytes on the wire (total, per round, per branch), CPU seconds, peak RSS / USS / PSS (MiB),
    energy (J).
    """
    wire = wire_bytes(rows)
    done = len({int(r["round"]) for r in rows})
    single = starts <= 1
    source = (final or {}).get("energy_source") or (rows[-1].get("energy_source") if rows else None)
    per_branch = ((final or {}).get("bytes") or {}).get("per_branch", {})
    # The encoded update: what one round's publish of all its branches costs on the wire. The
    # last round publishes nothing (nobody mixes after it).
    published = len({int(r["round"]) for r in rows if int(r["round"]) < rounds - 1})
    branch_sent = sum(float((b or {}).get("sent_bytes", 0)) for b in per_branch.values())
    update_bytes = branch_sent / published if published and single and branch_sent else None
    wire_per_round = (wire["sent"] + wire["received"]) / done if done else 0.0
    energy_j = _counter(rows, final, "energy_j")
    return {
        "rounds_completed": done,
        "completed_all": done >= rounds,
        "bytes": {"sent": wire["sent"], "received": wire["received"], "per_branch": per_branch,
                  "sent_per_round": wire["sent"] / done if done else 0.0,
                  "received_per_round": wire["received"] / done if done else 0.0,
                  "wire_per_round": wire_per_round, "update_bytes": update_bytes,
                  "wire_per_round_over_update": wire_per_round / update_bytes if update_bytes else None},
        "dense_bytes_per_round": (sum(float(r.get("dense_bytes_published", 0)) for r in rows) / len(rows)
                                  if rows else 0.0),
        "cpu_s": _counter(rows, final, "cpu_s"),
        "train_s": sum(float(r.get("train_s", 0.0)) for r in rows),
        "peak_rss_mb": _peak(rows, final, "rss_mb", "peak_rss_mb"),
        "peak_uss_mib": _peak(rows, final, "uss_mib", "peak_uss_mib"),
        "peak_pss_mib": _peak(rows, final, "pss_mib", "peak_pss_mib"),
        "energy_j": energy_j,
        "energy_source": source,
        # The estimate's breakdown (devices.estimate): idle baseline, compute, radio, and the
        # attributable part (compute + radio) that compares across run lengths and host load.
        "idle_j": _counter(rows, final, "idle_j"),
        "compute_j": _counter(rows, final, "compute_j"),
        "radio_j": _counter(rows, final, "radio_j"),
        "attributable_j": _counter(rows, final, "attributable_j"),
        "energy_j_per_round": energy_j / done if done else None,
        "energy_j_per_mb_sent": energy_j / (wire["sent"] / 1e6) if wire["sent"] else None,
        "restarts_counted": max((int(r.get("restarts", 0)) for r in rows), default=0),
        "wall_s": float(final["wall_s"]) if final and single and "wall_s" in final else None,
        "rejected": (final or {}).get("rejected", {}),
        "final_json": final is not None,
    }


@dataclass
class AgentFacts:
    """What the runner knows about one agent's processes."""

    exit: str = "not started"          # an ExitKind value, or "not started"
    returncode: int | None = None
    starts: int = 0
    restarts: list[dict[str, Any]] = field(default_factory=list)
    log_tail: list[str] = field(default_factory=list)
    mqtt_metrics_rows: int = 0


@dataclass
class TrialFacts:
    """Everything a trial's record is built from."""

    cfg: FleetConfig
    out: Path
    rows: list[MetricsRow]
    status: str
    exit_code: int
    broker_url: str
    embedded: bool
    wall_s: float
    agents: dict[str, AgentFacts]
    failed: list[str] = field(default_factory=list)
    reason: str = ""
    timeout_s: float = 0.0
    stall_timeout_s: float = 0.0
    events: list[dict[str, Any]] = field(default_factory=list)
    faults: list[FaultRecord] = field(default_factory=list)
    bad_lines: int = 0
    started_utc: str = ""
    startup: dict[str, Any] = field(default_factory=dict)
    quorum: int = 0
    # signed, run_id, login (operator | none), tls, runner_rejected: see TrialRunner._security
    security: dict[str, Any] = field(default_factory=dict)


def trial_document(facts: TrialFacts) -> SummaryDoc:
    """Build the whole summary.json of a trial."""
    cfg, rows = facts.cfg, facts.rows
    rounds = cfg.training.rounds
    arch = get_strategy(cfg.strategy).arch(cfg.model.arch)
    block = strategy_block(cfg.strategy, arch, rows, facts.wall_s)
    block["codec"] = cfg.comm.codec
    by_agent = agent_rows(rows)
    expected = expected_mixes(cfg, cfg.strategy, rounds)
    agents_block = {}
    for spec in cfg.agent_specs:
        known = facts.agents.get(spec.id, AgentFacts())
        final = read_final(facts.out / "agents" / spec.id / "final.json")
        res = agent_resources(by_agent.get(spec.id, []), final, known.starts, rounds)
        restarts = [dict(r) for r in known.restarts]
        for restart in restarts:
            later = by_agent.get(spec.id, [])[restart["rows_before"]:]
            restart["resumed_at_round"] = int(later[0]["round"]) if later else None
        rounds_of = round_participation(by_agent.get(spec.id, []), rounds, expected)
        res.update({"exit": known.exit, "returncode": known.returncode, "starts": known.starts,
                    "restarts": restarts, "mqtt_metrics_rows": known.mqtt_metrics_rows,
                    "rounds_trained": len(rounds_of["trained"]), "rounds_missed": rounds_of["missed"],
                    "rounds_alone": rounds_of["alone"]})
        agents_block[spec.id] = res
    block["agents"] = agents_block
    coverage = mix_coverage(rows, expected)
    describe_outcomes(facts.faults, by_agent, coverage, rounds)
    agents: dict[str, AgentInfo] = {
        a.id: {"modalities": list(a.modalities), "kind": combination(a.modalities),
               "device": a.device,
               "n_test": int(by_agent[a.id][-1]["n_test"]) if by_agent.get(a.id) else 0}
        for a in cfg.agent_specs}
    doc = fleet_header(cfg, agents, {cfg.strategy: block})
    host = host_facts()
    doc["trial"] = {
        "started_utc": facts.started_utc,
        "host": host,
        "emulated_devices": emulated_devices([a.device for a in cfg.agent_specs], host),
        "round_numbering": f"0-based round index, rounds {round_span(rounds)} (as in metrics.jsonl)",
        "launcher": facts.startup.get("launcher", ""),
        "quorum": facts.quorum,
        "startup": facts.startup,
        "status": facts.status,
        "exit_code": facts.exit_code,
        "reason": facts.reason,
        "strategy": cfg.strategy,
        "rounds_planned": rounds,
        "codec": cfg.comm.codec,
        "topology": cfg.topology.kind,
        "deadline_s": cfg.comm.deadline_s,
        "broker": {"url": facts.broker_url, "kind": "embedded" if facts.embedded else "external"},
        "out": str(facts.out),
        "wall_s": facts.wall_s,
        "timeout_s": facts.timeout_s,
        "stall_timeout_s": facts.stall_timeout_s,
        "failed_agents": [{"agent": a, "exit": facts.agents[a].exit,
                           "returncode": facts.agents[a].returncode,
                           "log_tail": facts.agents[a].log_tail} for a in facts.failed],
        "faults": [r.to_dict() for r in facts.faults],
        "events": facts.events,
        "mix_coverage": coverage,
        "security": facts.security,
        "metrics_rows": len(rows),
        "metrics_rows_over_mqtt": sum(a.mqtt_metrics_rows for a in facts.agents.values()),
        "unreadable_metrics_lines": facts.bad_lines,
    }
    return doc


def write_record(out: Path, doc: SummaryDoc, rows: list[MetricsRow], plots: bool = True,
                 progress: Callable[[str], None] | None = None) -> None:
    """metrics.jsonl, plots, summary.json and report.md in `out`."""
    say = progress or (lambda line: None)
    ordered = sorted(rows, key=lambda r: (int(r["round"]), str(r["agent"])))
    with (out / "metrics.jsonl").open("w") as fh:
        for row in ordered:
            fh.write(json.dumps(row, default=float) + "\n")
    doc["trial"]["plots"] = {}
    if plots and rows:
        try:
            from edge.trial.plots import write_plots

            doc["trial"]["plots"] = {k: str(p.relative_to(out)) for k, p in
                                     write_plots(doc, ordered, out / "plots").items()}
        except ImportError as exc:
            doc["trial"]["plots_error"] = f"no plots: {exc} (install the 'report' extra)"
            say(f"[trial] {doc['trial']['plots_error']}")
    write_json(out / "summary.json", doc)
    (out / "report.md").write_text(render_report(doc))
    say(f"[trial] wrote {out / 'summary.json'}, {out / 'report.md'}, {out / 'metrics.jsonl'}"
        + (f" and {len(doc['trial']['plots'])} plots" if doc["trial"]["plots"] else ""))
