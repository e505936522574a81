"""One agent's learning state: model, optimizer, data, branches; train, evaluate, read/write branches."""

from __future__ import annotations

import copy
import hashlib
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from edge.config.schema import AgentSpec, FleetConfig, consensus_step
from edge.data.fleet_data import AgentData, DataInfo
from edge.errors import UserError
from edge.learning.gossip import Holdings, Mixing, robust_step, screen
from edge.learning.losses import objective
from edge.learning.model import AgentModel, ModelSpec
from edge.learning.sharing import SharingRow, SynergySetting, branch_key, scope_of


@dataclass(frozen=True)
class Branch:
    """A group of parameters that travels as one flat float32 vector."""

    key: str
    signature: str
    names: tuple[str, ...]     # parameter names, in flatten order
    size: int                  # elements

    @property
    def dense_bytes(self) -> int:
        """Size of the branch as dense float32, bytes."""
        return 4 * self.size


class MixOutcome(NamedTuple):
    """What mixing one branch did: neighbours mixed, and neighbours refused with the reason."""

    used: list[str]
    refused: dict[str, str]


class Snapshot(NamedTuple):
    """A copy of an agent's model and optimizer state (`Learner.snapshot`)."""

    model: dict[str, Tensor]
    optimizer: dict[str, Any]


@dataclass(frozen=True)
class Evaluation:
    """Test accuracy of an agent's model, overall and per head."""

    accuracy: float
    n_test: int
    head_accuracy: dict[str, float]


def model_spec(cfg: FleetConfig, modalities: tuple[str, ...], input_shapes: dict[str, tuple[int, ...]],
               n_classes: int, arch: str) -> ModelSpec:
    """Return the model spec an agent holding `modalities` builds under `cfg`.

    Raises
    ------
    UserError
        For `model.split: auto` or `model.synergy_scope: auto` not resolved before round 0
        (edge.learning.auto_model).
    """
    m = cfg.model
    if isinstance(m.split, str) or m.synergy_scope == "auto":
        raise UserError(f"{cfg.source}: model: split/synergy_scope 'auto' is resolved fleet-wide "
                        "before round 0 by `parse-edge trial` or `parse-edge simulate`; an agent "
                        "started alone needs --split R,U,S and --synergy-scope (as a trial passes them)")
    return ModelSpec(modalities=modalities,
                     input_shapes={k: input_shapes[k] for k in modalities},
                     families=dict(cfg.families), n_classes=n_classes, arch=arch, split=m.split,
                     fusion=m.fusion, tensor_rank=m.tensor_rank, combiner=m.combiner,
                     head_hidden=m.head_hidden)


def build_model(spec: ModelSpec, seed: int) -> AgentModel:
    """Build a model whose every submodule is initialised from (seed, its name).

    Agents that share a branch start from the same weights: the first average is not of strangers.
    """
    model = AgentModel(spec)
    for name, module in model.named_modules():
        if hasattr(module, "reset_parameters") and name:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(zlib.crc32(f"{seed}/{name}".encode()))
                module.reset_parameters()
    return model


def branches_of(model: AgentModel, row: SharingRow, share_heads: bool,
                synergy: SynergySetting = "combination") -> dict[str, Branch]:
    """Cut a model's parameters into branches by a strategy's sharing row (and `model.synergy_scope`)."""
    mods = model.spec.modalities
    names: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        unit = model.unit_of(name)
        key = branch_key(unit, scope_of(row, unit, share_heads, synergy), mods)
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
        c = cfg.comm
        self.mixing = Mixing(c.mixing, c.trim, c.clip_radius, c.clip_neighbours, c.max_norm_ratio)
        # Neighbour -> first round it is mixed again, after its copy broke our model (guard.py).
        self.quarantine: dict[str, int] = {}
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
        """Flatten the branch's parameters into one float32 vector (a copy)."""
        with torch.no_grad():
            flat = torch.cat([self.params[n].reshape(-1) for n in self.branches[key].names])
        vector: np.ndarray = flat.numpy().copy()
        return vector

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
            self_id: str, public_copy: np.ndarray | None = None) -> MixOutcome:
        """Mix one branch with the neighbours' copies under the fleet's `comm.mixing` rule.

        Every copy passes the gate first (edge.learning.gossip.screen: finite, of our shape,
        norm and distance within `comm.max_norm_ratio` of our own); the admitted ones are
        combined by edge.learning.gossip.robust_step (plain gossip: the CHOCO consensus step).
        `public_copy` is our branch as the neighbours decoded it (None: they hold it exactly).
        Weights of neighbours that sent nothing, or were refused, stay with us. A mix whose
        result is not finite (float32 overflow) is not applied and refuses every copy.

        Returns
        -------
        MixOutcome
            The neighbours mixed, and the refused ones with the reason.
        """
        offered = {j: received[j] for j in weights if j != self_id and j in received}
        if not offered:
            return MixOutcome([], {})
        own = self.branch_vector(key)
        used, refused = screen(own, public_copy, offered, self.mixing.max_norm_ratio)
        if not used:
            return MixOutcome([], refused)
        mixed = robust_step(own, public_copy, used, weights, consensus_step(self.cfg.comm),
                            self.mixing)
        if not np.isfinite(mixed).all():
            return MixOutcome([], refused | dict.fromkeys(used, "non-finite mix"))
        self.set_branch(key, mixed)
        return MixOutcome(list(used), refused)

    # --- last good state --------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """Copy the model and optimizer state, to come back to (edge.learning.guard)."""
        model = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return Snapshot(model, copy.deepcopy(self.optimizer.state_dict()))

    def restore(self, snapshot: Snapshot) -> None:
        """Put back a `snapshot` (the copy stays valid for another restore)."""
        self.model.load_state_dict(snapshot.model)
        self.optimizer.load_state_dict(copy.deepcopy(snapshot.optimizer))

    def is_finite(self) -> bool:
        """Whether every parameter of the model is finite."""
        with torch.no_grad():
            return all(bool(torch.isfinite(p).all()) for p in self.model.parameters())

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
        """Measure accuracy on the agent's own test split, overall and per head.

        With any subset of its modalities (None: all of them).
        """
        self.model.eval()
        mods = modalities or self.data.modalities
        out = self.model({m: self.test_x[m] for m in mods})
        y = self.test_y
        accuracy = (out.logits.argmax(-1) == y).float().mean().item()
        heads = {h: (lg.argmax(-1) == y).float().mean().item() for h, lg in out.head_logits.items()}
        return Evaluation(accuracy, len(y), heads)

    def mean_gradients(self) -> dict[str, np.ndarray]:
        """Compute the mean gradient over the training split, per shared branch (diagnostics)."""
        self.model.train()
        self.model.zero_grad(set_to_none=True)
        parts = objective(self.model(self.train_x), self.train_y, self.cfg.losses)
        parts.total.backward()
        grads = {}
        for key, branch in self.branches.items():
            flat = [torch.zeros(p.numel()) if (g := (p := self.params[n]).grad) is None
                    else g.reshape(-1) for n in branch.names]
            grads[key] = torch.cat(flat).numpy().copy()
        self.model.zero_grad(set_to_none=True)
        return grads


def make_learner(cfg: FleetConfig, spec: AgentSpec, data: AgentData, info: DataInfo,
                 row: SharingRow, arch: str) -> Learner:
    """Make an agent's learner: its model (seeded per unit), branches by the sharing row, optimizer."""
    seed = cfg.training.seed
    model = build_model(model_spec(cfg, spec.modalities, info.input_shapes, len(info.labels), arch),
                        seed)
    branches = branches_of(model, row, cfg.model.share_heads, cfg.model.synergy_scope)
    agent_seed = seed * 1000 + cfg.agent_ids.index(spec.id)
    return Learner(cfg, data, model, branches, agent_seed)


def agent_branches(cfg: FleetConfig, spec: AgentSpec, info: DataInfo, row: SharingRow,
                   arch: str) -> dict[str, Branch]:
    """Compute the branches an agent holds from shapes alone (no weights allocated)."""
    with torch.device("meta"):
        model = AgentModel(model_spec(cfg, spec.modalities, info.input_shapes, len(info.labels),
                                      arch))
    return branches_of(model, row, cfg.model.share_heads, cfg.model.synergy_scope)


def holdings(cfg: FleetConfig, info: DataInfo, row: SharingRow, arch: str) -> Holdings:
    """Every agent's {branch key: signature}: what each agent can average with whom."""
    return {
        spec.id: {k: b.signature for k, b in agent_branches(cfg, spec, info, row, arch).items()}
        for spec in cfg.agent_specs
    }
