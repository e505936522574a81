"""PID estimation: BROJA on k-means clusters recovers planted structure; split: auto; the pid CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from edge.cli import main
from edge.config.load import load_config, parse_config
from edge.config.schema import SyntheticConfig
from edge.data.fleet_data import agent_data, fleet_info
from edge.data.synthetic import synthetic_pool
from edge.errors import UserError
from edge.learning.learner import build_model, model_spec
from edge.learning.model import slice_widths
from edge.learning.pid import (
    Pid,
    SynergyScope,
    assign,
    auto_split,
    bootstrap_pid,
    broja,
    joint_counts,
    kmeans,
    planted_pid,
    synergy_scope,
)
from edge.learning.pid_fleet import Gossip, PidOptions, agent_pid, fleet_pid, pooled_pid

from .conftest import EXAMPLES

ATOMS = ("redundancy", "unique_a", "unique_b", "synergy")


def _atoms(pid: Pid) -> list[float]:
    return [getattr(pid, atom) for atom in ATOMS]


def _table(rows: list[tuple[int, int, int]]) -> np.ndarray:
    a, b, y = (np.array(c) for c in zip(*rows, strict=True))
    return joint_counts(a, b, y, (a.max() + 1, b.max() + 1, y.max() + 1))


def test_broja_gives_the_textbook_atoms_of_xor_copy_and_redundant_bits() -> None:
    # Prepare: exact tables (one sample per equally likely outcome)
    xor = _table([(a, b, a ^ b) for a in (0, 1) for b in (0, 1)])
    copy = _table([(a, b, 2 * a + b) for a in (0, 1) for b in (0, 1)])
    rdn = _table([(a, a, a) for a in (0, 1)])
    # Act / Assert
    assert _atoms(broja(xor)) == pytest.approx([0, 0, 0, 1], abs=1e-4)
    assert _atoms(broja(copy)) == pytest.approx([0, 1, 1, 0], abs=1e-4)
    assert _atoms(broja(rdn)) == pytest.approx([1, 0, 0, 0], abs=1e-4)


@pytest.mark.parametrize("bits", [(2, 1, 0), (0, 1, 2), (1, 0, 2), (2, 0, 1), (1, 2, 0), (0, 2, 1)])
def test_planted_redundancy_uniqueness_and_synergy_are_recovered(bits: tuple[int, int, int]) -> None:
    # Prepare: every modality shows 3 bits (redundant + its unique + one mask per synergy bit),
    # so 8 clusters can hold them all; noise 0.2 keeps the bits readable (flip rate 3e-7)
    r, u, s = bits
    pool = synthetic_pool(SyntheticConfig(n_samples=1000, dim=16, redundant_bits=r, unique_bits=u,
                                          synergy_bits=s, noise=0.2), 0)
    labels = {m: assign(pool.x[m], kmeans(pool.x[m], 8, 0)) for m in ("a", "b")}
    table = joint_counts(labels["a"], labels["b"], pool.y, (8, 8, pool.n_classes))
    truth = planted_pid(r, u, s, with_first=True)
    # Act
    estimate = bootstrap_pid(table, draws=3, seed=0)
    # Assert: each atom within 0.25 bits, and R, U, S ordered as planted
    got = estimate.point
    for atom in ATOMS:
        assert getattr(got, atom) == pytest.approx(getattr(truth, atom), abs=0.25), atom
    ranked = np.argsort([got.redundancy, (got.unique_a + got.unique_b) / 2, got.synergy])
    assert list(ranked) == list(np.argsort([r, u, s]))
    assert estimate.n_samples == 1000 and estimate.draws == 3
    for atom in ATOMS:
        assert getattr(estimate.low, atom) <= getattr(estimate.high, atom)


def test_too_few_clusters_lose_information_and_it_shows_as_a_lower_total() -> None:
    # Prepare: 3 bits per modality need 8 clusters; 2 clusters hold at most 1 bit each
    pool = synthetic_pool(SyntheticConfig(n_samples=1000, redundant_bits=1, unique_bits=1,
                                          synergy_bits=1, noise=0.2), 0)
    totals = {}
    for k in (2, 8):
        labels = {m: assign(pool.x[m], kmeans(pool.x[m], k, 0)) for m in ("a", "b")}
        totals[k] = broja(joint_counts(labels["a"], labels["b"], pool.y, (k, k, pool.n_classes))).total_bits
    # Assert
    assert totals[8] == pytest.approx(4.0, abs=0.1)
    assert totals[2] <= 2.0 + 1e-6


def test_kmeans_finds_well_separated_blobs_and_rejects_bad_input() -> None:
    # Prepare
    rng = np.random.default_rng(1)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = np.concatenate([c + 0.1 * rng.standard_normal((50, 2)) for c in centres])
    # Act
    found = kmeans(x, 3, seed=0)
    # Assert
    assert sorted(map(tuple, np.round(found))) == sorted(map(tuple, centres))
    with pytest.raises(ValueError):
        kmeans(np.array([[np.nan, 0.0]]), 1, 0)
    with pytest.raises(ValueError):
        broja(np.zeros((2, 2, 2)))


def test_auto_split_is_a_valid_split_for_any_estimates_and_follows_them() -> None:
    # Prepare
    rng = np.random.default_rng(0)
    cases = [Pid(*rng.exponential(size=4)) for _ in range(50)] + [Pid(0, 0, 0, 0), Pid(3, 0, 0, 0)]
    # Act / Assert
    for latent in (3, 4, 24, 48, 97):
        for pid in cases:
            widths = auto_split([pid], latent)
            assert sum(widths) == latent and min(widths) >= 1
            assert slice_widths(latent, widths) == widths
    assert auto_split([Pid(2, 0.5, 0.5, 0)], 48) == (37, 10, 1)
    assert auto_split([], 48) == (16, 16, 16)
    with pytest.raises(ValueError):
        auto_split([Pid(-1, 0, 0, 0)], 48)


@pytest.mark.parametrize("example", ["basic-motions.yaml", "mfeat.yaml", "synthetic.yaml"])
def test_split_auto_from_the_fleet_estimate_builds_every_agents_model(example: str) -> None:
    # Prepare
    cfg = load_config(EXAMPLES / example)
    # Act
    result = fleet_pid(cfg, PidOptions(k=6, draws=0))
    # Assert: the widths are a split the config accepts, and every agent's model runs with it
    raw = yaml.safe_load((EXAMPLES / example).read_text())
    raw.setdefault("model", {})["split"] = list(result.split)
    accepted = parse_config(raw, example)
    assert accepted.model.split == tuple(float(w) for w in result.split)
    info = fleet_info(accepted)
    for spec in accepted.agent_specs:
        model = build_model(model_spec(accepted, spec.modalities, info.input_shapes,
                                       len(info.labels), "sliced"), 0)
        out = model({m: torch.zeros(2, *info.input_shapes[m]) for m in spec.modalities})
        assert out.logits.shape == (2, len(info.labels))
    for p in result.pairs:
        assert p.estimate.point.total_bits > 0.1


def test_fleet_estimate_sums_counts_by_gossip_and_recovers_the_plant() -> None:
    # Prepare: a 6-agent ring, 3 multimodal agents; nearly noiseless bits
    raw = {"fleet": "pid-test",
           "data": {"dataset": "synthetic-pid",
                    "synthetic": {"n_samples": 1600, "dim": 16, "redundant_bits": 1,
                                  "unique_bits": 0, "synergy_bits": 2, "noise": 0.2}},
           "agents": {"counts": {"a": 2, "b": 1, "a+b": 3}},
           "topology": {"kind": "ring"}}
    cfg = parse_config(raw, "<test>")
    options = PidOptions(k=8, draws=0)
    # Act
    fleet = fleet_pid(cfg, options)
    pooled = pooled_pid(cfg, options)
    # Assert
    (pair,) = fleet.pairs
    assert pair.holders == tuple(s.id for s in cfg.agent_specs if len(s.modalities) == 2)
    for atom in ATOMS:
        assert getattr(pair.estimate.point, atom) == pytest.approx(getattr(pair.planted, atom), abs=0.25)
    assert pooled.pairs[0].estimate.n_samples > pair.estimate.n_samples
    assert fleet.gossip_steps > 0 and fleet.mode.startswith("fleet")
    assert fleet.scopes == {"a": SynergyScope.COMBINATION, "b": SynergyScope.COMBINATION}


def test_gossip_total_is_the_fleet_sum_and_needs_a_connected_graph() -> None:
    # Prepare
    ring = {"a": ("b", "d"), "b": ("a", "c"), "c": ("b", "d"), "d": ("a", "c")}
    values = {"a": np.array([1.0, 2.0]), "c": np.array([10.0, -4.0])}
    # Act
    total = Gossip(ring).total(values)
    # Assert
    assert total == pytest.approx([11.0, -2.0], abs=1e-8)
    with pytest.raises(UserError, match="not connected"):
        Gossip({"a": ("b",), "b": ("a",), "c": ("d",), "d": ("c",)})


def test_synergy_scope_follows_the_synergy_share() -> None:
    assert synergy_scope([Pid(1, 1, 1, 0.05)]) is SynergyScope.MODALITY
    assert synergy_scope([Pid(1, 0, 0, 1)]) is SynergyScope.COMBINATION
    assert synergy_scope([]) is SynergyScope.MODALITY


def test_agent_estimate_uses_only_its_own_split() -> None:
    # Prepare
    cfg = load_config(EXAMPLES / "synthetic.yaml")
    multi = next(s.id for s in cfg.agent_specs if len(s.modalities) == 2)
    # Act
    result = agent_pid(cfg, multi, PidOptions(k=8, draws=0))
    # Assert
    assert result.pairs[0].holders == (multi,)
    assert result.pairs[0].estimate.n_samples == len(agent_data(cfg)[multi].train)


def test_pid_cli_prints_json_and_the_pooled_oracle_is_labelled(capsys: pytest.CaptureFixture[str]) -> None:
    # Act
    code = main(["pid", str(EXAMPLES / "synthetic.yaml"), "--pooled", "--json", "--k", "8",
                 "--draws", "2"])
    # Assert
    doc = json.loads(capsys.readouterr().out)
    assert code == 0
    assert "oracle" in doc["mode"]
    assert sum(doc["split_auto"]["widths"]) == doc["split_auto"]["latent"] == 48
    assert doc["pairs"][0]["planted"] == planted_pid(1, 1, 1, True).as_dict()


def test_pid_cli_without_draws_claims_no_interval(capsys: pytest.CaptureFixture[str]) -> None:
    # Act
    json_code = main(["pid", str(EXAMPLES / "synthetic.yaml"), "--pooled", "--json", "--k", "8",
                      "--draws", "0"])
    doc = json.loads(capsys.readouterr().out)
    text_code = main(["pid", str(EXAMPLES / "synthetic.yaml"), "--pooled", "--k", "8",
                      "--draws", "0"])
    text = capsys.readouterr().out
    # Assert
    assert json_code == text_code == 0
    assert doc["pairs"][0]["low"] is None and doc["pairs"][0]["high"] is None
    assert doc["pairs"][0]["bootstrap_draws"] == 0
    assert "no bootstrap interval (--draws 0)" in text and "over 0 draws" not in text
    assert "[" not in text.splitlines()[3]  # the pair's row: point estimates only
    # The scope line says what auto would choose, beside what the config actually uses.
    assert "synergy_scope: auto -> s_m shared" in text
    assert "the config's model.synergy_scope is combination" in text


@pytest.mark.parametrize("argv, message", [
    (["--agent", "a0"], "--agent: a0 holds one modality"),
    (["--agent", "zz"], "--agent: unknown agent 'zz'"),
    (["--agent", "a2", "--pooled"], "--agent, --pooled: expected at most one of them"),
    (["--k", "1"], "--k: expected an integer from 2 to 64"),
    (["--draws", "nan"], "--draws: expected an integer from 0 to 1000"),
])
def test_bad_pid_invocations_are_one_line_errors(argv: list[str], message: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # Act
    code = main(["pid", str(EXAMPLES / "synthetic.yaml"), *argv])
    # Assert
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith(f"error: {message}") and "\n" not in err


def test_a_bad_config_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    path = tmp_path / "bad.yaml"
    raw = yaml.safe_load((EXAMPLES / "synthetic.yaml").read_text())
    raw["data"]["synthetic"]["n_samples"] = 10
    path.write_text(yaml.safe_dump(raw))
    # Act
    code = main(["pid", str(path)])
    # Assert
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(f"error: {path}") and "\n" not in err


def test_missing_dit_is_a_one_line_error_naming_the_extra(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: make `import dit` fail as it does where the extra is not installed
    import sys

    monkeypatch.setitem(sys.modules, "dit", None)
    # Act
    code = main(["pid", str(EXAMPLES / "synthetic.yaml")])
    # Assert
    err = capsys.readouterr().err.strip()
    assert code == 2 and "parse-edge[pid]" in err and "\n" not in err


def test_planted_truth_of_a_pair_without_the_first_modality_has_no_synergy() -> None:
    assert planted_pid(1, 2, 3, with_first=False) == Pid(1, 2, 2, 0)
    assert replace(planted_pid(1, 2, 3, with_first=True), synergy=0) == Pid(1, 2, 2, 0)
