"""One torch module -> one single-file ONNX graph with a dynamic batch axis, and its checks."""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from exporters.manifest import BATCH_DIM, Role

# Rows of the example inputs used for tracing: >= 2 so torch.export keeps the batch axis symbolic.
TRACE_ROWS = 4
# torchlib emits opset-18 graphs and cannot convert them down; older opsets go to TorchScript.
DYNAMO_MIN_OPSET = 18
TORCHSCRIPT_OPSET = 17


class ExportError(ValueError):
    """The export cannot produce a bundle that serves what the model computes; one line."""


@dataclass
class GraphSpec:
    """One graph to export, as the model describes it."""

    name: str  # file stem: "encoder-accel", "head-R", "head-U-accel", "fused-accel+gyro"
    role: Role
    module: torch.nn.Module  # forward(*inputs) -> tensor or tuple of tensors
    input_names: list[str]
    output_names: list[str]
    modalities: tuple[str, ...]  # what the graph consumes (fused: the subset it serves)
    example_inputs: dict[str, np.ndarray]  # real normalised inputs, float32, batch >= 1


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    # The dynamo exporter logs optional-dependency notices and deprecations that are noise here.
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    old_levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, old_levels, strict=True):
            logger.setLevel(level)


@contextlib.contextmanager
def torchlib_ops_cached() -> Iterator[None]:
    """Build the exporter's table of ONNX decompositions once per export run, not per graph.

    torch.onnx rebuilds it from onnxscript sources on every call (~1.5 s); the table only
    depends on the installed packages. Private API, so any mismatch just skips the speed-up.
    """
    try:
        lazy = importlib.import_module("torch.onnx._internal._lazy_import")
        module: Any = importlib.import_module(lazy.onnxscript_apis._name)
        original = module.get_torchlib_ops
    except (ImportError, AttributeError):
        yield
        return
    module.get_torchlib_ops = functools.cache(original)
    try:
        yield
    finally:
        module.get_torchlib_ops = original


def _trace_inputs(spec: GraphSpec) -> tuple[torch.Tensor, ...]:
    rows = []
    for n in spec.input_names:
        x = np.asarray(spec.example_inputs[n], dtype=np.float32)[:TRACE_ROWS]
        if len(x) < 2:
            x = np.concatenate([x, x])
        rows.append(torch.from_numpy(np.ascontiguousarray(x)))
    return tuple(rows)


def export_onnx(spec: GraphSpec, path: Path, opset: int | None) -> tuple[str, str | None]:
    """Write `spec` to a single-file ONNX at `path` with a dynamic batch axis.

    Returns the exporter used ("dynamo", or "torchscript" when dynamo cannot serve the module
    or the opset) and, for the fallback, why.
    """
    module = spec.module.eval()
    args = _trace_inputs(spec)
    with _quiet_exporter():
        if opset is not None and opset < DYNAMO_MIN_OPSET:
            reason = f"opset {opset} is below the dynamo exporter's minimum {DYNAMO_MIN_OPSET}"
        else:
            try:
                _export_dynamo(spec, module, args, path, opset)
                return "dynamo", None
            except Exception as exc:  # any dynamo failure: fall back, say so in the manifest
                reason = _first_cause(exc)
                logging.getLogger(__name__).warning(
                    "dynamo export of %s failed (%s); using the TorchScript exporter",
                    spec.name, reason)
        names = [*spec.input_names, *spec.output_names]
        try:
            torch.onnx.export(
                module, args, str(path), input_names=spec.input_names,
                output_names=spec.output_names, opset_version=opset or TORCHSCRIPT_OPSET,
                dynamo=False, dynamic_axes={n: {0: BATCH_DIM} for n in names},
            )
        except Exception as exc:
            raise ExportError(f"graph {spec.name!r}: the TorchScript exporter failed too "
                              f"({_first_cause(exc)}); dynamo: {reason}") from None
        return "torchscript", reason


def _export_dynamo(spec: GraphSpec, module: torch.nn.Module, args: tuple[torch.Tensor, ...],
                   path: Path, opset: int | None) -> None:
    # A ShapesCollection keys the dynamic axis by tensor, so it fits any forward signature
    # (positional, *args) without knowing its structure.
    batch = torch.export.Dim(BATCH_DIM, min=1)
    # torch's annotations omit ShapesCollection from `dynamic_shapes`, which its docs accept,
    # and leave its constructor untyped: hold it as Any.
    collection: Any = torch.export.ShapesCollection
    shapes = collection()
    for arg in args:
        shapes[arg] = {0: batch}
    program = torch.onnx.export(
        module, args, input_names=spec.input_names, output_names=spec.output_names,
        opset_version=opset, dynamo=True, external_data=False, verbose=False,
        dynamic_shapes=shapes,
    )
    if program is None:  # only without a file name; raised so the fallback explains why
        raise RuntimeError("torch.onnx.export returned no program")
    program.save(str(path), external_data=False)
    _name_batch_axis(path)


def _first_cause(exc: Exception) -> str:
    """One line saying why torch.export failed (its messages run to dozens of lines)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    summary = next((ln for ln in lines if ln.startswith("<class")), lines[0] if lines else "")
    return f"{type(exc).__name__}: {summary}"[:300]


def _name_batch_axis(path: Path) -> None:
    """Rename the exporter's batch symbol (e.g. "s77") to "batch" everywhere in the graph."""
    model = onnx.load(str(path))
    graph = model.graph
    symbols = {v.type.tensor_type.shape.dim[0].dim_param for v in graph.input}
    symbols.discard("")
    for value in [*graph.input, *graph.output, *graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in symbols:
                dim.dim_param = BATCH_DIM
    onnx.save(model, str(path))


def check_onnx(spec: GraphSpec, path: Path, opset: int | None = None) -> int:
    """Check `path` with onnx.checker and the contract the runtime relies on.

    Also checks the `opset` asked for; returns the default-domain opset.
    """
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    if any(init.HasField("data_location") and init.data_location == onnx.TensorProto.EXTERNAL
           for init in model.graph.initializer):
        raise ExportError(f"graph {spec.name!r}: weights were written as external data")
    graph_inputs = [i.name for i in model.graph.input]
    if graph_inputs != list(spec.input_names):
        raise ExportError(f"graph {spec.name!r}: ONNX inputs {graph_inputs}, "
                          f"expected {spec.input_names}")
    for value in model.graph.input:
        first = value.type.tensor_type.shape.dim[0]
        if not first.dim_param:
            raise ExportError(f"graph {spec.name!r}: input {value.name!r} has a fixed batch axis")
    actual = int(next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")))
    if opset is not None and actual != opset:
        raise ExportError(f"graph {spec.name!r}: opset {opset} was asked for, the exporter "
                          f"wrote opset {actual}")
    return actual
