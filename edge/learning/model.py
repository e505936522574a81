"""The agent model: per-modality encoders with feature fission, fusion, slice heads, combiners.

Sliced (PARSE) architecture, for an agent holding modalities M:
    E_m(x_m) = trunk_m -> (r_m, u_m[, s_m])       redundant / unique / synergy-input slices
    H_R(mean_m r_m), H_U[m](u_m), H_S(F(s_a, s_b, ...))   one head per decomposed feature
    logits = combiner(head logits)                 sum (default), mean, gate, fusion
Plain late-fusion architecture ("plain"): E_m(x_m) = z_m, head = MLP(concat z_m).
Monolithic ("shared"): E_m(x_m) = z_m in one shared space, head = MLP(sum z_m).
A missing modality drops its heads and every synergy head that needs it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from edge.config.schema import FamilyConfig
from edge.learning.sharing import Unit


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build one agent's model (checkpoints store it as a dict)."""

    modalities: tuple[str, ...]
    input_shapes: dict[str, tuple[int, ...]]
    families: dict[str, FamilyConfig]   # every fleet modality's family, not only this agent's
    n_classes: int
    arch: str = "sliced"          # sliced | plain | shared
    split: tuple[float, ...] = (1.0, 1.0, 1.0)
    fusion: str = "concat"        # concat | sum | gated | tensor
    tensor_rank: int = 4
    combiner: str = "sum"         # sum | mean | gate | fusion
    head_hidden: int = 0          # 0: linear slice heads; else one hidden ReLU layer this wide
    head_names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.arch == "sliced":
            names = ("R", *(f"U_{m}" for m in self.modalities))
            names += ("S",) if len(self.modalities) > 1 else ()
        else:
            names = ("late",)
        object.__setattr__(self, "head_names", names)

    @property
    def multimodal(self) -> bool:
        """Whether the agent holds more than one modality (and so a synergy head)."""
        return len(self.modalities) > 1

    @property
    def fused_width(self) -> int:
        """Width of the fused synergy feature: a whole latent's width, because XOR-like
        structure needs hidden units (a slice-wide fusion, 16 at the defaults, learnt one
        synergistic bit out of two on synthetic-pid: 54.6% vs 99.2% at 48 wide).
        """
        return max(self.families[m].latent for m in self.modalities) if self.multimodal else 0


def slice_widths(latent: int, split: tuple[float, ...]) -> tuple[int, int, int]:
    """Redundant / unique / synergy widths for a latent width and a split ratio.

    The widths sum to `latent`; the rounding remainder goes to the slices that lost the most.
    """
    total = sum(split)
    raw = [latent * s / total for s in split]
    widths = [int(w) for w in raw]
    for i in sorted(range(3), key=lambda i: widths[i] - raw[i])[: latent - sum(widths)]:
        widths[i] += 1
    return widths[0], widths[1], widths[2]


class Slices(NamedTuple):
    """One modality's slices: redundant, unique and synergy input (None: unimodal)."""

    r: Tensor
    u: Tensor
    s: Tensor | None


class ModelOutput(NamedTuple):
    """What the model returns: the combined logits, each head's logits and the slices."""

    logits: Tensor                      # combined prediction
    head_logits: dict[str, Tensor]      # per head that could run on the present modalities
    slices: dict[str, Slices]           # sliced arch only


def trunk(family: FamilyConfig, in_shape: tuple[int, ...]) -> tuple[nn.Module, int]:
    """The shared body of an encoder and its output width."""
    layers: list[nn.Module] = []
    if family.kind == "conv1d":
        channels = in_shape[0]
        for width in family.hidden:
            layers += [nn.Conv1d(channels, width, family.kernel, padding=family.kernel // 2),
                       nn.ReLU()]
            channels = width
        return nn.Sequential(*layers, GlobalPool()), 2 * channels
    width_in = math.prod(in_shape)
    layers.append(nn.Flatten())
    for width in family.hidden:
        layers += [nn.Linear(width_in, width), nn.ReLU()]
        width_in = width
    return nn.Sequential(*layers), width_in


def head(width_in: int, n_classes: int, hidden: int) -> nn.Module:
    """A slice head: linear, or with one hidden ReLU layer."""
    if hidden <= 0:
        return nn.Linear(width_in, n_classes)
    return nn.Sequential(nn.Linear(width_in, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))


class GlobalPool(nn.Module):
    """Average and max over time, concatenated: cheap, length-agnostic, ONNX friendly."""

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, T) -> (N, 2C): mean and max over time."""
        return torch.cat([x.mean(dim=-1), x.amax(dim=-1)], dim=-1)


class SlicedEncoder(nn.Module):
    """Trunk plus redundant / unique (/ synergy-input) projections."""

    def __init__(self, family: FamilyConfig, in_shape: tuple[int, ...],
                 widths: tuple[int, int, int], with_synergy: bool) -> None:
        super().__init__()
        self.trunk, hidden = trunk(family, in_shape)
        self.proj_r = nn.Linear(hidden, widths[0])
        self.proj_u = nn.Linear(hidden, widths[1])
        self.proj_s = nn.Linear(hidden, widths[2]) if with_synergy else None

    def forward(self, x: Tensor) -> Slices:
        """(N, *input shape) -> the modality's slices."""
        h = self.trunk(x)
        s = self.proj_s(h) if self.proj_s is not None else None
        return Slices(self.proj_r(h), self.proj_u(h), s)


class PlainEncoder(nn.Module):
    """Trunk plus one projection to the latent width."""

    def __init__(self, family: FamilyConfig, in_shape: tuple[int, ...], latent: int) -> None:
        super().__init__()
        self.trunk, hidden = trunk(family, in_shape)
        self.proj = nn.Linear(hidden, latent)

    def forward(self, x: Tensor) -> Tensor:
        """(N, *input shape) -> (N, latent)."""
        z: Tensor = self.proj(self.trunk(x))
        return z


class Fusion(nn.Module):
    """F(s_a, s_b, ...) -> one synergy feature of width `out`."""

    def __init__(self, kind: str, widths: list[int], out: int, rank: int) -> None:
        super().__init__()
        self.kind = kind
        if kind == "concat":
            self.mix = nn.Linear(sum(widths), out)
        elif kind in ("sum", "gated"):
            self.align = nn.ModuleList(nn.Linear(w, out) for w in widths)
            self.mix = nn.Linear(out, out)
            if kind == "gated":
                self.gate = nn.Linear(sum(widths), len(widths))
        elif kind == "tensor":
            # Low-rank multimodal fusion: prod_m (W_m [s_m; 1]) summed over rank factors.
            self.factors = nn.ModuleList(nn.Linear(w + 1, rank * out) for w in widths)
            self.rank, self.out = rank, out
        else:
            raise ValueError(f"unknown fusion {kind!r}")

    def forward(self, parts: list[Tensor]) -> Tensor:
        """Synergy-input slices, one per modality in fleet order -> (N, out)."""
        if self.kind == "concat":
            return F.relu(self.mix(torch.cat(parts, dim=-1)))
        if self.kind == "tensor":
            fused = None
            for part, factor in zip(parts, self.factors, strict=True):
                ones = torch.ones_like(part[:, :1])
                f = factor(torch.cat([part, ones], dim=-1)).view(-1, self.rank, self.out)
                fused = f if fused is None else fused * f
            assert fused is not None
            return F.relu(fused.sum(dim=1))
        aligned = torch.stack([lin(p) for lin, p in zip(self.align, parts, strict=True)], dim=1)
        if self.kind == "gated":
            weights = torch.sigmoid(self.gate(torch.cat(parts, dim=-1))).unsqueeze(-1)
            aligned = aligned * weights
        return F.relu(self.mix(aligned.sum(dim=1)))


class AgentModel(nn.Module):
    """One agent's whole model; forward accepts any subset of the agent's modalities."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        mods = spec.modalities
        if spec.arch == "sliced":
            # The redundant space is modality-agnostic: one width fleet-wide (spec.families holds
            # every fleet modality), so H_R has the same shape on every agent.
            r_width = min(slice_widths(f.latent, spec.split)[0] for f in spec.families.values())
            widths = {m: (r_width, *slice_widths(spec.families[m].latent, spec.split)[1:])
                      for m in mods}
            self.encoders = nn.ModuleDict({
                m: SlicedEncoder(spec.families[m], spec.input_shapes[m], widths[m], spec.multimodal)
                for m in mods
            })
            heads = {"R": head(r_width, spec.n_classes, spec.head_hidden)}
            heads |= {f"U_{m}": head(widths[m][1], spec.n_classes, spec.head_hidden) for m in mods}
            if spec.multimodal:
                s_out = spec.fused_width
                self.fusion = Fusion(spec.fusion, [widths[m][2] for m in mods], s_out,
                                     spec.tensor_rank)
                heads["S"] = head(s_out, spec.n_classes, spec.head_hidden)
            self.heads = nn.ModuleDict(heads)
            self.combiner = Combiner(spec, widths)
        else:
            # Monolithic ("shared"): one embedding space for every modality, so one width.
            shared = max(f.latent for f in spec.families.values())
            latent = {m: spec.families[m].latent if spec.arch == "plain" else shared for m in mods}
            self.encoders = nn.ModuleDict({
                m: PlainEncoder(spec.families[m], spec.input_shapes[m], latent[m]) for m in mods
            })
            width = sum(latent.values()) if spec.arch == "plain" else shared
            hidden = shared
            self.heads = nn.ModuleDict({"late": nn.Sequential(
                nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, spec.n_classes))})

    def forward(self, inputs: dict[str, Tensor]) -> ModelOutput:
        """Any non-empty subset of the agent's modalities -> logits and per-head logits."""
        present = [m for m in self.spec.modalities if m in inputs]
        if not present:
            raise ValueError(f"no input for any of {self.spec.modalities}")
        if self.spec.arch != "sliced":
            return self._forward_plain(inputs, present)
        slices = {m: self.encoders[m](inputs[m]) for m in present}
        r_mean = torch.stack([slices[m].r for m in present]).mean(dim=0)
        head_logits = {"R": self.heads["R"](r_mean)}
        for m in present:
            head_logits[f"U_{m}"] = self.heads[f"U_{m}"](slices[m].u)
        fused = None
        if self.spec.multimodal and len(present) == len(self.spec.modalities):
            fused = self.fusion([slices[m].s for m in present])
            head_logits["S"] = self.heads["S"](fused)
        logits = self.combiner(head_logits, slices, r_mean, fused, present)
        return ModelOutput(logits, head_logits, slices)

    def _forward_plain(self, inputs: dict[str, Tensor], present: list[str]) -> ModelOutput:
        z = {m: self.encoders[m](inputs[m]) for m in present}
        if self.spec.arch == "plain":
            batch = next(iter(z.values())).shape[0]
            parts = [z[m] if m in z else z[present[0]].new_zeros(batch, self.spec.families[m].latent)
                     for m in self.spec.modalities]
            joint = torch.cat(parts, dim=-1)
        else:
            joint = torch.stack(list(z.values())).sum(dim=0)
        logits = self.heads["late"](joint)
        return ModelOutput(logits, {"late": logits}, {})

    def unit_of(self, param_name: str) -> Unit:
        """Which sharing unit a parameter belongs to (see edge.sharing)."""
        parts = param_name.split(".")
        if parts[0] == "encoders":
            kind = "syn" if parts[2] == "proj_s" else "enc"
            return Unit(kind, parts[1])
        if parts[0] == "fusion":
            return Unit("fuse")
        if parts[0] == "heads":
            name = parts[1]
            if name == "late":
                return Unit("late")
            if name.startswith("U_"):
                return Unit("head_u", name[2:])
            return Unit("head_r" if name == "R" else "head_s")
        return Unit("comb")


class Combiner(nn.Module):
    """Turns head logits into one prediction; works over whichever heads are present."""

    def __init__(self, spec: ModelSpec, widths: dict[str, tuple[int, int, int]]) -> None:
        super().__init__()
        self.kind = spec.combiner
        self.head_names = spec.head_names
        if self.kind == "gate":
            self.gate_logits = nn.Parameter(torch.zeros(len(spec.head_names)))
        if self.kind == "fusion":
            self.modalities = spec.modalities
            r_width = next(iter(widths.values()))[0]
            self.u_widths = [widths[m][1] for m in spec.modalities]
            self.s_width = spec.fused_width
            total = r_width + sum(self.u_widths) + self.s_width
            self.mlp = nn.Sequential(nn.Linear(total, total), nn.ReLU(),
                                     nn.Linear(total, spec.n_classes))

    def forward(self, head_logits: dict[str, Tensor], slices: dict[str, Slices], r_mean: Tensor,
                fused: Tensor | None, present: list[str]) -> Tensor:
        """Combine the present heads' logits (N, classes) into one prediction."""
        stacked = torch.stack(list(head_logits.values()))
        if self.kind == "sum":
            return stacked.sum(dim=0)
        if self.kind == "mean":
            return stacked.mean(dim=0)
        if self.kind == "gate":
            idx = [self.head_names.index(n) for n in head_logits]
            weights = torch.softmax(self.gate_logits[idx], dim=0)
            return (weights.view(-1, 1, 1) * stacked).sum(dim=0)
        zeros = r_mean.new_zeros
        batch = r_mean.shape[0]
        parts = [r_mean]
        for m, width in zip(self.modalities, self.u_widths, strict=True):
            parts.append(slices[m].u if m in present else zeros(batch, width))
        if self.s_width:
            parts.append(fused if fused is not None else zeros(batch, self.s_width))
        logits: Tensor = self.mlp(torch.cat(parts, dim=-1))
        return logits
