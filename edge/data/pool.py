"""A data pool: every sample of a data set with all its modalities, as read-only arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Pool:
    """All samples of a data set: x[modality] has first dim N, y holds labels 0..n_classes-1.

    `series` pools hold whole recordings (N, channels, steps) that are cut into windows only
    after partitioning and the train/test split, so one recording never straddles the split.
    The arrays are read-only: pools are cached and shared.
    """

    name: str
    modalities: tuple[str, ...]
    x: dict[str, np.ndarray]
    y: np.ndarray
    labels: tuple[str, ...]
    series: bool = False

    @property
    def n_samples(self) -> int:
        """Number of samples (recordings, for series pools)."""
        return len(self.y)

    @property
    def n_classes(self) -> int:
        """Number of classes."""
        return len(self.labels)


def select(pool: Pool, modalities: tuple[str, ...]) -> Pool:
    """The same pool restricted to `modalities` (which it must hold)."""
    if pool.modalities == modalities:
        return pool
    return Pool(pool.name, modalities, {m: pool.x[m] for m in modalities}, pool.y, pool.labels,
                pool.series)


def freeze(pool: Pool) -> Pool:
    """Mark the arrays read-only so a cached pool cannot be changed by a caller."""
    for arr in (*pool.x.values(), pool.y):
        arr.flags.writeable = False
    return pool
