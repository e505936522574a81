"""Standardisation: per feature for vectors, per channel for windows, constant features safe."""

from __future__ import annotations

import json

import numpy as np

from edge.data.norm import Norm, fit_norm


def test_vector_stats_are_per_feature() -> None:
    # Prepare
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((500, 3)) * [1.0, 10.0, 0.1] + [5.0, -2.0, 0.0]).astype(np.float32)

    # Execute
    norm = fit_norm(x)
    z = norm.apply(x)

    # Assert
    assert norm.mean.shape == (3,) and norm.std.shape == (3,)
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=0), 1, atol=1e-4)
    assert z.dtype == np.float32


def test_window_stats_are_per_channel_over_samples_and_steps() -> None:
    # Prepare: channel 1 has a large offset that varies along time.
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 2, 50)).astype(np.float32)
    x[:, 1] += np.linspace(0, 100, 50, dtype=np.float32)

    # Execute
    norm = fit_norm(x)
    z = norm.apply(x)

    # Assert: one (mean, std) per channel, not per time step.
    assert norm.mean.shape == (2,)
    np.testing.assert_allclose(z.mean(axis=(0, 2)), 0, atol=1e-4)
    np.testing.assert_allclose(z.std(axis=(0, 2)), 1, atol=1e-4)
    assert abs(z[:, 1, 0].mean()) > 1  # the trend is kept: per-step stats would remove it


def test_constant_feature_gets_std_one_and_finite_output() -> None:
    # Prepare
    x = np.c_[np.full(10, 3.0), np.arange(10.0)].astype(np.float32)

    # Execute
    norm = fit_norm(x)

    # Assert
    assert norm.std[0] == 1.0
    assert np.isfinite(norm.apply(x)).all()
    np.testing.assert_array_equal(norm.apply(x)[:, 0], 0)


def test_dict_round_trip_is_json_ready() -> None:
    # Prepare
    norm = fit_norm(np.arange(12, dtype=np.float32).reshape(4, 3))

    # Execute
    back = Norm.from_dict(json.loads(json.dumps(norm.to_dict())))

    # Assert
    np.testing.assert_array_equal(back.mean, norm.mean)
    np.testing.assert_array_equal(back.std, norm.std)
