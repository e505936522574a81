"""A trial's record from generated metrics rows: summary numbers, mix coverage, report.md, plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from edge.config.load import load_config
from edge.config.schema import FleetConfig
from edge.learning.sharing import combination
from edge.summary import cumulative_total
from edge.trial.coverage import expected_mixes, mix_coverage
from edge.trial.faults import FaultPlan
from edge.trial.report import render_report
from edge.trial.summary import AgentFacts, TrialFacts, trial_document, write_record

ROUNDS = 5


def fleet_config(folder: Path) -> FleetConfig:
    """4 agents (a, b, a+b, a+b) on a ring; a3 leaves at round 2 and never returns."""
    doc = {
        "fleet": "report-test",
        "data": {"dataset": "synthetic-pid", "synthetic": {"modalities": ["a", "b"], "n_samples": 200}},
        "agents": {"count": 4, "multimodal_fraction": 0.5, "device": "rpi4"},
        "topology": {"kind": "ring"},
        "training": {"rounds": ROUNDS},
        "faults": [{"kind": "leave", "round": 2, "agent": "a3"},
                   {"kind": "loss", "agents": ["a1"], "loss_percent": 50}],
    }
    path = folder / "fleet.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_config(path)


def generate_rows(cfg: FleetConfig, restart_after: dict[str, int], gone_from: dict[str, int],
                  lost: dict[tuple[str, int], str], seed: int = 0) -> tuple[list[dict], dict]:
    """Rows as agents write them (running byte/CPU/energy counters per process, reset when a
    process restarts), plus the per-agent truths the rows were generated from."""
    rng = np.random.default_rng(seed)
    expected = expected_mixes(cfg, "parse", ROUNDS)
    rows, truth = [], {}
    for i, spec in enumerate(cfg.agent_specs):
        agent = spec.id
        sent_step, recv_step = 1000 + 100 * i, 2500 + 10 * i
        running = {"bytes_sent": 0, "bytes_received": 0, "cpu_s": 0.0, "energy_j": 0.0}
        totals = dict.fromkeys(running, 0.0)
        last_round = gone_from.get(agent, ROUNDS) - 1
        for round_idx in range(last_round + 1):
            for key, step in (("bytes_sent", sent_step), ("bytes_received", recv_step),
                              ("cpu_s", 0.5), ("energy_j", 2.0)):
                running[key] += step
                totals[key] += step
            mixed = {}
            for key, senders in expected.get((agent, round_idx), {}).items():
                used = [s for s in senders if gone_from.get(s, ROUNDS) >= round_idx
                        and lost.get((agent, round_idx)) != s]
                if used:
                    mixed[key] = used
            rows.append({
                "agent": agent, "kind": combination(spec.modalities), "round": round_idx,
                "rounds": ROUNDS, "accuracy": float(rng.uniform(0.3, 0.9)),
                "head_accuracy": {"R": float(rng.uniform(0.2, 0.8))}, "n_test": 40,
                "train_s": 0.1, "round_s": 0.2, "wait_s": 0.01, "mixed_from": mixed,
                "bytes_sent": running["bytes_sent"], "bytes_received": running["bytes_received"],
                "dense_bytes_published": 900, "cpu_s": running["cpu_s"], "rss_mb": 200.0 + i,
                "energy_j": running["energy_j"], "energy_source": "estimated:rpi4"})
            if restart_after.get(agent) == round_idx:
                running = dict.fromkeys(running, 0)
        truth[agent] = totals
    return rows, truth


def build(tmp_path: Path) -> tuple[dict, list[dict], dict]:
    cfg = fleet_config(tmp_path)
    rows, truth = generate_rows(cfg, restart_after={"a0": 1}, gone_from={"a3": 2},
                                lost={("a0", 3): "a1", ("a2", 3): "a1"})
    plan = FaultPlan(cfg.faults, embedded_broker=True)
    plan.records[0].stopped_after_round = 1
    plan.mark_injected(0, 3.0, "a3 reported round 1")
    agents = {a.id: AgentFacts(exit="finished", returncode=0, starts=1) for a in cfg.agent_specs}
    agents["a0"] = AgentFacts(exit="finished", returncode=0, starts=2, restarts=[
        {"t_s": 2.5, "signal": 9, "after_round": 1, "rows_before": 2}])
    agents["a3"] = AgentFacts(exit="stopped", returncode=130, starts=1)
    agents["a2"] = AgentFacts(exit="failed", returncode=1, starts=1,
                              log_tail=["Traceback (most recent call last):", "RuntimeError: boom"])
    out = tmp_path / "trial"
    (out / "agents").mkdir(parents=True)
    facts = TrialFacts(cfg=cfg, out=out, rows=rows, status="failed", exit_code=1,
                       broker_url="mqtt://127.0.0.1:1883", embedded=False, wall_s=12.5,
                       agents=agents, failed=["a2"], faults=plan.records)
    return trial_document(facts), rows, truth


def test_cumulative_total_adds_each_process_run() -> None:
    # Prepare: a counter that restarted twice (10 -> 0, 7 -> 0).
    values = [3, 10, 2, 7, 1, 4]
    # Execute / Assert
    assert cumulative_total(values) == 10 + 7 + 4
    assert cumulative_total([]) == 0


def test_summary_numbers_come_from_the_rows(tmp_path: Path) -> None:
    # Prepare / Execute
    doc, rows, truth = build(tmp_path)
    block = doc["strategies"]["parse"]
    # Assert: bytes, CPU and energy add up across a0's restart.
    for agent, totals in truth.items():
        res = block["agents"][agent]
        assert res["bytes"]["sent"] == totals["bytes_sent"]
        assert res["bytes"]["received"] == totals["bytes_received"]
        assert res["cpu_s"] == pytest.approx(totals["cpu_s"])
        assert res["energy_j"] == pytest.approx(totals["energy_j"])
    assert block["bytes_sent"]["total"] == sum(t["bytes_sent"] for t in truth.values())
    # After round 0: the rest of the total over the other rounds (every agent sent one step in
    # round 0, so the steady rate is total minus those steps over ROUNDS - 1).
    round_0 = sum(1000 + 100 * i for i in range(len(truth)))
    assert block["bytes_sent"]["per_round_after_0"] == pytest.approx(
        (block["bytes_sent"]["total"] - round_0) / (ROUNDS - 1))
    # Accuracy: each agent's last round, a3 included with the model it left with.
    for agent in truth:
        last = max((r for r in rows if r["agent"] == agent), key=lambda r: r["round"])
        assert block["accuracy"]["per_agent"][agent] == last["accuracy"]
    assert block["rounds_completed"] == {"a0": 5, "a1": 5, "a2": 5, "a3": 2}
    assert block["accuracy"]["by_kind"]["a+b"] == pytest.approx(
        np.mean([block["accuracy"]["per_agent"][a] for a in ("a2", "a3")]))
    assert doc["strategies"]["parse"]["agents"]["a0"]["restarts"][0]["resumed_at_round"] == 2


def test_mix_coverage_counts_what_was_mixed(tmp_path: Path) -> None:
    # Prepare
    doc, rows, _ = build(tmp_path)
    cfg = fleet_config(tmp_path)
    expected = expected_mixes(cfg, "parse", ROUNDS)
    # Execute
    coverage = mix_coverage(rows, expected)
    # Assert: count the expected contributions directly from the generated rows.
    want = got = 0
    for row in rows:
        for key, senders in expected.get((row["agent"], row["round"]), {}).items():
            want += len(senders)
            got += len(set(senders) & set(row["mixed_from"].get(key, [])))
    assert coverage["expected"] == want and coverage["mixed"] == got and got < want
    assert coverage["per_sender_round"]["a3"][4] == 0.0  # gone since round 2
    assert coverage["per_sender_round"]["a3"][1] == 1.0
    assert coverage["per_sender"]["a1"] < 1.0 == coverage["per_sender"]["a2"]
    assert doc["trial"]["mix_coverage"]["mixed"] == got


def test_report_names_agents_kinds_faults_and_failures(tmp_path: Path) -> None:
    # Prepare
    doc, _, _ = build(tmp_path)
    # Execute
    report = render_report(doc)
    # Assert
    assert report.startswith("# Field trial: report-test")
    assert "**failed** after 12.5 s (exit status 1)" in report
    for agent, info in doc["agents"].items():
        assert f"| {agent} | {info['kind']} | rpi4 |" in report
    for kind, acc in doc["strategies"]["parse"]["accuracy"]["by_kind"].items():
        assert f"| {kind} |" in report and f"{acc:.3f}" in report
    leave = doc["trial"]["faults"][0]
    assert "a3 stopped after its round 1" in leave["outcome"]
    assert "0% of the expected slots while it was away (100% before)" in leave["outcome"]
    assert "3/4 agents completed all 5 rounds" in leave["outcome"]
    assert "| leave | round 2, never back | a3 | injected |" in report
    assert "50% loss on a1" in report
    assert "### a2 (failed, exit status 1)" in report and "RuntimeError: boom" in report
    assert "| a0 | 2.5 | 9 | 1 | 2 |" in report  # the restart, and where it resumed
    assert "estimated:rpi4" in report
    later = doc["strategies"]["parse"]["bytes_sent"]["per_round_after_0"]
    assert f"; {later / 1e6:.3f} MB per round after round 0, which also carries" in report


def test_record_files_and_plots(tmp_path: Path) -> None:
    # Prepare
    import matplotlib.image

    doc, rows, _ = build(tmp_path)
    out = Path(doc["trial"]["out"])
    # Execute
    write_record(out, doc, rows)
    # Assert
    written = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(written) == len(rows)
    assert [(r["round"], r["agent"]) for r in written] == sorted((r["round"], r["agent"]) for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trial"]["plots"] == {"accuracy": "plots/accuracy.png",
                                         "bytes": "plots/cumulative_mb.png", "energy": "plots/energy.png"}
    for path in summary["trial"]["plots"].values():
        pixels = matplotlib.image.imread(out / path)
        assert pixels.shape[0] > 100 and float(np.std(pixels[..., :3])) > 0.05
        assert f"]({path})" in (out / "report.md").read_text()
