"""The in-process simulator and the simulate CLI: learning happens, runs are reproducible."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from edge.cli import main
from edge.config.load import parse_config
from edge.learning.simulate import simulate_fleet

SMALL = {
    "fleet": "sim-test",
    "data": {"dataset": "synthetic-pid",
             "synthetic": {"n_samples": 1200, "dim": 8, "noise": 0.3}},
    "families": {"a": {"hidden": [32], "latent": 24}, "b": {"hidden": [32], "latent": 24}},
    "agents": {"counts": {"a": 2, "b": 2, "a+b": 2}},
    "topology": {"kind": "chordal-ring", "chords": [1, 2]},
    "training": {"rounds": 6, "local_epochs": 2, "batch_size": 32, "lr": 0.005, "seed": 3},
}


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _strip_wall(summary: dict) -> dict:
    for block in summary["strategies"].values():
        block.pop("wall_s")
    return summary


def test_a_few_rounds_on_synthetic_pid_beat_chance_clearly() -> None:
    # Prepare: 16 classes (4 label bits); chance is 1/16. Unimodal agents see 2 of the 4 bits,
    # so their ceiling is 1/4; multimodal agents see all of them.
    cfg = parse_config(SMALL, "inline")
    # Execute
    block = simulate_fleet(cfg, ["parse"], "sliced")["strategies"]["parse"]
    # Assert
    acc = block["accuracy"]
    assert acc["overall"] > 3 / 16
    assert acc["by_kind"]["a+b"] > 0.45
    assert acc["by_kind"]["a"] > 0.15 and acc["by_kind"]["b"] > 0.15
    assert block["history"][-1]["overall"] > block["history"][0]["overall"]
    assert set(block["per_head"]) == {"R", "U/a", "U/b", "S/a+b"}


def test_identical_seeds_give_identical_summaries_and_other_seeds_differ() -> None:
    # Prepare
    cfg = parse_config({**SMALL, "training": {**SMALL["training"], "rounds": 2}}, "inline")
    # Execute
    first = _strip_wall(simulate_fleet(cfg, ["parse", "dsgd-task"], "sliced"))
    second = _strip_wall(simulate_fleet(cfg, ["parse", "dsgd-task"], "sliced"))
    other = _strip_wall(simulate_fleet(cfg, ["parse", "dsgd-task"], "sliced", seed=4))
    # Assert
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    assert first["strategies"]["parse"]["accuracy"] != other["strategies"]["parse"]["accuracy"]


def test_bytes_dense_is_fp32_of_the_published_branches_and_bytes_sent_what_was_encoded() -> None:
    # Prepare
    cfg = parse_config({**SMALL, "training": {**SMALL["training"], "rounds": 2}}, "inline")
    # Execute
    blocks = simulate_fleet(cfg, ["parse", "local", "monolithic"], "sliced")["strategies"]
    # Assert
    assert blocks["local"]["bytes_dense"]["total"] == blocks["local"]["bytes_sent"]["total"] == 0
    assert 0 < blocks["parse"]["bytes_dense"]["per_round"] < blocks["monolithic"]["bytes_dense"]["per_round"]
    assert blocks["parse"]["bytes_dense"]["total"] % 4 == 0
    # fp32 on the wire: the dense floats plus our header per message
    assert blocks["parse"]["bytes_sent"]["total"] > blocks["parse"]["bytes_dense"]["total"]
    # Only round 0 publishes: nobody mixes what is published after the last round.
    history = blocks["parse"]["history"]
    assert history[0]["dense_bytes"] > 0 and history[1]["dense_bytes"] == 0


def test_cli_runs_all_strategies_on_the_plain_arch_and_writes_summary(tmp_path: Path) -> None:
    # Prepare
    config = _write(tmp_path, {**SMALL, "training": {**SMALL["training"], "rounds": 1}})
    out = tmp_path / "out"
    # Execute
    code = main(["simulate", str(config), "--strategy", "all", "--arch", "plain", "--quiet",
                 "--out", str(out)])
    # Assert
    summary = json.loads((out / "summary.json").read_text())
    assert code == 0
    assert set(summary["strategies"]) == {"local", "dsgd-task", "dsgd-modality", "dsgd-hybrid",
                                          "monolithic", "centralized"}
    assert all(b["arch"] in ("plain", "shared") for b in summary["strategies"].values())
    for block in summary["strategies"].values():
        assert set(block["accuracy"]["by_kind"]) == {"a", "b", "a+b"}
        assert len(block["accuracy"]["per_agent"]) == 6


def test_save_checkpoints_writes_one_per_agent(tmp_path: Path) -> None:
    # Prepare
    config = _write(tmp_path, {**SMALL, "training": {**SMALL["training"], "rounds": 1}})
    # Execute
    code = main(["simulate", str(config), "--quiet", "--save-checkpoints", "--out", str(tmp_path)])
    # Assert
    assert code == 0
    assert sorted(p.parent.name for p in tmp_path.glob("agents/*/checkpoint.pt")) == \
        [f"a{i}" for i in range(6)]


@pytest.mark.parametrize(("argv", "message"), [
    (["--strategy", "fedavg"], "error: --strategy: unknown strategy 'fedavg'; expected one of"),
    (["--strategy", "parse", "--arch", "plain"], "error: --arch: parse needs the sliced"),
    (["--rounds", "0"], "error: --rounds: expected an integer from 1 to 100000, got 0"),
    (["--rounds", "100001"], "error: --rounds: expected an integer from 1 to 100000, got 100001"),
    (["--seed", "-1"], "error: --seed: expected an integer from 0 to 4294967295, got -1"),
    (["--seed", "4294967296"], "error: --seed: expected an integer from 0 to 4294967295"),
    (["--seed", "99999999999999999999"], "error: --seed: expected an integer from 0 to"),
])
def test_bad_flags_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       argv: list[str], message: str) -> None:
    # Prepare
    config = _write(tmp_path, SMALL)
    # Execute
    code = main(["simulate", str(config), "--quiet", "--out", str(tmp_path), *argv])
    # Assert
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(message) and err.count("\n") == 1


def test_an_earlier_summary_is_kept_unless_force(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    config = _write(tmp_path, {**SMALL, "training": {**SMALL["training"], "rounds": 1}})
    out = tmp_path / "out"
    assert main(["simulate", str(config), "--quiet", "--out", str(out)]) == 0
    earlier = (out / "summary.json").read_text()
    (out / "summary.json").write_text(earlier + " ")  # marks the earlier record
    capsys.readouterr()
    # Execute
    refused = main(["simulate", str(config), "--quiet", "--out", str(out)])
    err = capsys.readouterr().err
    forced = main(["simulate", str(config), "--quiet", "--out", str(out), "--force"])
    # Assert
    assert refused == 2 and err.count("\n") == 1
    assert err.startswith(f"error: --out {out}: already holds summary.json")
    replaced = (out / "summary.json").read_text()
    assert forced == 0 and not replaced.endswith(" ")  # the marked record was replaced
    assert json.loads(replaced)["strategies"]["parse"]["accuracy"] == \
        json.loads(earlier)["strategies"]["parse"]["accuracy"]


def test_without_out_each_run_gets_its_own_folder_and_latest_follows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    config = _write(tmp_path, {**SMALL, "training": {**SMALL["training"], "rounds": 1}})
    monkeypatch.chdir(tmp_path)
    # Execute
    codes = [main(["simulate", str(config), "--quiet"]) for _ in range(2)]
    # Assert
    root = tmp_path / "runs" / "simulate"
    runs = sorted(p for p in root.iterdir() if p.name != "latest")
    assert codes == [0, 0] and len(runs) == 2
    assert all((p / "summary.json").is_file() for p in runs)
    assert (root / "latest").resolve() == runs[-1].resolve()


def test_impossible_split_ratio_is_a_one_line_error(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    config = _write(tmp_path, {**SMALL, "model": {"split": [1, 1, 100]}})
    # Execute
    code = main(["simulate", str(config), "--quiet", "--out", str(tmp_path)])
    # Assert
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"error: {config}: model.split: ratio 1:1:100 of latent 24")


def test_a_lossy_codec_is_simulated_through_the_real_encoder() -> None:
    # Prepare
    raw = {**SMALL, "training": {**SMALL["training"], "rounds": 3},
           "comm": {"codec": "topk", "topk_fraction": 0.05, "keyframe_every": 0,
                    "keyframe_codec": "int8", "consensus_step": 0.3}}
    lossy = parse_config(raw, "inline")
    exact = parse_config({**raw, "comm": {"codec": "fp32"}}, "inline")
    # Execute
    topk = simulate_fleet(lossy, ["parse"], "sliced")["strategies"]["parse"]
    fp32 = simulate_fleet(exact, ["parse"], "sliced")["strategies"]["parse"]
    # Assert: same dense accounting, far fewer encoded bytes, different (lossy) mixing
    assert topk["bytes_dense"] == fp32["bytes_dense"]
    assert topk["bytes_sent"]["total"] * 5 < fp32["bytes_sent"]["total"]
    assert fp32["bytes_sent"]["total"] >= fp32["bytes_dense"]["total"]
    assert topk["accuracy"]["per_agent"] != fp32["accuracy"]["per_agent"]
    assert topk["accuracy"]["overall"] > 2 / 16
