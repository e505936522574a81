"""The field-trial runner end to end: real agent processes, real brokers (amqtt and Mosquitto)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml

from edge.config.load import load_config
from edge.trial.faults import FaultPlan
from edge.trial.runner import TrialOptions, run_trial

REPO = Path(__file__).resolve().parents[1]


def write_config(folder: Path, fleet: str, rounds: int = 4, faults: list[dict] | None = None,
                 deadline_s: float = 30.0, model: dict | None = None) -> Path:
    """A small synthetic-pid fleet: 4 agents (a, b, a+b, a+b) on a ring."""
    doc = {
        "fleet": fleet,
        "data": {"dataset": "synthetic-pid",
                 "synthetic": {"modalities": ["a", "b"], "n_samples": 600, "dim": 8,
                               "redundant_bits": 1, "unique_bits": 1, "synergy_bits": 0,
                               "noise": 0.3}},
        "families": {"a": {"kind": "mlp", "hidden": [32], "latent": 12},
                     "b": {"kind": "mlp", "hidden": [32], "latent": 12}},
        "agents": {"count": 4, "multimodal_fraction": 0.5},
        "topology": {"kind": "ring"},
        "training": {"rounds": rounds, "local_epochs": 2, "batch_size": 16, "lr": 0.01, "seed": 0},
        "comm": {"codec": "fp32", "deadline_s": deadline_s},
        "faults": faults or [],
        **({"model": model} if model else {}),
    }
    path = folder / "fleet.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def slow_rounds(ms: float = 500) -> dict:
    """Every agent holds its publish for `ms`: rounds last long enough to act on mid-trial."""
    return {"kind": "delay", "agents": ["a0", "a1", "a2", "a3"], "delay_ms": ms}


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_png(path: Path) -> None:
    import matplotlib.image

    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert float(np.std(pixels[..., :3])) > 0.05, f"{path} looks blank"


def check_record(out: Path, rounds: int, finishers: list[str]) -> dict:
    """summary.json, metrics.jsonl, report.md and plots agree with each other."""
    summary = json.loads((out / "summary.json").read_text())
    rows = read_rows(out / "metrics.jsonl")
    block = summary["strategies"]["parse"]
    for agent in finishers:
        mine = [r for r in rows if r["agent"] == agent]
        assert sorted(r["round"] for r in mine) == list(range(rounds))
        last = max(mine, key=lambda r: r["round"])
        assert block["accuracy"]["per_agent"][agent] == pytest.approx(last["accuracy"])
        # One process per agent here: its running byte counter's last value is its total.
        assert block["bytes_sent"]["per_agent"][agent] == last["bytes_sent"]
        assert block["agents"][agent]["bytes"]["received"] == last["bytes_received"]
        res = block["agents"][agent]
        assert res["cpu_s"] > 0 and res["peak_rss_mb"] > 50
        assert res["energy_j"] > 0 and res["energy_source"].startswith("estimated:")
        # The estimate's breakdown adds up, and its attributable part is compute + radio.
        assert res["idle_j"] + res["compute_j"] + res["radio_j"] == pytest.approx(res["energy_j"])
        assert res["attributable_j"] == pytest.approx(res["compute_j"] + res["radio_j"])
        assert res["compute_j"] > 0 and res["radio_j"] > 0
        assert res["bytes"]["per_branch"], f"{agent}: no per-branch bytes"
        assert res["exit"] == "finished"
        final = json.loads((out / "agents" / agent / "final.json").read_text())
        started, ended = (datetime.fromisoformat(final[k]) for k in ("started_utc", "ended_utc"))
        assert started.utcoffset() == timedelta(0) and started <= ended
        assert all(started <= datetime.fromisoformat(r["time_utc"]) <= ended for r in mine)
        assert final["energy"]["energy_j"] == pytest.approx(res["energy_j"])
        assert isinstance(last["telemetry"], dict) and "time_utc" in last["telemetry"]
    by_kind: dict[str, list[float]] = {}
    for agent, acc in block["accuracy"]["per_agent"].items():
        by_kind.setdefault(summary["agents"][agent]["kind"], []).append(acc)
    for kind, values in by_kind.items():
        assert block["accuracy"]["by_kind"][kind] == pytest.approx(np.mean(values))
    assert block["bytes_sent"]["total"] == sum(block["bytes_sent"]["per_agent"].values())

    report = (out / "report.md").read_text()
    for agent, info in summary["agents"].items():
        assert f"| {agent} | {info['kind']} |" in report
    for kind, acc in block["accuracy"]["by_kind"].items():
        assert f"| {kind} |" in report and f"{acc:.3f}" in report
    for name in ("accuracy.png", "cumulative_mb.png", "energy.png"):
        check_png(out / "plots" / name)
        assert f"(plots/{name})" in report
    return summary


def test_embedded_trial_writes_a_consistent_record_and_matches_simulate(tmp_path: Path,
                                                                         fleet_name: str) -> None:
    # Prepare: slice widths and synergy scopes left to the fleet's PID estimate
    config = write_config(tmp_path, fleet_name, rounds=4,
                          model={"split": "auto", "synergy_scope": "auto"})
    cfg = load_config(config)
    out = tmp_path / "trial"
    lines: list[str] = []
    # Execute
    result = run_trial(cfg, TrialOptions(out=out, config_path=str(config)), progress=lines.append)
    from edge.learning.simulate import simulate_fleet

    simulation = simulate_fleet(cfg, ["parse"], "sliced")
    simulated = simulation["strategies"]["parse"]["accuracy"]["per_agent"]
    # Assert
    assert (result.status, result.exit_code) == ("completed", 0)
    summary = check_record(out, 4, ["a0", "a1", "a2", "a3"])
    # auto was resolved once, before round 0: the record's config holds what the agents ran
    # with, the same values simulate resolved to.
    effective = load_config(out / "config.yaml").model
    assert list(effective.split) == simulation["model"]["split"] == summary["model"]["split"]
    assert effective.synergy_scope == simulation["model"]["synergy_scope"]
    assert simulation["model"]["split_from"] == "auto"
    assert summary["trial"]["broker"]["kind"] == "embedded"
    assert summary["trial"]["mix_coverage"]["overall"] == 1.0  # generous deadline: nothing missed
    networked = summary["strategies"]["parse"]["accuracy"]["per_agent"]
    for agent, acc in simulated.items():
        assert abs(networked[agent] - acc) <= 0.01, (agent, networked[agent], acc)
    # The console said each round once, in the report's numbering, with the report's accuracies.
    history = summary["strategies"]["parse"]["history"]
    shown = [line for line in lines if "] round " in line]
    assert len(shown) == 4 and len(history) == 4
    for line, row in zip(shown, history, strict=True):
        assert f"round {row['round']} of 0-3: 4/4 agents, accuracy {row['overall']:.3f} (" in line
        for kind, acc in row["by_kind"].items():
            assert f"{kind} {acc:.3f}" in line
    assert any("quorum reached (4 of 4 agents)" in line for line in lines)
    startup = summary["trial"]["startup"]
    assert 0 < startup["quorum_s"] <= startup["round0_s"] < 120 and startup["agents_launched"] == 4


def test_cli_trial_on_mosquitto_completes_when_an_agent_leaves(tmp_path: Path, fleet_name: str,
                                                               mosquitto_url: str) -> None:
    # Prepare: a1 leaves at round 2 and never comes back.
    config = write_config(tmp_path, fleet_name, rounds=5, deadline_s=10,
                          faults=[slow_rounds(), {"kind": "leave", "round": 2, "agent": "a1"}])
    out = tmp_path / "trial"
    # Execute
    proc = subprocess.run([sys.executable, "-m", "edge", "trial", str(config), "--broker", mosquitto_url,
                           "--out", str(out)], capture_output=True, text=True, timeout=240, cwd=REPO)
    # Assert
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "round 4 of 0-4: 3/3 agents" in proc.stderr and "leave at round 2" in proc.stderr
    summary = check_record(out, 5, ["a0", "a2", "a3"])
    assert summary["trial"]["broker"] == {"url": mosquitto_url, "kind": "external"}
    a1 = summary["strategies"]["parse"]["agents"]["a1"]
    assert a1["exit"] == "stopped" and 2 <= a1["rounds_completed"] <= 3
    fault = next(f for f in summary["trial"]["faults"] if f["kind"] == "leave")
    assert fault["status"] == "injected" and fault["stopped_after_round"] in (1, 2)
    assert "3/4 agents completed all 5 rounds" in fault["outcome"]
    # Its neighbours stopped mixing it in once it was gone.
    per_round = summary["trial"]["mix_coverage"]["per_sender_round"]["a1"]
    assert per_round["4"] == 0.0 and per_round["1"] == 1.0
    report = (out / "report.md").read_text()
    assert "| leave | round 2, never back | a1 | injected |" in report


def test_killed_agent_resumes_from_its_checkpoint_and_fails_when_out_of_restarts(
        tmp_path: Path, fleet_name: str) -> None:
    # Prepare: a2 is SIGKILLed after its round 1 (the runner restarts it once), then again after
    # the restarted process wrote a round (no restarts left: a failed agent).
    # A short deadline: the restarted agent waits at most that long for neighbours that finished.
    config = write_config(tmp_path, fleet_name, rounds=6, deadline_s=4, faults=[slow_rounds(800)])
    out = tmp_path / "trial"
    rows_file, pid_file = out / "agents" / "a2" / "metrics.jsonl", out / "agents" / "a2" / "agent.pid"
    killed: list[int] = []

    def kill_a2_at(lines: int) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            # Complete lines only: the agent may be halfway through appending one.
            if rows_file.exists() and rows_file.read_bytes().count(b"\n") >= lines:
                pid = int(pid_file.read_text())
                if pid not in killed:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=lambda: (kill_a2_at(2), kill_a2_at(3)), daemon=True)
    # Execute
    killer.start()
    result = run_trial(load_config(config), TrialOptions(out=out, config_path=str(config), max_restarts=1))
    killer.join(5)
    # Assert
    assert len(killed) == 2, "a2 was not killed twice"
    assert (result.status, result.exit_code, result.failed_agents) == ("failed", 1, ["a2"])
    summary = check_record(out, 6, ["a0", "a1", "a3"])
    a2 = summary["strategies"]["parse"]["agents"]["a2"]
    assert a2["starts"] == 2 and a2["exit"] == "killed" and a2["returncode"] == -signal.SIGKILL
    restart = a2["restarts"][0]
    assert restart["signal"] == signal.SIGKILL and restart["after_round"] >= 1
    # It rejoined from its checkpoint at its neighbours' next round, not from round 0, and
    # mixed their updates in its first round back (it did not train alone).
    rows = read_rows(rows_file)
    rounds = [r["round"] for r in rows]
    assert rounds == sorted(set(rounds)) and 3 <= len(rounds) < 6
    back = next(r for r in rows if r["round"] == restart["resumed_at_round"])
    assert restart["resumed_at_round"] > restart["after_round"] and back["mixed_from"]
    assert a2["rounds_missed"] == [r for r in range(6) if r not in rounds]
    assert "restart 1 (killed by signal 9)" in (out / "agents" / "a2" / "agent.log").read_text()
    # Its counters carried on from the checkpoint: bytes, CPU, wall, energy never went back,
    # and the rows after the restart say it was one; every row is time-stamped (UTC).
    before = [r for r in rows if r["round"] <= restart["after_round"]]
    after = [r for r in rows if r["round"] >= restart["resumed_at_round"]]
    assert before and after and after[0]["restarts"] == 1 and before[-1]["restarts"] == 0
    for key in ("bytes_sent", "bytes_received", "cpu_s", "elapsed_s", "energy_j", "idle_j",
                "attributable_j"):
        values = [r[key] for r in rows]
        assert values == sorted(values), (key, values)
        assert after[0][key] >= before[-1][key]
    assert after[0]["bytes_sent"] > before[-1]["bytes_sent"]
    for row in rows:
        assert datetime.fromisoformat(row["time_utc"]).utcoffset() == timedelta(0)
    stamps = [datetime.fromisoformat(r["time_utc"]) for r in rows]
    assert stamps == sorted(stamps)
    report = (out / "report.md").read_text()
    assert "| a2 |" in report.split("restarted:")[1]
    # The failure: named, with its last log lines, in the report and on the record.
    failed = summary["trial"]["failed_agents"]
    assert [f["agent"] for f in failed] == ["a2"] and failed[0]["log_tail"]
    assert "### a2 (killed, exit status -9)" in report
    assert failed[0]["log_tail"][-1] in report


def test_returning_agent_joins_at_the_fleets_round_and_its_missed_rounds_are_counted(
        tmp_path: Path, fleet_name: str) -> None:
    # Prepare: a3 leaves at round 1 and returns at round 3; the broker restarts at round 5.
    config = write_config(tmp_path, fleet_name, rounds=7, deadline_s=3, faults=[
        slow_rounds(), {"kind": "leave", "round": 1, "agent": "a3", "return_round": 3},
        {"kind": "broker-restart", "round": 5}])
    out = tmp_path / "trial"
    lines: list[str] = []
    # Execute
    result = run_trial(load_config(config), TrialOptions(out=out, config_path=str(config)),
                       progress=lines.append)
    # Assert
    assert (result.status, result.exit_code) == ("completed", 0), result.summary["trial"]["events"]
    summary = check_record(out, 7, ["a0", "a1", "a2"])
    leave, restart = [f for f in summary["trial"]["faults"] if f["kind"] != "delay"]
    assert leave["status"] == "injected" and leave["returned_at_s"] > leave["injected_at_s"]
    assert leave["stopped_after_round"] == 0
    # It came back at the fleet's round (3, or later if its start-up outlasted a round), not at
    # its own: the rounds in between were missed, not trained alone.
    rows = read_rows(out / "agents" / "a3" / "metrics.jsonl")
    joined = leave["resumed_at_round"]
    assert 3 <= joined <= 5 and [r["round"] for r in rows] == [0, *range(joined, 7)]
    first_back = rows[1]
    assert first_back["mixed_from"] and first_back["wait_s"] > 0  # it mixed its neighbours' updates
    final = json.loads((out / "agents" / "a3" / "final.json").read_text())
    assert final["first_round"] == joined and final["missed_rounds"] == list(range(1, joined))
    a3 = summary["strategies"]["parse"]["agents"]["a3"]
    assert a3["rounds_trained"] == 7 - joined + 1 and a3["rounds_missed"] == list(range(1, joined))
    # Never alone for being back; round 6 mixes the updates in flight through the broker restart
    # (at round 5), which may all be lost.
    assert set(a3["rounds_alone"]) <= {6} and joined not in a3["rounds_alone"]
    missed = "1" if joined == 2 else f"1-{joined - 1}"
    report = (out / "report.md").read_text()
    alone = f"{len(a3['rounds_alone'])} (6)" if a3["rounds_alone"] else "0"
    assert f"| a3 | a+b | x86 | {8 - joined} | {joined - 1} ({missed}) | {alone} |" in report
    assert f"joined at round {joined}; {8 - joined}/7 rounds trained, {joined - 1} missed" in leave["outcome"]
    assert restart["status"] == "injected" and "broker down" in restart["note"]
    # The console told it: a3 offline, back, where it joined; the broker down and up again.
    text = "\n".join(lines)
    assert "offline: a3: offline (it was in round" in text
    assert "online: a3: back online" in text and f"joined: a3: joins at round {joined}" in text
    assert "broker: broker down (restart fault)" in text and "broker: broker up again after" in text
    # ... and so did its neighbours (a ring: a0 and a2) in their own logs.
    for neighbour in ("a0", "a2"):
        log = (out / "agents" / neighbour / "agent.log").read_text()
        assert "neighbour a3 offline" in log and "neighbour a3 back online" in log, log
        assert f"neighbour a3 joins at round {joined}" in log


def test_ctrl_c_stops_every_agent_and_still_writes_the_record(tmp_path: Path, fleet_name: str) -> None:
    # Prepare: rounds slow enough that the trial is still running when Ctrl-C comes.
    config = write_config(tmp_path, fleet_name, rounds=8, faults=[slow_rounds(1500)])
    out = tmp_path / "trial"
    runner = subprocess.Popen([sys.executable, "-m", "edge", "trial", str(config), "--out", str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    rows_file = out / "agents" / "a0" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (rows_file.exists() and rows_file.read_bytes().count(b"\n") >= 1):
        assert time.monotonic() < deadline and runner.poll() is None, "no round was reported"
        time.sleep(0.05)
    pids = [int((out / "agents" / a / "agent.pid").read_text()) for a in ("a0", "a1", "a2", "a3")]
    # Execute
    runner.send_signal(signal.SIGINT)
    _, stderr = runner.communicate(timeout=60)
    # Assert
    assert runner.returncode == 130, stderr[-2000:]
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trial"]["status"] == "interrupted"
    assert all(a["exit"] == "stopped" for a in summary["strategies"]["parse"]["agents"].values())
    rows = read_rows(out / "metrics.jsonl")
    assert rows and len(rows) == summary["trial"]["metrics_rows"] < 4 * 8
    assert "**interrupted**" in (out / "report.md").read_text()


def test_fault_plan_triggers_on_reported_rounds(tmp_path: Path, fleet_name: str) -> None:
    # Prepare
    config = write_config(tmp_path, fleet_name, rounds=6, faults=[
        {"kind": "leave", "round": 2, "agent": "a1", "return_round": 4},
        {"kind": "broker-restart", "round": 3}, {"kind": "leave", "round": 0, "agent": "a2"}])
    cfg = load_config(config)
    plan = FaultPlan(cfg.faults, embedded_broker=True)
    external = FaultPlan(cfg.faults, embedded_broker=False)
    # Execute / Assert: a1 leaves once it reported round 1, not before.
    assert plan.held_back() == {"a2"}
    assert plan.due({"a0": 1, "a1": 0, "a2": -1, "a3": 0}) == []
    due = plan.due({"a0": 2, "a1": 1, "a2": -1, "a3": 1})
    assert [(a.verb, a.agent) for a in due] == [("stop", "a1"), ("broker-restart", None)]
    plan.mark_injected(0, 1.0, "a1 reported round 1")
    plan.mark_injected(1, 1.0, "an agent reported round 2")
    # Its return waits for another agent to finish round 2: the fleet enters round 3, and a1,
    # started a round ahead, can join at round 4 (its neighbours' next round).
    assert plan.due({"a0": 1, "a1": 1, "a2": -1, "a3": 1}) == []
    assert [(a.verb, a.agent) for a in plan.due({"a0": 2, "a1": 1, "a2": -1, "a3": 1})] == [("start", "a1")]
    assert plan.pending_returns() == [0]
    plan.mark_returned(0, 2.0, "a0 reported round 3")
    assert plan.due({"a0": 5, "a1": 5, "a2": -1, "a3": 5}) == [] and plan.pending_returns() == []
    assert external.records[1].status == "skipped"


def test_out_folder_of_an_earlier_trial_is_refused_unless_forced_and_a_foreign_one_always(
        tmp_path: Path) -> None:
    # Prepare: an earlier trial's record (a checkpoint would make the agent resume, not start).
    from edge.errors import UserError
    from edge.trial.setup import prepare_out

    old = tmp_path / "agents" / "a0"
    old.mkdir(parents=True)
    (old / "checkpoint.pt").write_bytes(b"old")
    (tmp_path / "summary.json").write_text("{}")
    (tmp_path / "plots").mkdir()
    # Execute / Assert: not overwritten without --force ...
    with pytest.raises(UserError, match=r"summary\.json, agents/a0: the record of an earlier trial"):
        prepare_out(tmp_path)
    assert (old / "checkpoint.pt").read_bytes() == b"old"
    # ... and cleared with it.
    prepare_out(tmp_path, force=True)
    assert [p.name for p in tmp_path.rglob("*")] == ["agents"]
    (tmp_path / "agents" / "notes").mkdir()
    (tmp_path / "agents" / "notes" / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="not an agent folder"):
        prepare_out(tmp_path, force=True)
    assert (tmp_path / "agents" / "notes" / "mine.txt").read_text() == "keep me"
