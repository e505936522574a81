"""Partitioners are seeded, disjoint and covering; Dirichlet skews labels; splits are stratified."""

from __future__ import annotations

import numpy as np
import pytest

from edge.config.schema import PartitionConfig
from edge.data.partition import MAX_DRAWS, partition, train_test_split
from edge.errors import ConfigError

Y = np.repeat(np.arange(10), 200)  # 2000 samples, 10 balanced classes (like mfeat)


def _skew(parts: list[np.ndarray], y: np.ndarray) -> float:
    """Mean share of an agent's samples in its most common class (0.1 = perfectly balanced)."""
    return float(np.mean([np.bincount(y[p], minlength=10).max() / len(p) for p in parts]))


@pytest.mark.parametrize("kind", ["iid", "dirichlet"])
def test_partition_is_disjoint_covering_and_deterministic(kind: str) -> None:
    # Prepare
    part = PartitionConfig(kind=kind, alpha=0.5, min_samples=8)

    # Execute
    parts = partition(Y, 12, part, seed=7, source="f.yaml")
    again = partition(Y, 12, part, seed=7, source="f.yaml")
    other = partition(Y, 12, part, seed=8, source="f.yaml")

    # Assert
    joined = np.concatenate(parts)
    assert len(joined) == len(Y) and len(np.unique(joined)) == len(Y)   # disjoint + covering
    assert all(len(p) >= 8 for p in parts)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_iid_sizes_differ_by_at_most_one_and_labels_stay_balanced() -> None:
    # Execute
    parts = partition(Y, 7, PartitionConfig(kind="iid"), seed=0, source="f.yaml")

    # Assert
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert _skew(parts, Y) < 0.2


def test_small_alpha_gives_more_label_skew_than_large_alpha() -> None:
    # Execute
    skewed = partition(Y, 10, PartitionConfig(kind="dirichlet", alpha=0.1), 0, "f.yaml")
    mild = partition(Y, 10, PartitionConfig(kind="dirichlet", alpha=100.0), 0, "f.yaml")
    iid = partition(Y, 10, PartitionConfig(kind="iid"), 0, "f.yaml")

    # Assert: with alpha 0.1 most of an agent's data is one class.
    assert _skew(skewed, Y) > 0.5
    assert _skew(mild, Y) < 0.2
    assert abs(_skew(mild, Y) - _skew(iid, Y)) < 0.05


def test_too_few_samples_for_min_samples_is_a_config_error() -> None:
    # Execute
    with pytest.raises(ConfigError) as info:
        partition(Y[:50], 10, PartitionConfig(kind="iid", min_samples=8), 0, "f.yaml")

    # Assert
    assert (info.value.source, info.value.field) == ("f.yaml", "data.partition.min_samples")
    assert "80" in info.value.expected and "50" in info.value.expected


def test_impossible_dirichlet_min_samples_gives_up_with_a_clear_error() -> None:
    # Prepare: 100 samples over 10 agents, each needing 10, with extreme skew: never happens.
    part = PartitionConfig(kind="dirichlet", alpha=0.01, min_samples=10)

    # Execute
    with pytest.raises(ConfigError) as info:
        partition(Y[::20], 10, part, 0, "f.yaml")

    # Assert
    assert info.value.field == "data.partition.min_samples"
    assert f"{MAX_DRAWS}" in info.value.expected and "alpha" in info.value.expected


def test_train_test_split_is_stratified_disjoint_and_seeded() -> None:
    # Prepare
    y = np.repeat(np.arange(4), [40, 20, 12, 8])

    # Execute
    train, test = train_test_split(y, 0.25, np.random.default_rng(1))
    train2, test2 = train_test_split(y, 0.25, np.random.default_rng(1))

    # Assert
    assert len(np.intersect1d(train, test)) == 0
    assert len(train) + len(test) == len(y)
    assert np.array_equal(test, test2) and np.array_equal(train, train2)
    # every class sends its quarter to test, to within one sample
    test_counts = np.bincount(y[test], minlength=4)
    assert np.all(np.abs(test_counts - np.array([10, 5, 3, 2])) <= 1)
    assert len(test) in (19, 20, 21)


@pytest.mark.parametrize(("y", "fraction"), [(np.array([0, 1]), 0.05), (np.array([3, 3]), 0.8),
                                             (np.array([0, 1, 2]), 0.05)])
def test_train_test_split_keeps_at_least_one_sample_on_each_side(y: np.ndarray,
                                                                 fraction: float) -> None:
    # Execute
    for seed in range(20):
        train, test = train_test_split(y, fraction, np.random.default_rng(seed))

        # Assert
        assert len(train) >= 1 and len(test) >= 1
        assert sorted(np.concatenate([train, test]).tolist()) == list(range(len(y)))
