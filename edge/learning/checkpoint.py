"""Agent checkpoints: model + optimizer + spec + normalisation + a few test inputs, written atomically."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge.config.schema import FamilyConfig, FleetConfig
from edge.data.norm import Norm
from edge.errors import ConfigError
from edge.learning.learner import Learner
from edge.learning.model import AgentModel, ModelSpec
from edge.version import software_version

FORMAT_VERSION = 1
# Test inputs kept for export-time parity checks; enough for a stable argmax agreement figure.
MAX_EXAMPLES = 256


@dataclass
class Checkpoint:
    """A loaded checkpoint; `model` is ready for inference (eval mode)."""

    model: AgentModel
    agent_id: str
    modalities: tuple[str, ...]
    labels: tuple[str, ...]
    norm: dict[str, dict[str, list[float]]]
    examples: dict[str, Any]            # {"x": {m: raw array}, "y": labels}
    input_shapes: dict[str, tuple[int, ...]]
    round_idx: int
    strategy: str
    optimizer_state: dict[str, Any] | None
    config: dict[str, Any]
    path: str


def spec_to_dict(spec: ModelSpec) -> dict[str, Any]:
    """A ModelSpec as plain data (torch.load(weights_only=True) accepts it)."""
    out = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.init}
    out["families"] = {m: dataclasses.asdict(f) for m, f in spec.families.items()}
    out["input_shapes"] = {m: list(s) for m, s in spec.input_shapes.items()}
    out["modalities"] = list(spec.modalities)
    out["split"] = list(spec.split)
    return out


def spec_from_dict(raw: dict[str, Any]) -> ModelSpec:
    """Inverse of spec_to_dict."""
    families = {m: FamilyConfig(kind=f["kind"], hidden=tuple(f["hidden"]), latent=f["latent"],
                                kernel=f["kernel"]) for m, f in raw["families"].items()}
    return ModelSpec(
        modalities=tuple(raw["modalities"]),
        input_shapes={m: tuple(s) for m, s in raw["input_shapes"].items()},
        families=families, n_classes=raw["n_classes"], arch=raw["arch"],
        split=tuple(raw["split"]), fusion=raw["fusion"], tensor_rank=raw["tensor_rank"],
        combiner=raw["combiner"], head_hidden=raw.get("head_hidden", 0),
    )


def save_checkpoint(path: Path, cfg: FleetConfig, learner: Learner, agent_id: str,
                    round_idx: int, strategy: str) -> None:
    """Write atomically (temp file + rename) so a crash never leaves a half checkpoint."""
    data = learner.data
    n = min(MAX_EXAMPLES, len(data.test.y))
    raw_x = {m: _denormalise(data.test.x[m][:n], data.norm[m]) for m in data.modalities}
    payload = {
        "format": FORMAT_VERSION,
        "software_version": software_version(),
        "agent_id": agent_id,
        "fleet": cfg.fleet,
        # The whole validated fleet config, as plain data: what this model was trained under.
        "config": dataclasses.asdict(cfg),
        "strategy": strategy,
        "round_idx": round_idx,
        "spec": spec_to_dict(learner.model.spec),
        "model_state": learner.model.state_dict(),
        "optimizer_state": learner.optimizer.state_dict(),
        "labels": list(data.labels),
        "norm": {m: data.norm[m].to_dict() for m in data.modalities},
        "examples": {"x": {m: torch.from_numpy(v) for m, v in raw_x.items()},
                     "y": torch.from_numpy(data.test.y[:n].astype(np.int64))},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load a checkpoint written by save_checkpoint; a bad file is a one-line error."""
    source = str(path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(source, "<file>", "no such checkpoint file") from None
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise ConfigError(source, "<file>", f"expected a parse-edge checkpoint ({exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_VERSION:
        got = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise ConfigError(source, "format",
                          f"expected checkpoint format {FORMAT_VERSION}, got {got!r}")
    spec = spec_from_dict(raw["spec"])
    model = AgentModel(spec)
    model.load_state_dict(raw["model_state"])
    model.eval()
    return Checkpoint(
        model=model, agent_id=raw["agent_id"], modalities=spec.modalities,
        labels=tuple(raw["labels"]), norm=raw["norm"],
        examples={"x": {m: v.numpy() for m, v in raw["examples"]["x"].items()},
                  "y": raw["examples"]["y"].numpy()},
        input_shapes=spec.input_shapes, round_idx=raw["round_idx"], strategy=raw["strategy"],
        optimizer_state=raw.get("optimizer_state"), config=raw.get("config", {}), path=source,
    )


def _denormalise(x: np.ndarray, norm: Norm) -> np.ndarray:
    shape = (1, -1) + (1,) * (x.ndim - 2)
    raw: np.ndarray = (x * norm.std.reshape(shape) + norm.mean.reshape(shape)).astype(np.float32)
    return raw
