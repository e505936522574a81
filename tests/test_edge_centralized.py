"""The centralized reference hands every agent the pooled model, cut down to its modalities."""

from __future__ import annotations

import torch

from edge.config.load import parse_config
from edge.data.fleet_data import agent_data, fleet_info
from edge.learning.centralized import pooled_training
from edge.learning.learner import make_learner
from edge.learning.strategies import get_strategy

RAW = {
    "fleet": "centralized-test",
    "data": {"dataset": "synthetic-pid", "synthetic": {"n_samples": 400, "dim": 6}},
    "families": {"a": {"hidden": [8], "latent": 6}, "b": {"hidden": [8], "latent": 5}},
    "agents": {"counts": {"a": 1, "b": 1, "a+b": 1}},
    "topology": {"kind": "complete"},
    "training": {"rounds": 1},
}


def test_unimodal_agents_get_the_pooled_plain_head_and_predict_as_the_pool_does() -> None:
    # Prepare: plain late fusion concatenates both latents; unimodal heads are narrower
    cfg = parse_config(RAW, "inline")
    data, info = agent_data(cfg), fleet_info(cfg)
    row = get_strategy("centralized").sharing
    learners = [make_learner(cfg, a, data[a.id], info, row, "plain") for a in cfg.agent_specs]
    # Act
    pooled = pooled_training(learners, epochs=1)
    # Assert: on its own modality every agent computes what the pooled model computes with the
    # other modality missing (zero-filled), so nobody is left with a random head
    pooled.eval()
    for learner in learners:
        learner.model.eval()
        x = {m: torch.from_numpy(v[:16]) for m, v in learner.data.test.x.items()}
        with torch.no_grad():
            torch.testing.assert_close(learner.model(x).logits, pooled(x).logits)
