"""Checkpoints: atomic save, faithful load, clear errors for foreign files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edge.config.load import parse_config
from edge.data.fleet_data import agent_data, fleet_info
from edge.errors import ConfigError
from edge.learning.checkpoint import load_checkpoint, save_checkpoint
from edge.learning.learner import make_learner
from edge.learning.strategies import get_strategy

RAW = {
    "fleet": "ckpt-test",
    "data": {"dataset": "synthetic-pid", "synthetic": {"n_samples": 300, "dim": 6}},
    "agents": {"counts": {"a": 1, "a+b": 1}},
    "topology": {"kind": "ring"},
}


def test_save_then_load_gives_the_same_predictions(tmp_path: Path) -> None:
    # Prepare
    cfg = parse_config(RAW, "inline")
    spec = cfg.agent_specs[1]
    data = agent_data(cfg)[spec.id]
    learner = make_learner(cfg, spec, data, fleet_info(cfg), get_strategy("parse").sharing, "sliced")
    learner.train(1)
    path = tmp_path / "agents" / spec.id / "checkpoint.pt"
    # Execute
    save_checkpoint(path, cfg, learner, spec.id, 4, "parse")
    ckpt = load_checkpoint(path)
    # Assert
    x = {m: torch.from_numpy(v) for m, v in data.test.x.items()}
    learner.model.eval()
    assert torch.allclose(ckpt.model(x).logits, learner.model(x).logits)
    assert ckpt.round_idx == 4 and ckpt.strategy == "parse" and ckpt.modalities == ("a", "b")
    assert ckpt.config["fleet"] == "ckpt-test" and ckpt.config["data"]["dataset"] == "synthetic-pid"
    raw = ckpt.examples["x"]["a"]
    renormalised = (raw - np.asarray(ckpt.norm["a"]["mean"])) / np.asarray(ckpt.norm["a"]["std"])
    np.testing.assert_allclose(renormalised, data.test.x["a"][: len(raw)], atol=1e-4)
    assert list(path.parent.iterdir()) == [path]  # no temp file left behind


@pytest.mark.parametrize("content", [b"not a checkpoint", None])
def test_foreign_or_missing_file_is_a_config_error(tmp_path: Path, content: bytes | None) -> None:
    # Prepare
    path = tmp_path / "x.pt"
    if content is not None:
        path.write_bytes(content)
    # Execute / Assert
    with pytest.raises(ConfigError) as info:
        load_checkpoint(path)
    assert str(info.value).startswith(f"{path}: ")


def test_wrong_format_version_is_named(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "old.pt"
    torch.save({"format": 99}, path)
    # Execute / Assert
    with pytest.raises(ConfigError, match="format: expected checkpoint format 1, got 99"):
        load_checkpoint(path)
