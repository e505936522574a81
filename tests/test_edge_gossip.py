"""Gossip maths: the gate on neighbours' copies and the robust mixing rules, checked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from edge.learning.gossip import (
    Mixing,
    adaptive_radius,
    clip,
    consensus_step,
    coordinate_median,
    robust_step,
    screen,
    trimmed_mean,
)


def test_screen_refuses_non_finite_huge_far_and_misshapen_copies() -> None:
    # Prepare
    own = np.ones(4, np.float32)  # norm 2
    received = {"ok": np.full(4, 1.5, np.float32), "nan": np.array([1, np.nan, 1, 1], np.float32),
                "huge": np.full(4, 1e30, np.float32), "far": np.full(4, -9.0, np.float32),
                "short": np.ones(3, np.float32)}
    # Execute
    admitted, refused = screen(own, None, received, max_norm_ratio=10.0)
    # Assert: "far" has norm 18 <= 20 but lies 20 from us... within; -11 is not
    assert list(admitted) == ["ok", "far"]
    assert refused == {"nan": "non-finite", "huge": "norm", "short": "shape"}
    _, refused_far = screen(own, None, {"far": np.full(4, -10.5, np.float32)}, 10.0)
    assert refused_far == {"far": "norm"}
    _, refused_distance = screen(own, -own * 9.5, {"x": own * 2}, 10.0)
    assert refused_distance == {"x": "distance"}


def test_gossip_rule_is_exactly_the_consensus_step() -> None:
    # Prepare
    rng = np.random.default_rng(0)
    own, pub = rng.standard_normal(50).astype(np.float32), rng.standard_normal(50).astype(np.float32)
    received = {"b": rng.standard_normal(50).astype(np.float32),
                "c": rng.standard_normal(50).astype(np.float32)}
    weights = {"a": 0.4, "b": 0.3, "c": 0.3}
    # Execute
    robust = robust_step(own, pub, received, weights, 0.3, Mixing())
    plain = consensus_step(own, pub, received, weights, 0.3)
    # Assert
    assert np.array_equal(robust, plain)


def test_median_and_trimmed_mean_by_hand() -> None:
    # Prepare
    stacked = np.array([[1.0, 10.0], [2.0, -5.0], [100.0, 0.0], [3.0, 1.0], [4.0, 2.0]])
    # Execute / Assert
    np.testing.assert_array_equal(coordinate_median(stacked), [3.0, 1.0])
    np.testing.assert_allclose(trimmed_mean(stacked, 1), [3.0, 1.0])      # (2+3+4)/3, (0+1+2)/3
    np.testing.assert_allclose(trimmed_mean(stacked, 5), coordinate_median(stacked))
    np.testing.assert_allclose(trimmed_mean(stacked[:2], 1), [1.5, 2.5])  # two values: mean


def test_median_rule_ignores_one_outlier_of_three() -> None:
    # Prepare
    own = np.zeros(3, np.float32)
    received = {"honest": np.full(3, 0.2, np.float32), "liar": np.full(3, 5.0, np.float32)}
    # Execute
    mixed = robust_step(own, None, received, {"honest": 1 / 3, "liar": 1 / 3}, 1.0,
                        Mixing(rule="median"))
    # Assert: median of {0, 0.2, 5} per coordinate
    np.testing.assert_allclose(mixed, 0.2, rtol=1e-6)


def test_clip_and_adaptive_radius() -> None:
    # Execute / Assert
    np.testing.assert_allclose(clip(np.array([3.0, 4.0]), 1.0), [0.6, 0.8])
    np.testing.assert_array_equal(clip(np.array([3.0, 4.0]), 6.0), [3.0, 4.0])
    assert adaptive_radius([1.0, 9.0, 2.0], 1) == 2.0
    assert adaptive_radius([1.0, 9.0, 2.0], 2) == 1.0
    assert adaptive_radius([4.0], 1) == 4.0


def test_clipped_gossip_bounds_the_pull_of_the_farthest_neighbour() -> None:
    # Prepare
    own = np.zeros(2, np.float32)
    received = {"b": np.array([1.0, 0.0], np.float32), "c": np.array([0.0, 2.0], np.float32),
                "liar": np.array([300.0, 400.0], np.float32)}
    weights = dict.fromkeys(received, 0.25)
    # Execute
    mixed = robust_step(own, None, received, weights, 1.0, Mixing(rule="clipped-gossip"))
    # Assert: radius 2 (second largest distance); the liar's pull is clipped to norm 2
    expected = 0.25 * (np.array([1.0, 0.0]) + np.array([0.0, 2.0]) + np.array([1.2, 1.6]))
    np.testing.assert_allclose(mixed, expected, rtol=1e-6)
    fixed = robust_step(own, None, received, weights, 1.0,
                        Mixing(rule="clipped-gossip", clip_radius=0.5))
    assert np.linalg.norm(fixed) <= 0.25 * 0.5 * 3 + 1e-6


@pytest.mark.parametrize("rule", ["median", "trimmed-mean", "clipped-gossip"])
def test_robust_rules_with_honest_equal_copies_reach_them(rule: str) -> None:
    # Prepare
    own = np.zeros(5, np.float32)
    received = {j: np.ones(5, np.float32) for j in "bcd"}
    # Execute
    mixed = robust_step(own, None, received, dict.fromkeys("bcd", 0.25), 1.0, Mixing(rule=rule))
    # Assert: every rule moves towards the agreeing neighbours
    assert np.all(mixed > 0.5)
