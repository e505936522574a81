"""synthetic-pid: generated multimodal data with known redundant / unique / synergistic bits.

The label is a tuple of independent fair bits, y = sum_j bit_j * 2**j, n_classes = 2**n_bits:

- redundant bits (positions 0 .. R-1) are visible in every modality;
- unique bits, `unique_bits` per modality, are visible only in their own modality;
- synergy bits s: the first modality carries a fresh random mask bit c for each s, every other
  modality carries c XOR s. Each modality alone is independent of s; s = c XOR (c XOR s) is
  only recoverable from a pair that includes the first modality (XOR-like synergy).

Each visible bit b is embedded as (2b - 1) along its own direction in the modality's `dim`-space
(orthonormal directions while the bits fit, random unit directions beyond), plus Gaussian noise
of standard deviation `noise`. So R and U bits are linearly decodable from the modality that
shows them; S bits need a nonlinear combination of two modalities (a small MLP learns it).
Generated with numpy from (the config, the fleet seed); same inputs give the same data.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from edge.config.schema import SyntheticConfig
from edge.data.pool import Pool, freeze


@dataclass(frozen=True)
class PidBits:
    """Ground truth: which label bits are redundant, unique to a modality, or synergistic."""

    n_bits: int
    redundant: tuple[int, ...]
    unique: dict[str, tuple[int, ...]]
    synergy: tuple[int, ...]

    def visible(self, modality: str) -> tuple[int, ...]:
        """The label bits that `modality` alone reveals."""
        return self.redundant + self.unique[modality]


def pid_bits(syn: SyntheticConfig) -> PidBits:
    """Label bit positions by PID role for a synthetic-pid config."""
    pos = syn.redundant_bits
    unique: dict[str, tuple[int, ...]] = {}
    for m in syn.modalities:
        unique[m] = tuple(range(pos, pos + syn.unique_bits))
        pos += syn.unique_bits
    synergy = tuple(range(pos, pos + syn.synergy_bits))
    return PidBits(pos + syn.synergy_bits, tuple(range(syn.redundant_bits)), unique, synergy)


def label_bits(y: np.ndarray, n_bits: int) -> np.ndarray:
    """(N, n_bits) 0/1 matrix of the label bits; column j is bit j of y."""
    return ((np.asarray(y)[:, None] >> np.arange(n_bits)) & 1).astype(np.int64)


@functools.lru_cache(maxsize=8)
def synthetic_pool(syn: SyntheticConfig, seed: int) -> Pool:
    """Generate the synthetic-pid pool (float32 vectors of `dim` per modality)."""
    truth = pid_bits(syn)
    rng = np.random.default_rng([seed, 0x5D])
    bits = rng.integers(0, 2, size=(syn.n_samples, truth.n_bits))
    y = (bits << np.arange(truth.n_bits)).sum(axis=1).astype(np.int64)
    synergy = bits[:, list(truth.synergy)]
    mask = rng.integers(0, 2, size=synergy.shape)
    x: dict[str, np.ndarray] = {}
    for k, m in enumerate(syn.modalities):
        shown = mask if k == 0 else mask ^ synergy
        visible = np.concatenate([bits[:, list(truth.visible(m))], shown], axis=1)
        directions = _directions(rng, visible.shape[1], syn.dim)
        signal = (2.0 * visible - 1.0) @ directions
        x[m] = (signal + syn.noise * rng.standard_normal(signal.shape)).astype(np.float32)
    labels = tuple(format(c, f"0{truth.n_bits}b") for c in range(2**truth.n_bits))
    return freeze(Pool("synthetic-pid", syn.modalities, x, y, labels))


def _directions(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """N unit directions in R^dim, orthonormal when n <= dim."""
    if n == 0:
        return np.zeros((0, dim))
    gauss = rng.standard_normal((dim, n))
    if n <= dim:
        q, _ = np.linalg.qr(gauss)
        orthonormal: np.ndarray = q.T
        return orthonormal
    unit: np.ndarray = (gauss / np.linalg.norm(gauss, axis=0)).T
    return unit
