"""The model's export surface: encoder, head and per-subset fused graphs for the ONNX exporter."""

from __future__ import annotations

from itertools import combinations

import torch
from torch import Tensor, nn

from edge.learning.model import AgentModel
from exporters.onnx_export import GraphSpec


class EncoderGraph(nn.Module):
    """x_m -> its slices (r, u[, s]) on the sliced architecture, or its embedding z on plain."""

    def __init__(self, model: AgentModel, modality: str) -> None:
        super().__init__()
        self.encoder = model.encoders[modality]
        self.sliced = model.spec.arch == "sliced"

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """(N, *input shape) -> r, u[, s] slices (sliced) or z (plain)."""
        out = self.encoder(x)
        if not self.sliced:
            return (out,)
        return tuple(t for t in out if t is not None)


class SynergyHeadGraph(nn.Module):
    """(s_a, s_b, ...) -> fusion -> H_S logits."""

    def __init__(self, model: AgentModel) -> None:
        super().__init__()
        self.fusion = model.fusion
        self.head = model.heads["S"]

    def forward(self, *parts: Tensor) -> Tensor:
        """Synergy-input slices of every modality -> H_S logits (N, classes)."""
        logits: Tensor = self.head(self.fusion(list(parts)))
        return logits


class FusedGraph(nn.Module):
    """Raw (normalised) inputs of one modality subset -> the combined logits."""

    def __init__(self, model: AgentModel, subset: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.subset = subset

    def forward(self, *xs: Tensor) -> Tensor:
        """One normalised input per modality of the subset -> logits (N, classes)."""
        logits: Tensor = self.model(dict(zip(self.subset, xs, strict=True))).logits
        return logits


def export_graphs(model: AgentModel, examples: dict[str, Tensor]) -> list[GraphSpec]:
    """Every graph a board may need, each with real example inputs: one encoder per modality,
    one graph per head, and one fused graph per non-empty subset of the agent's modalities (so
    a board with a dead sensor still has a ready graph).
    """
    model.eval()
    mods = model.spec.modalities
    np_examples = {m: examples[m].numpy() for m in mods}
    with torch.no_grad():
        encoded = {m: EncoderGraph(model, m)(examples[m]) for m in mods}
    sliced = model.spec.arch == "sliced"
    specs = []
    for m in mods:
        names = ["r", "u", "s"][: len(encoded[m])] if sliced else ["z"]
        specs.append(GraphSpec(f"encoder-{m}", "encoder", EncoderGraph(model, m), [m], names,
                               (m,), {m: np_examples[m]}))
    if sliced:
        r_mean = torch.stack([encoded[m][0] for m in mods]).mean(dim=0)
        specs.append(GraphSpec("head-R", "head", model.heads["R"], ["r"], ["logits"], mods,
                               {"r": r_mean.numpy()}))
        for m in mods:
            specs.append(GraphSpec(f"head-U-{m}", "head", model.heads[f"U_{m}"], ["u"], ["logits"],
                                   (m,), {"u": encoded[m][1].numpy()}))
        if len(mods) > 1:
            specs.append(GraphSpec(f"head-S-{'+'.join(mods)}", "head", SynergyHeadGraph(model),
                                   [f"s_{m}" for m in mods], ["logits"], mods,
                                   {f"s_{m}": encoded[m][2].numpy() for m in mods}))
    for size in range(1, len(mods) + 1):
        for subset in combinations(mods, size):
            specs.append(GraphSpec(f"fused-{'+'.join(subset)}", "fused", FusedGraph(model, subset),
                                   list(subset), ["logits"], subset,
                                   {m: np_examples[m] for m in subset}))
    return specs
