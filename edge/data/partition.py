"""Seeded partitioners (IID, Dirichlet label skew) and the stratified per-agent train/test split."""

from __future__ import annotations

import numpy as np

from edge.config.schema import PartitionConfig
from edge.errors import ConfigError

MAX_DRAWS = 1000


def partition(y: np.ndarray, n_parts: int, part: PartitionConfig, seed: int, source: str,
              min_count: int | None = None) -> list[np.ndarray]:
    """Split sample indices 0..len(y)-1 over n_parts agents: disjoint, covering, sorted.

    Every part gets at least `min_count` samples (default `part.min_samples`); Dirichlet draws
    are repeated until that holds, at most MAX_DRAWS times.
    """
    need = part.min_samples if min_count is None else min_count
    if len(y) < n_parts * need:
        raise ConfigError(source, "data.partition.min_samples",
                          f"expected at least {n_parts} agents x {need} = {n_parts * need} "
                          f"samples, the data has {len(y)}; lower min_samples or use fewer agents")
    rng = np.random.default_rng([seed, 0xDA7A])
    if part.kind == "iid":
        return iid_partition(len(y), n_parts, rng)
    for _ in range(MAX_DRAWS):
        parts = dirichlet_partition(y, n_parts, part.alpha, rng)
        if min(len(p) for p in parts) >= need:
            return parts
    raise ConfigError(source, "data.partition.min_samples",
                      f"no Dirichlet(alpha={part.alpha:g}) draw in {MAX_DRAWS} gave each of the "
                      f"{n_parts} agents at least {need} samples; raise alpha, lower "
                      "min_samples or use fewer agents")


def iid_partition(n: int, n_parts: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A random split into n_parts parts whose sizes differ by at most one."""
    order = rng.permutation(n)
    return [np.sort(p) for p in np.array_split(order, n_parts)]


def dirichlet_partition(y: np.ndarray, n_parts: int, alpha: float,
                        rng: np.random.Generator) -> list[np.ndarray]:
    """Label skew: each class is shared out by proportions drawn from Dirichlet(alpha, ..., alpha).

    Small alpha gives each agent few classes; large alpha tends to IID.
    """
    shares: list[list[np.ndarray]] = [[] for _ in range(n_parts)]
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        proportions = rng.dirichlet(np.full(n_parts, alpha))
        cuts = np.floor(np.cumsum(proportions)[:-1] * len(members)).astype(int)
        for k, chunk in enumerate(np.split(members, cuts)):
            shares[k].append(chunk)
    return [np.sort(np.concatenate(s)).astype(np.int64) for s in shares]


def train_test_split(y: np.ndarray, test_fraction: float,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Positions (into y) of the train and test samples, stratified by class, both non-empty.

    Systematic sampling over a class-grouped random order: every class sends its share of
    test samples to within one, and the total is test_fraction * len(y) rounded at random.
    """
    n = len(y)
    if n < 2:
        raise ValueError("a train/test split needs at least 2 samples")
    order = rng.permutation(n)
    order = order[np.argsort(y[order], kind="stable")]
    start = rng.random()
    ticks = np.floor(np.arange(n + 1) * test_fraction + start)
    is_test = np.diff(ticks) > 0
    # Guarantee at least one sample on each side, taken from the largest class.
    if not is_test.any() or is_test.all():
        largest = np.flatnonzero(y[order] == np.bincount(y).argmax())
        is_test[rng.choice(largest)] = not is_test.any()
    return np.sort(order[~is_test]), np.sort(order[is_test])
