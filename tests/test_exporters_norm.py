"""Normalisation statistics as stored in the manifest and applied by the runtime."""

from __future__ import annotations

import numpy as np
import pytest

from exporters.norm import apply_norm, norm_entry


def test_per_channel_statistics_broadcast_over_time():
    # Prepare
    x = np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5)
    mean, std = [1.0, 2.0, 3.0], [2.0, 4.0, 8.0]
    # Execute
    entry = norm_entry(mean, std, (3, 5))
    out = apply_norm(x, entry)
    # Assert
    assert entry["shape"] == [3, 1]
    expected = (x - np.array(mean)[:, None]) / np.array(std)[:, None]
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert out.dtype == np.float32


def test_per_feature_statistics_flat_or_shaped():
    # Prepare
    x = np.random.default_rng(1).normal(size=(4, 3, 2)).astype(np.float32)
    mean = np.linspace(-1, 1, 6).reshape(3, 2)
    std = np.linspace(0.5, 2, 6).reshape(3, 2)
    # Execute
    shaped = apply_norm(x, norm_entry(mean, std, (3, 2)))
    flat = apply_norm(x, norm_entry(mean.ravel(), std.ravel(), (3, 2)))
    # Assert
    np.testing.assert_allclose(shaped, (x - mean) / std, rtol=1e-5)
    np.testing.assert_array_equal(shaped, flat)


def test_scalar_statistics():
    entry = norm_entry(2.0, 4.0, (5,))
    np.testing.assert_allclose(apply_norm(np.full((1, 5), 6.0), entry), np.ones((1, 5)))


@pytest.mark.parametrize("mean, std, message", [
    ([0.0] * 4, [1.0] * 4, "4 statistics fit neither one per channel"),
    ([0.0] * 3, [1.0, 0.0, 1.0], "std: expected strictly positive"),
    ([0.0, np.nan, 0.0], [1.0] * 3, "expected finite mean and std"),
    ([0.0] * 3, [1.0] * 2, "mean has shape"),
])
def test_bad_statistics_are_named(mean, std, message):
    with pytest.raises(ValueError, match=message):
        norm_entry(mean, std, (3, 10), source="norm.accel")
