"""The learner: branches as flat vectors, gossip mixing, shared initialisation."""

from __future__ import annotations

import numpy as np
import pytest

from edge.config.load import parse_config
from edge.data.fleet_data import agent_data, fleet_info
from edge.learning.learner import agent_branches, make_learner
from edge.learning.strategies import get_strategy

RAW = {
    "fleet": "learner-test",
    "data": {"dataset": "synthetic-pid", "synthetic": {"n_samples": 400, "dim": 6}},
    "families": {"a": {"hidden": [8], "latent": 6}, "b": {"hidden": [8], "latent": 6}},
    "agents": {"counts": {"a": 1, "b": 1, "a+b": 2}},
    "topology": {"kind": "complete"},
    "training": {"rounds": 1},
}


@pytest.fixture(scope="module")
def learners() -> dict:
    cfg = parse_config(RAW, "inline")
    data, info = agent_data(cfg), fleet_info(cfg)
    strategy = get_strategy("parse")
    return {a.id: make_learner(cfg, a, data[a.id], info, strategy.sharing, "sliced")
            for a in cfg.agent_specs}


def test_branch_vector_round_trips_through_set_branch(learners: dict) -> None:
    # Prepare
    learner = learners["a2"]
    original = learner.branch_vector("enc/a")
    # Execute
    learner.set_branch("enc/a", original * 2)
    doubled = learner.branch_vector("enc/a")
    learner.set_branch("enc/a", original)
    # Assert
    assert doubled.dtype == np.float32 and doubled.size == learner.branches["enc/a"].size
    np.testing.assert_array_equal(doubled, original * 2)
    np.testing.assert_array_equal(learner.branch_vector("enc/a"), original)


def test_agents_holding_a_branch_start_from_the_same_weights(learners: dict) -> None:
    # Assert: same key, same seed -> identical initial copies (the first average is meaningful)
    np.testing.assert_array_equal(learners["a0"].branch_vector("enc/a"),
                                  learners["a2"].branch_vector("enc/a"))
    np.testing.assert_array_equal(learners["a2"].branch_vector("fuse/a+b"),
                                  learners["a3"].branch_vector("fuse/a+b"))


def test_mix_is_the_weighted_average_and_missing_weight_returns_to_self(learners: dict) -> None:
    # Prepare
    learner = learners["a3"]
    own = learner.branch_vector("syn/a@a+b")
    # A neighbour's copy near ours (the gate refuses copies 10 x our norm away: test_edge_gossip)
    peer = own + 0.5
    weights = {"a3": 0.5, "a2": 0.25, "a0": 0.25}
    # Execute: a0 sent nothing, so its quarter stays with a3
    outcome = learner.mix("syn/a@a+b", weights, {"a2": peer}, "a3")
    mixed = learner.branch_vector("syn/a@a+b")
    learner.set_branch("syn/a@a+b", own)
    # Assert
    assert outcome.used == ["a2"] and outcome.refused == {}
    np.testing.assert_allclose(mixed, 0.75 * own + 0.25 * peer, rtol=1e-6, atol=1e-6)


def test_signatures_from_shapes_match_the_built_models(learners: dict) -> None:
    # Prepare
    cfg = parse_config(RAW, "inline")
    info = fleet_info(cfg)
    # Execute
    from_shapes = {a.id: agent_branches(cfg, a, info, get_strategy("parse").sharing, "sliced")
                   for a in cfg.agent_specs}
    # Assert
    for agent, learner in learners.items():
        assert {k: b.signature for k, b in from_shapes[agent].items()} == \
            {k: b.signature for k, b in learner.branches.items()}
    assert from_shapes["a0"]["enc/a"].signature == from_shapes["a2"]["enc/a"].signature


def test_training_lowers_the_loss(learners: dict) -> None:
    # Execute
    first = learners["a2"].train(1)["loss"]
    for _ in range(5):
        last = learners["a2"].train(1)["loss"]
    # Assert
    assert last < first


def test_mix_against_the_public_copy_cancels_a_lossy_lag(learners: dict) -> None:
    # Prepare: neighbours hold a lagging copy of a3 (public = own - 1); a peer's copy lags the
    # same way. A plain average would drag a3 back by the lag; CHOCO's difference does not.
    learner = learners["a3"]
    own = learner.branch_vector("fuse/a+b")
    public = own - 1.0
    peer = own - 1.0
    # Execute
    learner.mix("fuse/a+b", {"a3": 0.5, "a2": 0.5}, {"a2": peer}, "a3", public_copy=public)
    mixed = learner.branch_vector("fuse/a+b")
    learner.set_branch("fuse/a+b", own)
    # Assert
    np.testing.assert_allclose(mixed, own, atol=1e-6)
