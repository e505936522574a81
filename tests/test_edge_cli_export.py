"""`parse-edge export`: checkpoint -> bundle, with the runtime checked against torch end to end."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from devices.runtime import Predictor
from edge.cli import main
from edge.config.load import parse_config
from edge.data.fleet_data import agent_data, fleet_info
from edge.data.norm import Norm
from edge.errors import UserError
from edge.learning.checkpoint import load_checkpoint, save_checkpoint
from edge.learning.export import export_checkpoint
from edge.learning.learner import make_learner
from edge.learning.strategies import get_strategy
from exporters.manifest import load_manifest
from tests.conftest import EXAMPLES


def _real_checkpoint(tmp_path):
    """A trained multimodal agent (modalities a, b) of a small synthetic fleet, saved and loaded."""
    cfg = parse_config({
        "fleet": "export-test",
        "data": {"dataset": "synthetic-pid", "synthetic": {"n_samples": 400, "dim": 6}},
        "families": {"a": {"hidden": [16], "latent": 12}, "b": {"hidden": [16], "latent": 12}},
        "agents": {"counts": {"a": 1, "a+b": 1}}, "topology": {"kind": "ring"}}, "inline")
    spec = cfg.agent_specs[1]
    learner = make_learner(cfg, spec, agent_data(cfg)[spec.id], fleet_info(cfg),
                           get_strategy("parse").sharing, "sliced")
    learner.train(2)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, cfg, learner, spec.id, 3, "parse")
    return load_checkpoint(path)


def test_export_checkpoint_normalises_examples_and_checks_every_subset(tmp_path):
    # Prepare
    ck = _real_checkpoint(tmp_path)
    # Execute
    manifest, checks = export_checkpoint(ck, tmp_path / "bundle", quantize="int8")
    # Assert
    assert manifest.meta["agent_id"] == "a1" and manifest.meta["round_idx"] == 3
    assert manifest.source_checkpoint["path"].endswith("checkpoint.pt")
    assert len(manifest.source_checkpoint["sha256"]) == 64
    assert [row["modalities"] for row in checks] == ["a", "b", "a+b"]
    for row in checks:
        assert row["fp32_argmax_agreement"] == 1.0
        assert row["fp32_max_prob_diff"] < 1e-5
        assert row["fp32_accuracy"] == row["torch_accuracy"]
        assert row["int8_argmax_agreement"] >= 0.8
    assert load_manifest(tmp_path / "bundle").default_precision == "int8"
    assert Predictor(tmp_path / "bundle").precision == "int8"


def test_statistics_that_do_not_fit_the_inputs_are_a_user_error(tmp_path):
    ck = _real_checkpoint(tmp_path)
    ck.norm["b"] = {"mean": [0.0] * 5, "std": [1.0] * 5}
    with pytest.raises(UserError, match=r"norm.b: 5 statistics fit neither"):
        export_checkpoint(ck, tmp_path / "bundle")


def test_missing_checkpoint_is_a_one_line_error(tmp_path, capsys):
    rc = main(["export", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "nope.pt" in err
    assert len(err.strip().splitlines()) == 1


def test_export_module_keeps_torch_out_of_cli_start_up():
    code = "import sys, edge.cli.export, edge.cli.infer; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def _simulate(config: str, out) -> None:
    subprocess.run([sys.executable, "-m", "edge", "simulate", str(EXAMPLES / config),
                    "--rounds", "1", "--save-checkpoints", "--quiet", "--out", str(out)],
                   check=True, stdout=subprocess.DEVNULL, timeout=300)


@pytest.mark.parametrize("config, agent, quantize", [
    ("synthetic.yaml", "a2", "int8"),      # mlp encoders, multimodal (a+b)
    ("basic-motions.yaml", "a0", None),    # conv1d encoder, unimodal (accel)
])
def test_export_of_a_real_checkpoint_serves_every_subset_like_torch(tmp_path, capsys, config,
                                                                      agent, quantize):
    # Prepare: one round of the real learning code, with checkpoints
    _simulate(config, tmp_path / "sim")
    ckpt = tmp_path / "sim" / "agents" / agent / "checkpoint.pt"
    bundle = tmp_path / "bundle"
    # Execute
    rc = main(["export", str(ckpt), "--out", str(bundle)]
              + (["--quantize", quantize] if quantize else []))
    # Assert
    out = capsys.readouterr().out
    assert rc == 0 and f"exported agent {agent}" in out
    ck = load_checkpoint(ckpt)
    manifest = load_manifest(bundle)
    # Every graph's row ends in its argmax agreement or '-' (not measured), never a blank cell.
    for g in manifest.graphs:
        row = next(line for line in out.splitlines() if line.startswith(g.name + " "))
        last = row.split()[-1]
        assert last == ("-" if g.argmax_agreement is None else f"{g.argmax_agreement:.3f}"), row
    assert manifest.labels == list(ck.labels) and manifest.modalities == list(ck.modalities)
    assert manifest.meta["agent_id"] == agent
    assert {g.name.removesuffix(".int8") for g in manifest.graphs} >= {
        f"encoder-{m}" for m in ck.modalities} | {"head-R"}
    predictor = Predictor(bundle, precision="fp32")
    for key in manifest.serves:
        subset = key.split("+")
        pred = predictor.predict({m: ck.examples["x"][m] for m in subset})
        x_norm = {m: torch.from_numpy(Norm.from_dict(ck.norm[m]).apply(ck.examples["x"][m]))
                  for m in subset}
        with torch.no_grad():
            logits = ck.model(x_norm).logits
        np.testing.assert_allclose(pred.probabilities, torch.softmax(logits, -1).numpy(),
                                   atol=1e-5)
    if quantize:
        assert Predictor(bundle).predict(
            {m: ck.examples["x"][m] for m in ck.modalities}).graph.endswith(".int8")
