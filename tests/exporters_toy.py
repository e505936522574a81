"""Small real PARSE-shaped torch agents (mlp / conv1d encoders, slice heads, fused subsets) for tests."""

from __future__ import annotations

import atexit
import itertools
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from exporters.onnx_export import GraphSpec, export_graphs


class Encoder(nn.Module):
    """Trunk + three slice projections (r, u, s), as in DESIGN.md §1."""

    def __init__(self, kind: str, sample_shape: tuple[int, ...], width: int, slice_dim: int):
        super().__init__()
        if kind == "mlp":
            self.trunk = nn.Sequential(nn.Linear(sample_shape[0], width), nn.ReLU(),
                                       nn.Linear(width, width), nn.ReLU())
        else:
            self.trunk = nn.Sequential(
                nn.Conv1d(sample_shape[0], width, 5, padding=2), nn.ReLU(),
                nn.Conv1d(width, width, 5, padding=2), nn.ReLU(),
                nn.AdaptiveAvgPool1d(1), nn.Flatten())
        self.r, self.u, self.s = (nn.Linear(width, slice_dim) for _ in range(3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.r(h), self.u(h), self.s(h)


class Fused(nn.Module):
    """Encoders + heads for one modality subset; sum combiner over the heads available."""

    def __init__(self, agent: ToyAgent, subset: Sequence[str]):
        super().__init__()
        self.agent = agent
        self.subset = list(subset)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.agent.logits(dict(zip(self.subset, xs, strict=True)))


class SynergyHead(nn.Module):
    """Concat fusion of the s slices followed by a linear head."""

    def __init__(self, n_in: int, slice_dim: int, n_classes: int):
        super().__init__()
        self.fuse = nn.Sequential(nn.Linear(n_in * slice_dim, slice_dim), nn.ReLU())
        self.head = nn.Linear(slice_dim, n_classes)

    def forward(self, *ss: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.fuse(torch.cat(ss, dim=-1)))
        return logits


class ToyAgent(nn.Module):
    """A PARSE agent with the export API the lead's model offers (`export_graphs`)."""

    def __init__(self, kind: str, shapes: dict[str, tuple[int, ...]], n_classes: int = 4,
                 width: int = 32, slice_dim: int = 8, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.modalities = list(shapes)
        self.encoders = nn.ModuleDict({m: Encoder(kind, s, width, slice_dim)
                                       for m, s in shapes.items()})
        self.head_r = nn.Linear(slice_dim, n_classes)
        self.head_u = nn.ModuleDict({m: nn.Linear(slice_dim, n_classes) for m in shapes})
        self.head_s = (SynergyHead(len(shapes), slice_dim, n_classes)
                       if len(shapes) > 1 else None)
        # Tests narrow it to save export time.
        self.export_roles: tuple[str, ...] = ("encoder", "head", "fused")
        self.eval()

    def logits(self, xs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sum of the heads that the modalities in `xs` allow (missing ones are dropped)."""
        total: torch.Tensor | int = 0
        slices = {m: self.encoders[m](x) for m, x in xs.items()}
        for m, (r, u, _) in slices.items():
            total = total + self.head_r(r) + self.head_u[m](u)
        if self.head_s is not None and len(slices) == len(self.modalities):
            total = total + self.head_s(*(slices[m][2] for m in self.modalities))
        assert isinstance(total, torch.Tensor), "xs holds none of the agent's modalities"
        return total

    def forward(self, xs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits for whichever of the agent's modalities `xs` holds."""
        return self.logits(xs)

    def subsets(self) -> list[tuple[str, ...]]:
        """Every non-empty modality subset, in modality order."""
        return [c for k in range(1, len(self.modalities) + 1)
                for c in itertools.combinations(self.modalities, k)]

    def export_graphs(self, examples: dict[str, torch.Tensor]) -> list[GraphSpec]:
        """Encoders, heads and one fused graph per modality subset, with real example inputs."""
        np_ex = {m: x.numpy() for m, x in examples.items()}
        with torch.no_grad():
            sl = {m: [t.numpy() for t in self.encoders[m](x)] for m, x in examples.items()}
        specs = []
        for m in self.modalities:
            specs.append(GraphSpec(f"encoder-{m}", "encoder", self.encoders[m], [m],
                                   ["r", "u", "s"], (m,), {m: np_ex[m]}))
            specs.append(GraphSpec(f"head-U-{m}", "head", self.head_u[m], ["u"], ["logits"],
                                   (m,), {"u": sl[m][1]}))
        specs.append(GraphSpec("head-R", "head", self.head_r, ["r"], ["logits"],
                               tuple(self.modalities), {"r": sl[self.modalities[0]][0]}))
        if self.head_s is not None:
            key = "+".join(self.modalities)
            names = [f"s_{m}" for m in self.modalities]
            specs.append(GraphSpec(f"head-S-{key}", "head", self.head_s, names, ["logits"],
                                   tuple(self.modalities),
                                   {f"s_{m}": sl[m][2] for m in self.modalities}))
        for subset in self.subsets():
            specs.append(GraphSpec(f"fused-{'+'.join(subset)}", "fused", Fused(self, subset),
                                   list(subset), ["logits"], subset,
                                   {m: np_ex[m] for m in subset}))
        return [s for s in specs if s.role in self.export_roles]


SHAPES: dict[str, dict[str, tuple[int, ...]]] = {"mlp": {"accel": (12,), "gyro": (9,)},
                                                  "conv1d": {"accel": (3, 40), "gyro": (3, 40)}}
LABELS = ["walk", "run", "sit", "stand"]


Norm = dict[str, dict[str, list[float]]]  # modality -> {"mean": [...], "std": [...]}


def make_case(kind: str, modalities: Sequence[str], n: int = 24, seed: int = 0
              ) -> tuple[ToyAgent, dict[str, np.ndarray], Norm, dict[str, tuple[int, ...]]]:
    """(agent, raw inputs, norm stats, input shapes) for an agent of `kind` over `modalities`."""
    shapes = {m: SHAPES[kind][m] for m in modalities}
    agent = ToyAgent(kind, shapes, n_classes=len(LABELS), seed=seed)
    rng = np.random.default_rng(seed)
    raw = {m: (rng.normal(3.0, 2.0, size=(n, *s))).astype(np.float32) for m, s in shapes.items()}
    # Per channel for conv1d windows, per feature for flat vectors: both forms the lead may use.
    norm: Norm = {m: {"mean": raw[m].mean(axis=(0, 2) if kind == "conv1d" else 0).tolist(),
                      "std": (raw[m].std(axis=(0, 2) if kind == "conv1d" else 0) + 1e-6).tolist()}
                  for m in modalities}
    return agent, raw, norm, shapes


def normalised(raw: dict[str, np.ndarray], norm: Mapping[str, Mapping[str, Sequence[float]]]
               ) -> dict[str, np.ndarray]:
    """The inputs as the graphs see them, computed here independently of exporters.norm."""
    out = {}
    for m, x in raw.items():
        mean, std = np.asarray(norm[m]["mean"]), np.asarray(norm[m]["std"])
        if x.ndim == 3:  # per-channel statistics of (batch, channels, time) windows
            mean, std = mean[:, None], std[:, None]
        out[m] = ((x - mean) / std).astype(np.float32)
    return out


def torch_logits(agent: ToyAgent, xs: dict[str, np.ndarray]) -> np.ndarray:
    """The torch model's logits on normalised inputs of a modality subset."""
    with torch.no_grad():
        return agent.logits({m: torch.from_numpy(x) for m, x in xs.items()}).numpy()


# (kind, modalities, quantize, roles) -> the exported bundle
_BUNDLES: dict[tuple[str, tuple[str, ...], str | None, tuple[str, ...]], SimpleNamespace] = {}
_ROOT: list[Path] = []


def toy_bundle(kind: str, modalities: Sequence[str], quantize: str | None = None,
               roles: tuple[str, ...] = ("encoder", "head", "fused")) -> SimpleNamespace:
    """An exported toy agent, built once per test session and shared by every test file (the
    export is the slow part). Tests that damage a bundle must copy it first."""
    key = (kind, tuple(modalities), quantize, roles)
    if key not in _BUNDLES:
        if not _ROOT:
            _ROOT.append(Path(tempfile.mkdtemp(prefix="parse-edge-toy-")))
            atexit.register(shutil.rmtree, _ROOT[0], True)
        agent, raw, norm, shapes = make_case(kind, modalities)
        agent.export_roles = roles
        xs = normalised(raw, norm)
        specs = agent.export_graphs({m: torch.from_numpy(x) for m, x in xs.items()})
        out = _ROOT[0] / f"{kind}-{'+'.join(modalities)}-{quantize}-{len(_BUNDLES)}"
        manifest = export_graphs(specs, out, labels=LABELS, norm=norm, input_shapes=shapes,
                                 quantize=quantize, meta={"agent_id": f"{kind}-{len(modalities)}"},
                                 source_checkpoint={"path": "ck.pt", "sha256": "0" * 64})
        _BUNDLES[key] = SimpleNamespace(dir=out, kind=kind, modalities=tuple(modalities),
                                        agent=agent, raw=raw, xs=xs, norm=norm, shapes=shapes,
                                        specs=specs, manifest=manifest)
    return _BUNDLES[key]
