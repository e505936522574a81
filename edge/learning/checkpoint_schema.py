"""What a checkpoint file must hold, checked before anything is built from it.

`torch.load(weights_only=True)` refuses code, but whatever dictionary a file holds comes back
as is: `{"format": 1}`, a state dict missing a weight, tensors of other shapes, NaN weights.
This module checks, in order, and names the first field that fails (one `ConfigError` line):

1. the document's structure and bounded values (pydantic v2, the same bounds as the fleet
   config: edge.config.schema), tensors where tensors belong;
2. the model state against the model the spec builds, on torch's meta device (shapes only, no
   allocation): every weight present, none extra, each of the right shape and dtype;
3. every floating tensor (weights, optimizer moments, examples) finite.

Only then does edge.learning.checkpoint build the model and load the weights.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal

import torch
from annotated_types import Interval, Len
from pydantic import ConfigDict, InstanceOf, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict

from edge.config.schema import MAX_ROUNDS, MAX_STEPS, MAX_WEIGHT, FamilyConfig
from edge.config.typed import describe
from edge.errors import ConfigError
from edge.learning.model import AgentModel, ModelSpec

FORMAT_VERSION = 1
# No data set here has more; 10^4 output units keep a head's weights small.
MAX_CLASSES = 10_000
# A checkpoint of the largest model the config bounds allow is well under this.
MAX_CHECKPOINT_BYTES = 1 << 30

Tensor = InstanceOf[torch.Tensor]
Dim = Annotated[int, Interval(ge=1, le=MAX_STEPS)]
FiniteFloat = Annotated[float, Interval(ge=-1e30, le=1e30)]
# Checkpoints are our own pickled-free dictionaries of Python values: lax types (a list where a
# tuple is expected) but finite floats and no unknown keys.
CONFIG = ConfigDict(allow_inf_nan=False, extra="forbid")


@with_config(CONFIG)
class SpecDoc(TypedDict):
    """`spec`: edge.learning.model.ModelSpec as plain data (edge.learning.checkpoint.spec_to_dict)."""

    modalities: Annotated[list[str], Len(1, 32)]
    input_shapes: dict[str, Annotated[list[Dim], Len(1, 4)]]
    families: dict[str, FamilyConfig]
    n_classes: Annotated[int, Interval(ge=2, le=MAX_CLASSES)]
    arch: Literal["sliced", "plain", "shared"]
    split: Annotated[list[Annotated[float, Interval(gt=0.0, le=MAX_WEIGHT)]], Len(3, 3)]
    fusion: Literal["concat", "sum", "gated", "tensor"]
    tensor_rank: Annotated[int, Interval(ge=1, le=64)]
    combiner: Literal["sum", "mean", "gate", "fusion"]
    head_hidden: Annotated[int, Interval(ge=0, le=4096)]


@with_config(CONFIG)
class NormDoc(TypedDict):
    """Per-feature standardisation of one modality (edge.data.norm.Norm.to_dict)."""

    mean: list[FiniteFloat]
    std: list[Annotated[float, Interval(gt=0.0, le=1e30)]]


@with_config(CONFIG)
class ExamplesDoc(TypedDict):
    """Raw test inputs kept for the export's parity check."""

    x: dict[str, Tensor]
    y: Tensor


@with_config(CONFIG)
class CountersDoc(TypedDict):
    """The agent's running totals at this checkpoint, carried on by a restarted process."""

    bytes_sent: Annotated[int, Interval(ge=0, le=1 << 62)]
    bytes_received: Annotated[int, Interval(ge=0, le=1 << 62)]
    cpu_s: Annotated[float, Interval(ge=0.0, le=1e9)]
    elapsed_s: Annotated[float, Interval(ge=0.0, le=1e9)]
    restarts: Annotated[int, Interval(ge=0, le=1_000_000)]
    # devices.estimate.EnergyBreakdown.to_dict(); its own from_dict checks every field.
    energy: dict[str, Any]


@with_config(CONFIG)
class _Optional(TypedDict, total=False):
    software_version: str
    fleet: str
    counters: CountersDoc
    config: dict[str, Any]
    optimizer_state: dict[str, Any] | None


@with_config(CONFIG)
class CheckpointDoc(_Optional):
    """A checkpoint file as edge.learning.checkpoint.save_checkpoint writes it."""

    format: Literal[1]
    agent_id: Annotated[str, Len(1, 64)]
    strategy: Annotated[str, Len(1, 64)]
    round_idx: Annotated[int, Interval(ge=0, le=MAX_ROUNDS)]
    spec: SpecDoc
    model_state: dict[str, Tensor]
    labels: Annotated[list[str], Len(2, MAX_CLASSES)]
    norm: dict[str, NormDoc]
    examples: ExamplesDoc


@functools.cache
def _adapter() -> TypeAdapter[CheckpointDoc]:
    return TypeAdapter(CheckpointDoc)


def check_document(raw: Any, source: str) -> CheckpointDoc:
    """Check the structure and values of a loaded checkpoint dictionary (step 1).

    Raises
    ------
    ConfigError
        Another format, a missing or unknown key, a value of the wrong type or out of range.
    """
    fmt = raw.get("format") if isinstance(raw, dict) else None
    if type(fmt) is not int or fmt != FORMAT_VERSION:  # a tensor has no single truth value
        got = (repr(fmt)[:40] if isinstance(fmt, (int, float, str, type(None))) and isinstance(raw, dict)
               else type(fmt if isinstance(raw, dict) else raw).__name__)
        raise ConfigError(source, "format", f"expected checkpoint format {FORMAT_VERSION}, got {got}")
    try:
        doc: CheckpointDoc = _adapter().validate_python(raw)
    except ValidationError as exc:
        field, expected = describe(exc.errors(include_url=False), CheckpointDoc)
        raise ConfigError(source, field, expected) from None
    spec = doc["spec"]
    mods = set(spec["modalities"])
    if set(spec["input_shapes"]) != mods:
        raise ConfigError(source, "spec.input_shapes",
                          f"expected one shape per modality ({', '.join(spec['modalities'])})")
    if not mods <= set(spec["families"]):  # the fleet's families: a superset of the agent's
        raise ConfigError(source, "spec.families",
                          f"expected a family for each modality ({', '.join(spec['modalities'])})")
    for m, stats in doc["norm"].items():
        channels = spec["input_shapes"].get(m, [0])[0]
        if m not in spec["modalities"] or not len(stats["mean"]) == len(stats["std"]) == channels:
            raise ConfigError(source, f"norm.{m}", f"expected mean and std of {channels} values "
                              "for a modality of the spec")
    if len(doc["labels"]) != spec["n_classes"]:
        raise ConfigError(source, "labels", f"expected {spec['n_classes']} class names "
                          f"(spec.n_classes), got {len(doc['labels'])}")
    return doc


def check_state(state: dict[str, torch.Tensor], spec: ModelSpec, source: str) -> None:
    """Check a model state against the model `spec` builds (step 2) and its finiteness (3).

    Raises
    ------
    ConfigError
        A missing or unexpected weight, a weight of another shape or dtype, or a weight holding
        NaN or inf.
    """
    with torch.device("meta"):
        expected = AgentModel(spec).state_dict()
    for name, want in expected.items():
        got = state.get(name)
        if got is None:
            raise ConfigError(source, f"model_state.{name}",
                              f"missing; expected a tensor of shape {tuple(want.shape)}")
        if tuple(got.shape) != tuple(want.shape) or got.dtype != want.dtype:
            raise ConfigError(source, f"model_state.{name}",
                              f"expected {want.dtype} of shape {tuple(want.shape)}, got "
                              f"{got.dtype} of shape {tuple(got.shape)}")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise ConfigError(source, f"model_state.{extra[0]}",
                          "unknown weight; the spec's model has no such parameter")
    check_finite(state, source, "model_state")


def check_finite(tree: Any, source: str, field: str) -> None:
    """Refuse NaN or inf in any floating tensor of a (nested) dict/list of tensors.

    Raises
    ------
    ConfigError
        Naming the first tensor holding NaN or inf, and how many such values it holds.
    """
    if isinstance(tree, torch.Tensor):
        if tree.is_floating_point() and not bool(torch.isfinite(tree).all()):
            bad = int((~torch.isfinite(tree)).sum())
            raise ConfigError(source, field, f"expected finite values, found {bad} NaN or inf "
                              f"of {tree.numel()}")
    elif isinstance(tree, dict):
        for key, value in tree.items():
            check_finite(value, source, f"{field}.{key}")
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            check_finite(value, source, f"{field}[{i}]")


def check_examples(doc: CheckpointDoc, spec: ModelSpec, source: str) -> None:
    """Check that the kept test inputs match the spec's modalities and shapes, and are finite.

    Raises
    ------
    ConfigError
        A missing modality, another shape, or labels that do not match the inputs.
    """
    x, y = doc["examples"]["x"], doc["examples"]["y"]
    if y.ndim != 1 or y.dtype != torch.int64:
        raise ConfigError(source, "examples.y", f"expected int64 labels of shape (n,), got "
                          f"{y.dtype} of shape {tuple(y.shape)}")
    for m in spec.modalities:
        if m not in x:
            raise ConfigError(source, f"examples.x.{m}", "missing; expected the raw test inputs")
        want = (len(y), *spec.input_shapes[m])
        if tuple(x[m].shape) != want or not x[m].is_floating_point():
            raise ConfigError(source, f"examples.x.{m}", f"expected floats of shape {want}, got "
                              f"{x[m].dtype} of shape {tuple(x[m].shape)}")
    check_finite(x, source, "examples.x")
