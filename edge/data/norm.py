"""Per-feature / per-channel standardisation fitted on one agent's own training data."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# A constant feature keeps std 1 instead of dividing by (almost) zero.
MIN_STD = 1e-6


@dataclass(frozen=True)
class Norm:
    """Mean and std along axis 1 of a batch: per feature of (N, D), per channel of (N, C, T)."""

    mean: np.ndarray
    std: np.ndarray

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(x - mean) / std for a batch (N, C, ...), as float32."""
        shape = (1, -1) + (1,) * (x.ndim - 2)
        out: np.ndarray = ((x - self.mean.reshape(shape)) / self.std.reshape(shape)).astype(np.float32)
        return out

    def to_dict(self) -> dict[str, list[float]]:
        """JSON-ready stats for checkpoints and the ONNX manifest."""
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, raw: dict[str, list[float]]) -> Norm:
        """Inverse of `to_dict`."""
        return cls(np.asarray(raw["mean"], dtype=np.float32),
                   np.asarray(raw["std"], dtype=np.float32))


def fit_norm(x: np.ndarray) -> Norm:
    """Stats over every axis but 1 of a training batch (N, C, ...)."""
    axes = (0, *range(2, x.ndim))
    mean = x.mean(axis=axes, dtype=np.float64)
    std = x.std(axis=axes, dtype=np.float64)
    std = np.where(std < MIN_STD, 1.0, std)
    return Norm(mean.astype(np.float32), std.astype(np.float32))
