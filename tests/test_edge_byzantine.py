"""One absurd neighbour never crashes or poisons the fleet (issue 14, kind 1).

The fleets run in the simulator, where a `byzantine` fault wraps the in-memory transport the
same way it wraps MQTT on a board (edge.net.byzantine): what the honest agents receive is a
well-formed update from a real sender id, exactly as over the wire without HMAC.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from edge.config.load import parse_config
from edge.learning.simulate import simulate_fleet, simulate_strategy
from edge.net.byzantine import corrupt

from .conftest import EXAMPLES


def _mfeat(agents: int, rounds: int, comm: dict[str, Any],
           faults: list[dict[str, Any]]) -> dict[str, Any]:
    doc = yaml.safe_load((EXAMPLES / "mfeat.yaml").read_text())
    doc["agents"]["count"] = agents
    doc["training"]["rounds"] = rounds
    doc["comm"] = comm
    doc["faults"] = faults
    return doc


def _honest_accuracy(doc: dict[str, Any], liar: str = "a0") -> float:
    block = simulate_strategy(parse_config(copy.deepcopy(doc), "fleet.yaml"), "parse", "sliced")
    per_agent = block["accuracy"]["per_agent"]
    return float(np.mean([a for agent, a in per_agent.items() if agent != liar]))


def test_corrupt_modes() -> None:
    # Prepare
    x = np.array([1.0, -2.0, 0.5], np.float32)
    rng = np.random.default_rng(0)
    # Execute / Assert
    np.testing.assert_array_equal(corrupt(x, "scale", 5.0, 0.0, rng), 5 * x)
    np.testing.assert_array_equal(corrupt(x, "sign-flip", 1.0, 0.0, rng), -x)
    noisy = corrupt(np.ones(10_000, np.float32), "noise", 1.0, 2.0, rng)
    assert abs(float(noisy.std()) - 2.0) < 0.1 and abs(float(noisy.mean()) - 1.0) < 0.1
    assert np.isfinite(corrupt(np.full(3, 1e30, np.float32), "scale", 1e30, 0.0, rng)).all()


def test_plain_gossip_is_poisoned_and_robust_mixing_is_not() -> None:
    # Prepare: 8 agents on a chordal ring; a0 sends 5 x its parameters from round 1 on
    liar = [{"kind": "byzantine", "agents": ["a0"], "mode": "scale", "round": 1}]
    clean = _honest_accuracy(_mfeat(8, 10, {}, []))
    # Execute
    gossip = _honest_accuracy(_mfeat(8, 10, {}, liar))
    median = _honest_accuracy(_mfeat(8, 10, {"mixing": "median"}, liar))
    clipped = _honest_accuracy(_mfeat(8, 10, {"mixing": "clipped-gossip"}, liar))
    # Assert: gossip loses points, the robust rules stay within 2 of the clean run
    assert clean - gossip > 0.03, (clean, gossip)
    assert clean - median < 0.02, (clean, median)
    assert clean - clipped < 0.02, (clean, clipped)


def test_the_issue_1e30_update_is_refused_and_every_agent_finishes() -> None:
    # Prepare: the issue's attack: a real sender id, finite values around 1e30, plain gossip
    liar = [{"kind": "byzantine", "agents": ["a0"], "mode": "scale", "scale": 1e30, "round": 0}]
    cfg = parse_config(_mfeat(8, 4, {}, liar), "fleet.yaml")
    # Execute
    summary = simulate_fleet(cfg, ["parse"], "sliced")
    # Assert: nobody died, and a0's neighbours refused its copies at the gate
    block = summary["strategies"]["parse"]
    assert set(block["accuracy"]["per_agent"]) == set(cfg.agent_ids)
    honest = np.mean([a for agent, a in block["accuracy"]["per_agent"].items() if agent != "a0"])
    assert honest > 0.6


def test_a_model_broken_by_a_neighbour_is_restored_and_the_neighbour_skipped(
        caplog: pytest.LogCaptureFixture) -> None:
    # Prepare: a wide-open gate and tensor fusion (a product of slices overflows float32)
    liar = [{"kind": "byzantine", "agents": ["a2"], "mode": "scale", "scale": 3e4, "round": 0}]
    doc = _mfeat(6, 4, {"max_norm_ratio": 1e6}, liar)
    doc["model"] = {"fusion": "tensor"}
    cfg = parse_config(doc, "fleet.yaml")
    # Execute
    with caplog.at_level("WARNING", logger="edge.learning.guard"):
        summary = simulate_fleet(cfg, ["parse"], "sliced")
    # Assert: an agent restored its last good state, said so, and every agent ran every round
    restored = [r.getMessage() for r in caplog.records if "restored the last good state" in r.message]
    assert restored and all("skipping a2" in m for m in restored)
    rounds = summary["strategies"]["parse"]["rounds"]
    assert rounds == 4 and len(summary["strategies"]["parse"]["accuracy"]["per_agent"]) == 6


def test_guard_keeps_a_diverging_local_model_finite() -> None:
    # Prepare: plain SGD with a learning rate close to the bound diverges on its own
    from edge.data.fleet_data import agent_data, fleet_info
    from edge.learning.guard import mix_and_train
    from edge.learning.learner import make_learner
    from edge.learning.strategies import get_strategy

    doc = _mfeat(3, 2, {}, [])
    doc["training"].update(optimizer="sgd", lr=9.9, momentum=0.99)
    cfg = parse_config(doc, "fleet.yaml")
    spec = cfg.agent_specs[2]
    learner = make_learner(cfg, spec, agent_data(cfg)[spec.id], fleet_info(cfg),
                           get_strategy("parse").sharing, "sliced")
    before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    # Execute
    steps = [mix_and_train(learner, spec.id, {}, {}, {}, 3, r) for r in range(3)]
    # Assert: whenever training diverged, the model is the last good one, and finite
    assert learner.is_finite()
    diverged = [s for s in steps if not np.isfinite(s.stats["loss"])]
    assert diverged, "the set-up should make plain SGD diverge"
    if all(not np.isfinite(s.stats["loss"]) for s in steps):
        after = learner.model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)
