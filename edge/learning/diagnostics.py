"""Gradient conflict: do unimodal and multimodal holders pull a shared branch the same way?"""

from __future__ import annotations

from itertools import combinations

import numpy as np


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity (0 when either vector is zero)."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(a @ b) / (na * nb) if na > 0 and nb > 0 else 0.0


def _mean_pairwise(vectors: list[np.ndarray]) -> float | None:
    pairs = list(combinations(vectors, 2))
    return float(np.mean([cosine(a, b) for a, b in pairs])) if pairs else None


def gradient_conflict(grads: dict[str, dict[str, np.ndarray]], multimodal: dict[str, bool],
                      signatures: dict[str, dict[str, str]]) -> dict[str, dict[str, float | None]]:
    """Per shared branch (key held with one signature by both unimodal and multimodal agents):

    - `between`: cosine between the unimodal group's mean gradient and the multimodal group's;
    - `within_unimodal`, `within_multimodal`: mean pairwise cosine inside each group — the
      baseline that label skew alone produces, to read `between` against.
    `grads[agent][key]` is that agent's mean gradient on the branch.
    """
    out: dict[str, dict[str, float | None]] = {}
    keys = {k for g in grads.values() for k in g}
    for key in sorted(keys):
        holders = [a for a in grads if key in grads[a]]
        by_sig: dict[str, list[str]] = {}
        for a in holders:
            by_sig.setdefault(signatures[a][key], []).append(a)
        group = max(by_sig.values(), key=len)
        uni = [grads[a][key] for a in group if not multimodal[a]]
        multi = [grads[a][key] for a in group if multimodal[a]]
        if not uni or not multi:
            continue
        out[key] = {
            "between": cosine(np.mean(uni, axis=0), np.mean(multi, axis=0)),
            "within_unimodal": _mean_pairwise(uni),
            "within_multimodal": _mean_pairwise(multi),
            "n_unimodal": len(uni),
            "n_multimodal": len(multi),
        }
    return out
