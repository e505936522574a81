"""A user's own data in .npz files: keys `y`, `x_<modality>` and optional `labels`, validated.

Files are read by the bounded reader `devices.npzio` (headers checked before anything is
allocated, at most `max_bytes` for all arrays together: `data.max_npz_bytes` in the config), so
a decompression bomb, a truncated or bit-flipped archive or a renamed .npy is a one-line
`ConfigError`, never a traceback or an allocation of what a header claims.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from devices.npzio import DEFAULT_MAX_BYTES, NpzError
from devices.npzio import read_npz as read_arrays
from edge.data.pool import Pool, freeze
from edge.errors import ConfigError


def read_npz(path: Path, modalities: tuple[str, ...],
             max_bytes: int = DEFAULT_MAX_BYTES) -> Pool:
    """Read and check one npz file holding `modalities`; cached while the file is unchanged.

    Parameters
    ----------
    path : Path
        The file.
    modalities : tuple of str
        Modalities to read (keys ``x_<name>``).
    max_bytes : int
        Cap on the bytes the file's arrays may occupy once read, checked from their headers.

    Raises
    ------
    ConfigError
        An unreadable, malformed or oversized file, or a key missing or not as expected.
    """
    try:
        stat = path.stat()
    except OSError as exc:
        raise ConfigError(str(path), "<file>", f"cannot read the file ({exc.strerror})") from None
    return _read(str(path), stat.st_mtime_ns, stat.st_size, modalities, max_bytes)


@functools.lru_cache(maxsize=64)
def _read(source: str, mtime_ns: int, size: int, modalities: tuple[str, ...],
          max_bytes: int) -> Pool:
    del mtime_ns, size  # part of the cache key only: a rewritten file is read again
    wanted = {"y", "labels", *(f"x_{m}" for m in modalities)}
    try:
        archive = read_arrays(source, keys=wanted, max_bytes=max_bytes)
    except NpzError as exc:
        raise ConfigError(exc.source, exc.field, exc.expected) from None
    y = _labels_column(source, archive)
    names = _class_names(source, archive, y)
    x = {m: _features(source, archive, f"x_{m}", len(y)) for m in modalities}
    return freeze(Pool("npz", modalities, x, y, names))


def _load(source: str, archive: dict[str, np.ndarray], key: str, expected: str) -> np.ndarray:
    if key not in archive:
        raise ConfigError(source, key, f"missing key; expected {expected}")
    return archive[key]


def _labels_column(source: str, archive: dict[str, np.ndarray]) -> np.ndarray:
    y = _load(source, archive, "y", "integer labels of shape (N,)")
    if y.ndim != 1:
        raise ConfigError(source, "y", f"expected integer labels of shape (N,), got {y.shape}")
    if y.dtype.kind not in "iu":
        raise ConfigError(source, "y", f"expected integer labels, got {y.dtype}")
    if len(y) < 2:
        raise ConfigError(source, "y", f"expected at least 2 samples, got {len(y)}")
    if y.min() < 0:
        raise ConfigError(source, "y", f"expected labels >= 0, got {y.min()}")
    return y.astype(np.int64)


def _class_names(source: str, archive: dict[str, np.ndarray], y: np.ndarray) -> tuple[str, ...]:
    n_seen = int(y.max()) + 1
    if "labels" not in archive:
        return tuple(str(c) for c in range(n_seen))
    names = _load(source, archive, "labels", "class names, shape (n_classes,)")
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise ConfigError(source, "labels",
                          f"expected class names as strings of shape (n_classes,), got "
                          f"{names.dtype} {names.shape}")
    if len(names) < n_seen:
        raise ConfigError(source, "labels",
                          f"expected a name for every label in y (0..{n_seen - 1}), got {len(names)}")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def _features(source: str, archive: dict[str, np.ndarray], key: str, rows: int) -> np.ndarray:
    expected = f"float samples of shape ({rows}, ...) like y"
    x = _load(source, archive, key, expected)
    if x.dtype.kind not in "iuf":
        raise ConfigError(source, key, f"expected a numeric array, got {x.dtype}")
    if x.ndim < 2:
        raise ConfigError(source, key,
                          f"expected shape (N, features...) with one row per sample, got {x.shape}")
    if x.shape[0] != rows:
        raise ConfigError(source, key, f"expected {rows} rows like y, got {x.shape[0]}")
    x = x.astype(np.float32)
    bad_rows = int((~np.isfinite(x)).reshape(rows, -1).any(axis=1).sum())
    if bad_rows:
        raise ConfigError(source, key, f"expected finite values, found NaN or inf in {bad_rows} "
                          f"of {rows} rows")
    return x


def agree(pools: dict[str, Pool]) -> tuple[dict[str, tuple[int, ...]], tuple[str, ...]]:
    """Check that per-agent files agree on per-sample shapes and class names.

    `pools` maps file name to pool; returns per-modality sample shapes and the fleet's class
    names (from a `labels` key, or 0..max label over all files).
    """
    shapes: dict[str, tuple[tuple[int, ...], str]] = {}
    named: tuple[tuple[str, ...], str] | None = None
    n_classes = 0
    for source, pool in pools.items():
        for m, x in pool.x.items():
            shape = tuple(x.shape[1:])
            first = shapes.setdefault(m, (shape, source))
            if first[0] != shape:
                raise ConfigError(source, f"x_{m}", f"expected per-sample shape {first[0]} like "
                                  f"in {first[1]}, got {shape}")
        n_classes = max(n_classes, int(pool.y.max()) + 1)
        if not all(name == str(i) for i, name in enumerate(pool.labels)):
            if named is not None and named[0] != pool.labels:
                raise ConfigError(source, "labels",
                                  f"expected the same class names as in {named[1]}")
            named = (pool.labels, source)
    if named is not None:
        if len(named[0]) < n_classes:
            raise ConfigError(named[1], "labels",
                              f"expected a name for every label in the fleet (0..{n_classes - 1})")
        return {m: s for m, (s, _) in shapes.items()}, named[0]
    return {m: s for m, (s, _) in shapes.items()}, tuple(str(c) for c in range(n_classes))
