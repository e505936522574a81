"""One agent's learning state: model, optimizer, data, branches; train, evaluate, read/write branches."""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from edge.config import FleetConfig
from edge.data import AgentData
from edge.losses import objective
from edge.model import AgentModel, ModelSpec
from edge.sharing import branch_key, scope_of


@dataclass(frozen=True)
class Branch:
    """A group of parameters that travels as one flat float32 vector."""

    key: str
    signature: str
    names: tuple[str, ...]     # parameter names, in flatten order
    size: int                  # elements

    @property
    def dense_bytes(self) -> int:
        return 4 * self.size


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    n_test: int
    head_accuracy: dict[str, float]


def model_spec(cfg: FleetConfig, modalities: tuple[str, ...], input_shapes: dict[str, tuple[int, ...]],
               n_classes: int, arch: str) -> ModelSpec:
    """The model an agent holding `modalities` builds under `cfg`."""
    m = cfg.model
    return ModelSpec(modalities=modalities,
                     input_shapes={k: input_shapes[k] for k in modalities},
                     families=dict(cfg.families), n_classes=n_classes, arch=arch, split=m.split,
                     fusion=m.fusion, tensor_rank=m.tensor_rank, combiner=m.combiner,
                     head_hidden=m.head_hidden)


def build_model(spec: ModelSpec, seed: int) -> AgentModel:
    """Build a model whose every submodule is initialised from (seed, its name), so agents that
    share a branch start from the same weights and the first average is not of strangers."""
    model = AgentModel(spec)
    for name, module in model.named_modules():
        if hasattr(module, "reset_parameters") and name:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(zlib.crc32(f"{seed}/{name}".encode()))
                module.reset_parameters()
    return model


def branches_of(model: AgentModel, strategy: str, share_heads: bool) -> dict[str, Branch]:
    """Cut a model's parameters into branches by the strategy's sharing table."""
    mods = model.spec.modalities
    names: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        unit = model.unit_of(name)
        key = branch_key(unit, scope_of(strategy, unit, share_heads), mods)
        if key is not None:
            names.setdefault(key, []).append(name)
    params = dict(model.named_parameters())
    out = {}
    for key, group in names.items():
        shapes = [(n, tuple(params[n].shape)) for n in group]
        digest = hashlib.sha256(repr((key, shapes)).encode()).hexdigest()[:16]
        out[key] = Branch(key, digest, tuple(group), sum(params[n].numel() for n in group))
    return out


class Learner:
    """Trains and evaluates one agent's model on its own data."""

    def __init__(self, cfg: FleetConfig, data: AgentData, model: AgentModel,
                 branches: dict[str, Branch], seed: int) -> None:
        self.cfg = cfg
        self.data = data
        self.model = model
        self.branches = branches
        self.params = dict(model.named_parameters())
        t = cfg.training
        if t.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
        else:
            cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
            self.optimizer = cls(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        self.generator = torch.Generator().manual_seed(seed)
        self.train_x = {m: torch.from_numpy(v) for m, v in data.train.x.items()}
        self.train_y = torch.from_numpy(data.train.y.astype(np.int64))
        self.test_x = {m: torch.from_numpy(v) for m, v in data.test.x.items()}
        self.test_y = torch.from_numpy(data.test.y.astype(np.int64))

    # --- branches ---------------------------------------------------------------------------
    def branch_vector(self, key: str) -> np.ndarray:
        """The branch's parameters flattened into one float32 vector (a copy)."""
        with torch.no_grad():
            flat = torch.cat([self.params[n].reshape(-1) for n in self.branches[key].names])
        return flat.numpy().copy()

    def set_branch(self, key: str, vector: np.ndarray) -> None:
        """Write a flat vector back into the branch's parameters."""
        offset = 0
        with torch.no_grad():
            for name in self.branches[key].names:
                p = self.params[name]
                chunk = torch.from_numpy(vector[offset: offset + p.numel()])
                p.copy_(chunk.view_as(p))
                offset += p.numel()

    def mix(self, key: str, weights: dict[str, float], received: dict[str, np.ndarray],
            self_id: str, public: np.ndarray | None = None) -> list[str]:
        """Gossip-average one branch: x_i += γ sum_j w_ij (x_j - x̂_i), where x̂_i is our copy as
        neighbours hold it (`public`; None: our exact parameters, as with fp32). Taking the
        difference against x̂_i rather than x_i is CHOCO-gossip: with a lossy codec the
        neighbours' copies lag, and the lag then cancels instead of pulling us back. Weights of
        neighbours that sent nothing stay with us. Returns the neighbours whose copies were used."""
        used = [j for j in weights if j != self_id and j in received]
        if not used:
            return []
        own = self.branch_vector(key).astype(np.float64)
        base = own if public is None else public.astype(np.float64)
        mixed = own.copy()
        step = self.cfg.comm.mixing_step
        for j in used:
            mixed += step * weights[j] * (received[j].astype(np.float64) - base)
        self.set_branch(key, mixed.astype(np.float32))
        return used

    # --- training and evaluation ----------------------------------------------------------
    def batches(self) -> Iterator[tuple[dict[str, Tensor], Tensor]]:
        """One epoch of shuffled mini-batches (a trailing batch of one is folded in)."""
        n = len(self.train_y)
        order = torch.randperm(n, generator=self.generator)
        size = self.cfg.training.batch_size
        starts = list(range(0, n, size))
        if len(starts) > 1 and n - starts[-1] < 2:
            starts.pop()
        for i, start in enumerate(starts):
            end = starts[i + 1] if i + 1 < len(starts) else n
            idx = order[start:end]
            yield {m: v[idx] for m, v in self.train_x.items()}, self.train_y[idx]

    def train(self, epochs: int) -> dict[str, float]:
        """Local training; returns mean loss parts over the steps."""
        self.model.train()
        totals = {"loss": 0.0, "combined": 0.0, "align": 0.0, "orth": 0.0}
        steps = 0
        for _ in range(epochs):
            for x, y in self.batches():
                parts = objective(self.model(x), y, self.cfg.losses)
                self.optimizer.zero_grad(set_to_none=True)
                parts.total.backward()
                self.optimizer.step()
                totals["loss"] += parts.total.item()
                totals["combined"] += parts.combined
                totals["align"] += parts.align
                totals["orth"] += parts.orth
                steps += 1
        return {k: v / max(steps, 1) for k, v in totals.items()} | {"steps": steps}

    @torch.no_grad()
    def evaluate(self, modalities: tuple[str, ...] | None = None) -> Evaluation:
        """Accuracy on the agent's own test split, overall and per head, with any subset of its
        modalities (None: all of them)."""
        self.model.eval()
        mods = modalities or self.data.modalities
        out = self.model({m: self.test_x[m] for m in mods})
        y = self.test_y
        accuracy = (out.logits.argmax(-1) == y).float().mean().item()
        heads = {h: (lg.argmax(-1) == y).float().mean().item() for h, lg in out.head_logits.items()}
        return Evaluation(accuracy, len(y), heads)

    def mean_gradients(self) -> dict[str, np.ndarray]:
        """The mean gradient over the whole training split, per shared branch (diagnostics)."""
        self.model.train()
        self.model.zero_grad(set_to_none=True)
        parts = objective(self.model(self.train_x), self.train_y, self.cfg.losses)
        parts.total.backward()
        grads = {}
        for key, branch in self.branches.items():
            flat = [self.params[n].grad.reshape(-1) if self.params[n].grad is not None
                    else torch.zeros(self.params[n].numel()) for n in branch.names]
            grads[key] = torch.cat(flat).numpy().copy()
        self.model.zero_grad(set_to_none=True)
        return grads
