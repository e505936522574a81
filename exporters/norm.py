"""Input normalisation as stored in the manifest: the one place both exporter and runtime apply it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from exporters.manifest import NormEntry
from exporters.schema import FLOAT_LIMIT, FLOAT_TINY

NormArrays = tuple[np.ndarray, np.ndarray]


def norm_entry(mean: Any, std: Any, sample_shape: Sequence[int], *,
               source: str = "norm") -> NormEntry:
    """Manifest form of (mean, std) for inputs of `sample_shape`.

    Parameters
    ----------
    mean, std : array_like
        A scalar, one value per channel (first axis of a sample) or one value per feature
        (the whole sample, flat or shaped); the same shape for both.
    sample_shape : sequence of int
        The shape of one input sample.
    source : str
        Prefix of error messages (file and field).

    Returns
    -------
    NormEntry
        Flat `mean` and `std` lists plus the `shape` they broadcast to over one sample.

    Raises
    ------
    ValueError
        Shapes that fit neither form, or statistics the loader would refuse: non-finite, |mean|
        over `FLOAT_LIMIT`, or std outside [`FLOAT_TINY`, `FLOAT_LIMIT`] (so a bundle that
        exports always loads, and float32 normalisation stays finite).
    """
    mean_arr = np.asarray(mean, dtype=np.float64)
    std_arr = np.asarray(std, dtype=np.float64)
    if mean_arr.shape != std_arr.shape:
        raise ValueError(f"{source}: mean has shape {mean_arr.shape} but std has {std_arr.shape}")
    if not (np.all(np.isfinite(mean_arr)) and np.all(np.isfinite(std_arr))):
        raise ValueError(f"{source}: expected finite mean and std")
    if np.any(np.abs(mean_arr) > FLOAT_LIMIT):
        raise ValueError(f"{source}: mean: expected magnitudes up to {FLOAT_LIMIT:g}")
    if np.any(std_arr < FLOAT_TINY) or np.any(std_arr > FLOAT_LIMIT):
        raise ValueError(f"{source}: std: expected strictly positive values in "
                         f"[{FLOAT_TINY:g}, {FLOAT_LIMIT:g}] (the divisor used in training, "
                         "epsilon included)")
    sample = tuple(int(d) for d in sample_shape)
    size = mean_arr.size
    if size == 1:
        shape = [1] * len(sample)
    elif size == math.prod(sample):
        shape = list(sample)
    elif mean_arr.ndim == 1 and len(sample) >= 1 and size == sample[0]:
        shape = [sample[0]] + [1] * (len(sample) - 1)
    else:
        raise ValueError(f"{source}: {size} statistics fit neither one per channel ({sample[0]}) "
                         f"nor one per feature ({math.prod(sample)}) of samples shaped {sample}")
    return {"mean": mean_arr.ravel().tolist(), "std": std_arr.ravel().tolist(), "shape": shape}


def norm_arrays(entry: NormEntry) -> NormArrays:
    """(mean, std) of a manifest entry as float32 arrays shaped to broadcast over one sample."""
    shape = tuple(entry["shape"])
    return (np.asarray(entry["mean"], dtype=np.float32).reshape(shape),
            np.asarray(entry["std"], dtype=np.float32).reshape(shape))


def apply_norm(x: np.ndarray, entry: NormEntry | NormArrays) -> np.ndarray:
    """(x - mean) / std over a batch `x` of shape (batch, *sample_shape), as float32.

    `entry` is a manifest entry or the (mean, std) pair from `norm_arrays`.
    """
    mean, std = norm_arrays(entry) if isinstance(entry, dict) else entry
    out: np.ndarray = ((np.asarray(x, dtype=np.float32) - mean) / std).astype(np.float32,
                                                                              copy=False)
    return out
