"""Training objective: combined + auxiliary head cross-entropy, redundant alignment, separation."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn import functional as F

from edge.config.schema import LossConfig
from edge.learning.model import ModelOutput


class LossParts(NamedTuple):
    """The total loss (a tensor to back-propagate) and its parts as floats."""

    total: Tensor
    combined: float
    aux: float
    align: float
    orth: float


def info_nce(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    """Symmetric InfoNCE: row i of `a` should match row i of `b` among the batch."""
    a = F.normalize(a, dim=-1)
    b = F.normalize(b, dim=-1)
    logits = a @ b.T / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def cross_orthogonality(r: Tensor, u: Tensor) -> Tensor:
    """Mean squared correlation between redundant and unique features over the batch (0 when
    the two slices carry decorrelated directions).
    """
    r = F.normalize(r - r.mean(dim=0), dim=0)
    u = F.normalize(u - u.mean(dim=0), dim=0)
    return (r.T @ u).pow(2).mean()


def objective(out: ModelOutput, y: Tensor, weights: LossConfig) -> LossParts:
    """The loss of docs/ARCHITECTURE.md §Method for one batch."""
    combined = F.cross_entropy(out.logits, y)
    heads = [F.cross_entropy(logits, y) for logits in out.head_logits.values()]
    # A plain model's only head *is* the combined prediction: no auxiliary term.
    aux = torch.stack(heads).sum() if len(heads) > 1 else combined.new_zeros(())
    align = combined.new_zeros(())
    orth = combined.new_zeros(())
    mods = list(out.slices)
    if len(mods) > 1 and y.shape[0] > 1 and weights.align > 0:
        pairs = [(a, b) for i, a in enumerate(mods) for b in mods[i + 1:]]
        align = torch.stack([info_nce(out.slices[a].r, out.slices[b].r, weights.temperature)
                             for a, b in pairs]).mean()
    if mods and y.shape[0] > 1 and weights.orth > 0:
        orth = torch.stack([cross_orthogonality(s.r, s.u) for s in out.slices.values()]).mean()
    total = combined + weights.aux_head * aux + weights.align * align + weights.orth * orth
    return LossParts(total, combined.item(), aux.item(), align.item(), orth.item())
