"""`model.split: auto` and `model.synergy_scope: auto`: resolved fleet-wide before round 0.

The trial side (config.yaml and the agents' command lines, simulate == trial) is in
tests/test_edge_trial.py.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from edge.cli import main
from edge.config.load import load_config, parse_config
from edge.config.overrides import (
    format_split,
    format_synergy_scope,
    parse_split,
    parse_synergy_scope,
    with_overrides,
)
from edge.data.fleet_data import fleet_info
from edge.errors import UserError
from edge.learning.auto_model import resolve_model
from edge.learning.learner import build_model, model_spec
from edge.learning.model import slice_widths
from edge.learning.pid_fleet import PidOptions, fleet_pid
from edge.learning.sharing import branches_for
from edge.learning.simulate import simulate_fleet
from edge.learning.strategies import get_strategy

from .conftest import EXAMPLES


def _auto(example: str, **model: object) -> tuple[dict, Path]:
    raw = yaml.safe_load((EXAMPLES / example).read_text())
    raw.setdefault("model", {}).update({"split": "auto", "synergy_scope": "auto", **model})
    return raw, EXAMPLES / example


@pytest.mark.parametrize("example", ["basic-motions.yaml", "mfeat.yaml", "synthetic.yaml"])
def test_auto_resolves_to_valid_widths_and_scopes_for_every_bundled_data_set(example: str) -> None:
    # Prepare
    raw, path = _auto(example)
    cfg = parse_config(raw, str(path))
    # Act
    resolved = resolve_model(cfg)
    # Assert: the decentralized estimate's widths, for the smallest latent, at least 1 unit each
    split, scope = resolved.cfg.model.split, resolved.cfg.model.synergy_scope
    assert not isinstance(split, str) and isinstance(scope, dict)
    latent = min(f.latent for f in cfg.families.values())
    assert split == tuple(float(w) for w in fleet_pid(cfg, PidOptions(k=10, draws=0)).split)
    assert sum(split) == latent and min(split) >= 1
    assert set(scope) == set(cfg.modalities) and set(scope.values()) <= {"combination", "modality"}
    # The effective config text loads back to the same model, and every agent's model builds.
    again = parse_config(yaml.safe_load(resolved.config_text(path.read_text())), str(path))
    assert again.model == resolved.cfg.model
    info = fleet_info(again)
    for fam in again.families.values():
        assert min(slice_widths(fam.latent, split)) >= 1
    for spec in again.agent_specs:
        model = build_model(model_spec(again, spec.modalities, info.input_shapes,
                                       len(info.labels), "sliced"), 0)
        out = model({m: torch.zeros(2, *info.input_shapes[m]) for m in spec.modalities})
        assert out.logits.shape == (2, len(info.labels))
    # The agents get the same values on their command line.
    argv = resolved.agent_argv()
    assert parse_split(argv[argv.index("--split") + 1]) == split
    assert parse_synergy_scope(argv[argv.index("--synergy-scope") + 1]) == scope


def test_a_fixed_model_section_is_left_alone() -> None:
    cfg = load_config(EXAMPLES / "mfeat.yaml")
    resolved = resolve_model(cfg)
    assert resolved.cfg is cfg and resolved.estimate is None and resolved.agent_argv() == []
    assert resolved.config_text("fleet: x # kept\n") == "fleet: x # kept\n"


def test_a_fleet_without_a_modality_pair_gets_the_equal_split() -> None:
    raw, path = _auto("mfeat.yaml")
    raw["agents"] = {"counts": {"fou": 3, "zer": 3}}
    resolved = resolve_model(parse_config(raw, str(path)))
    assert resolved.cfg.model.split == (16.0, 16.0, 16.0) and resolved.estimate is None


def test_an_unresolved_auto_model_is_refused_where_a_model_is_built() -> None:
    raw, path = _auto("mfeat.yaml")
    cfg = parse_config(raw, str(path))
    info = fleet_info(cfg)
    with pytest.raises(UserError, match="resolved fleet-wide before round 0"):
        model_spec(cfg, ("fou",), info.input_shapes, len(info.labels), "sliced")


@pytest.mark.parametrize(("model", "field", "words"), [
    ({"split": "aut"}, "model.split", "'auto'"),
    ({"split": [1, 2]}, "model.split", "three positive numbers"),
    ({"split": [1, 1, -1]}, "model.split[2]", "expected a number > 0"),
    ({"synergy_scope": "both"}, "model.synergy_scope", "'combination', 'modality' or 'auto'"),
    ({"synergy_scope": {"kar": "modality"}}, "model.synergy_scope.kar", "unknown modality"),
])
def test_a_bad_split_or_scope_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 model: dict, field: str, words: str) -> None:
    # Prepare
    raw = yaml.safe_load((EXAMPLES / "mfeat.yaml").read_text())
    raw["model"] = model
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(raw))
    # Execute
    code = main(["config", "check", str(path), "--no-data"])
    # Assert
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: {path}: {field}: ") and words in err


def test_synergy_scope_moves_only_the_synergy_projections_of_a_combination_row() -> None:
    parse, hybrid = get_strategy("parse").sharing, get_strategy("dsgd-hybrid").sharing
    mods = ("fou", "zer")
    by_combination = set(branches_for(parse, mods, "sliced", False))
    assert {"syn/fou@fou+zer", "syn/zer@fou+zer", "fuse/fou+zer"} <= by_combination
    assert set(branches_for(parse, mods, "sliced", False, "modality")) == set(
        branches_for(hybrid, mods, "sliced", False))
    mixed = set(branches_for(parse, mods, "sliced", False, {"fou": "modality", "zer": "combination"}))
    assert mixed == by_combination - {"syn/fou@fou+zer"} | {"syn/fou"}
    # A row that shares s_m by modality already keeps it so.
    assert set(branches_for(hybrid, mods, "sliced", False, "combination")) == set(
        branches_for(hybrid, mods, "sliced", False))
    with pytest.raises(ValueError, match="resolved before round 0"):
        branches_for(parse, mods, "sliced", False, "auto")


def test_split_and_scope_overrides_round_trip_and_refuse_bad_values() -> None:
    cfg = load_config(EXAMPLES / "mfeat.yaml")
    for scope in ("combination", "modality", {"fou": "modality", "zer": "combination"}):
        assert parse_synergy_scope(format_synergy_scope(scope)) == scope
    assert parse_split(format_split((25.0, 17.0, 6.0))) == (25.0, 17.0, 6.0)
    for text in ("1,2", "1,2,x", "1,0,2", "1,nan,2"):
        with pytest.raises(UserError, match="--split"):
            parse_split(text)
    for text in ("both", "fou=x", "fou=modality,fou=modality", "=modality"):
        with pytest.raises(UserError, match="--synergy-scope"):
            parse_synergy_scope(text)
    with pytest.raises(UserError, match="zero width"):
        with_overrides(cfg, split=(1.0, 1.0, 100.0))
    with pytest.raises(UserError, match="unknown modality"):
        with_overrides(cfg, synergy_scope={"kar": "modality"})


def test_simulate_resolves_auto_and_says_so_and_runs_as_the_resolved_config() -> None:
    # Prepare: a small synthetic fleet, 2 rounds
    raw, path = _auto("synthetic.yaml")
    raw["training"] = {**raw.get("training", {}), "rounds": 2}
    cfg = parse_config(raw, str(path))
    # Act
    auto = simulate_fleet(cfg, ["parse"], "sliced")
    model = auto["model"]
    explicit = replace(cfg, model=replace(cfg.model, split=tuple(model["split"]),
                                          synergy_scope=model["synergy_scope"]))
    fixed = simulate_fleet(explicit, ["parse"], "sliced")
    # Assert
    assert model["split_from"] == "auto" and model["synergy_scope_from"] == "auto"
    assert model["pid"]["mode"].startswith("fleet") and model["pid"]["pairs"]
    assert fixed["model"]["split_from"] == "config" and fixed["model"]["split"] == model["split"]
    assert (auto["strategies"]["parse"]["accuracy"]["per_agent"]
            == fixed["strategies"]["parse"]["accuracy"]["per_agent"])


def test_a_field_board_is_bundled_the_resolved_model_not_auto() -> None:
    # Prepare: the runner resolved `auto`; a board bundle starts from the user's config text.
    from edge.trial.field_boards import board_config_text

    raw, path = _auto("synthetic.yaml")
    resolved = resolve_model(parse_config(raw, str(path)))
    # Act
    text = board_config_text(yaml.safe_dump(raw), resolved.cfg, quorum=2)
    # Assert: the board loads the same model as the runner (a board refuses to build `auto`).
    board = parse_config(yaml.safe_load(text), "board.yaml")
    assert board.model == resolved.cfg.model
    assert board.training.quorum == 2
