"""Agent checkpoints: model + optimizer + spec + normalisation + a few test inputs, written atomically."""

from __future__ import annotations

import dataclasses
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge.config.schema import FamilyConfig, FleetConfig
from edge.data.norm import Norm
from edge.errors import ConfigError
from edge.learning.checkpoint_schema import (
    FORMAT_VERSION,
    MAX_CHECKPOINT_BYTES,
    check_document,
    check_examples,
    check_finite,
    check_state,
)
from edge.learning.learner import Learner
from edge.learning.model import AgentModel, ModelSpec
from edge.version import software_version

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
    # The agent's running totals when it was saved (bytes, CPU, wall, energy, restarts); empty
    # for checkpoints written outside an agent (simulate).
    counters: dict[str, Any] = dataclasses.field(default_factory=dict)


def spec_to_dict(spec: ModelSpec) -> dict[str, Any]:
    """Convert a ModelSpec to plain data (torch.load(weights_only=True) accepts it)."""
    out = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.init}
    out["families"] = {m: dataclasses.asdict(f) for m, f in spec.families.items()}
    out["input_shapes"] = {m: list(s) for m, s in spec.input_shapes.items()}
    out["modalities"] = list(spec.modalities)
    out["split"] = list(spec.split)
    return out


def spec_from_dict(raw: dict[str, Any]) -> ModelSpec:
    """Inverse of spec_to_dict."""
    families = {m: f if isinstance(f, FamilyConfig) else
                FamilyConfig(kind=f["kind"], hidden=tuple(f["hidden"]), latent=f["latent"],
                             kernel=f["kernel"]) for m, f in raw["families"].items()}
    return ModelSpec(
        modalities=tuple(raw["modalities"]),
        input_shapes={m: tuple(s) for m, s in raw["input_shapes"].items()},
        families=families, n_classes=raw["n_classes"], arch=raw["arch"],
        split=tuple(raw["split"]), fusion=raw["fusion"], tensor_rank=raw["tensor_rank"],
        combiner=raw["combiner"], head_hidden=raw.get("head_hidden", 0),
    )


def save_checkpoint(path: Path, cfg: FleetConfig, learner: Learner, agent_id: str,
                    round_idx: int, strategy: str,
                    counters: Mapping[str, Any] | None = None) -> None:
    """Write atomically (temp file + rename) so a crash never leaves a half checkpoint.

    `counters` (see checkpoint_schema.CountersDoc) are the agent's running totals, which a
    restarted agent carries on from.
    """
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
    if counters is not None:
        payload["counters"] = dict(counters)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load a checkpoint written by save_checkpoint, checking it before building anything.

    Raises
    ------
    ConfigError
        One line naming the file and field: not a checkpoint, another format, a missing or
        malformed field, a missing or misshapen weight, or NaN or inf anywhere in the weights,
        the optimizer state or the examples (edge.learning.checkpoint_schema).
    """
    source = str(path)
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        raise ConfigError(source, "<file>", f"no such checkpoint file ({exc.strerror})") from None
    if size > MAX_CHECKPOINT_BYTES:
        raise ConfigError(source, "<file>", f"expected a checkpoint of at most "
                          f"{MAX_CHECKPOINT_BYTES} bytes, got {size}")
    if size == 0:
        raise ConfigError(source, "<file>", "expected a parse-edge checkpoint, got an empty file")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own text suggests weights_only=False, i.e. running the file's code: never.
        raise ConfigError(source, "<file>", "expected a parse-edge checkpoint (tensors and plain "
                          "data); the file holds other Python objects, which are never loaded") \
            from None
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        text = " ".join(str(exc).split())[:120]
        raise ConfigError(source, "<file>", f"expected a parse-edge checkpoint, a torch archive; "
                          f"this one is truncated, corrupt or another format "
                          f"({type(exc).__name__}: {text})") from None
    doc = check_document(raw, source)
    spec = spec_from_dict(dict(doc["spec"]))
    check_state(doc["model_state"], spec, source)
    check_finite(doc.get("optimizer_state"), source, "optimizer_state")
    check_examples(doc, spec, source)
    model = AgentModel(spec)
    model.load_state_dict(doc["model_state"])
    model.eval()
    return Checkpoint(
        model=model, agent_id=doc["agent_id"], modalities=spec.modalities,
        labels=tuple(doc["labels"]),
        norm={m: {"mean": n["mean"], "std": n["std"]} for m, n in doc["norm"].items()},
        examples={"x": {m: v.numpy() for m, v in doc["examples"]["x"].items()},
                  "y": doc["examples"]["y"].numpy()},
        input_shapes=spec.input_shapes, round_idx=doc["round_idx"], strategy=doc["strategy"],
        optimizer_state=doc.get("optimizer_state"), config=doc.get("config", {}), path=source,
        counters=dict(doc.get("counters", {})),
    )


def restore_into(learner: Learner, ckpt: Checkpoint) -> None:
    """Load a checkpoint's weights and optimizer state into an agent's learner (resume).

    Raises
    ------
    ConfigError
        A checkpoint of another model than the learner's (written under another config),
        naming the first field of the spec that differs, or an optimizer state that does not
        fit the learner's optimizer.
    """
    _check_same_model(ckpt.model.spec, learner.model.spec, ckpt.path)
    learner.model.load_state_dict(ckpt.model.state_dict())
    if ckpt.optimizer_state:
        try:
            learner.optimizer.load_state_dict(ckpt.optimizer_state)
        except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as exc:
            text = " ".join(str(exc).split())[:160]
            raise ConfigError(ckpt.path, "optimizer_state",
                              f"expected the state of this config's optimizer ({text})") from None


def _check_same_model(spec: ModelSpec, expect: ModelSpec, source: str) -> None:
    for f in dataclasses.fields(ModelSpec):
        ours, theirs = getattr(expect, f.name), getattr(spec, f.name)
        if ours != theirs:
            if isinstance(ours, dict) and isinstance(theirs, dict):
                key = next((k for k in sorted(set(ours) | set(theirs))
                            if ours.get(k) != theirs.get(k)), "")
                field, ours, theirs = f"spec.{f.name}.{key}", ours.get(key), theirs.get(key)
            else:
                field = f"spec.{f.name}"
            raise ConfigError(source, field, f"expected {ours} as this config builds, the "
                              f"checkpoint has {theirs}: it was written under another config "
                              "(use another --out, or the config it was trained with)")


def _denormalise(x: np.ndarray, norm: Norm) -> np.ndarray:
    shape = (1, -1) + (1,) * (x.ndim - 2)
    raw: np.ndarray = (x * norm.std.reshape(shape) + norm.mean.reshape(shape)).astype(np.float32)
    return raw
