"""torch -> ONNX export of encoders, slice heads and fused graphs into a verified bundle."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from exporters.convert import (
    ExportError,
    GraphSpec,
    check_onnx,
    export_onnx,
    torchlib_ops_cached,
)
from exporters.manifest import (
    BATCH_DIM,
    MANIFEST_NAME,
    MIN_OPSET,
    ROLES,
    GraphEntry,
    Manifest,
    ManifestError,
    NormEntry,
    TensorSpec,
    load_manifest,
    sha256_file,
    subset_key,
)
from exporters.norm import norm_entry
from exporters.parity import FP32_TOLERANCE, ParityError, check_parity
from exporters.quantize import compare_int8, quantize_int8

__all__ = ["MIN_OPSET", "ExportError", "GraphSpec", "export_graphs", "export_onnx"]

QUANTIZE_MODES = ("int8",)


def software_version() -> str:
    """Return the installed parse-edge version, or 'unknown' from a bare source tree."""
    try:
        return version("parse-edge")
    except PackageNotFoundError:
        return "unknown"


def _validate_specs(graphs: Sequence[GraphSpec], modalities: Sequence[str]) -> None:
    names = [g.name for g in graphs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ExportError(f"graph names must be unique; repeated: {', '.join(dupes)}")
    for g in graphs:
        if g.role not in ROLES:
            raise ExportError(f"graph {g.name!r}: role {g.role!r}, expected one of {ROLES}")
        if not g.name or any(c in g.name for c in "/\\") or g.name.startswith("."):
            raise ExportError(f"graph {g.name!r}: expected a plain file stem")
        missing = [n for n in g.input_names if n not in g.example_inputs]
        if missing:
            raise ExportError(f"graph {g.name!r}: no example inputs for {', '.join(missing)}")
        unknown = [m for m in g.modalities if m not in modalities]
        if unknown:
            raise ExportError(f"graph {g.name!r}: modalities {unknown} not in {list(modalities)}")
        if g.role == "fused" and set(g.input_names) != set(g.modalities):
            raise ExportError(f"graph {g.name!r}: a fused graph's inputs must be its modalities "
                              f"{list(g.modalities)}, got {g.input_names}")
        _check_finite(g)
    if not any(g.role == "fused" for g in graphs):
        raise ExportError("no fused graph: the runtime needs at least one to serve predictions")


def _check_finite(spec: GraphSpec) -> None:
    """Refuse NaN/inf weights, buffers and example inputs.

    Such a graph serves NaN, and a NaN parity difference proves nothing.
    """
    for name, tensor in spec.module.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ExportError(f"graph {spec.name!r}: weight {name!r} holds NaN or inf; expected "
                              "finite weights (the checkpoint is corrupt or training diverged)")
    for name in spec.input_names:
        if not np.isfinite(np.asarray(spec.example_inputs[name], dtype=np.float64)).all():
            raise ExportError(f"graph {spec.name!r}: example input {name!r} holds NaN or inf; "
                              "expected finite inputs to check parity on")


def _tensor_specs(names: Sequence[str], arrays: Sequence[np.ndarray]) -> list[TensorSpec]:
    return [TensorSpec(n, [BATCH_DIM, *map(int, a.shape[1:])], "float32")
            for n, a in zip(names, arrays, strict=True)]


def export_graphs(
    graphs: Sequence[GraphSpec],
    out_dir: str | Path,
    *,
    labels: Sequence[str],
    norm: Mapping[str, Mapping[str, Any]],
    input_shapes: Mapping[str, Sequence[int]],
    opset: int | None = None,
    quantize: str | None = None,
    meta: Mapping[str, Any] | None = None,
    source_checkpoint: Mapping[str, Any] | None = None,
    tolerance: float = FP32_TOLERANCE,
) -> Manifest:
    """Export every graph, check parity, optionally add int8 copies, and write the manifest.

    `input_shapes` orders the modalities and gives each one's per-sample shape; `norm` holds the
    statistics the runtime applies (graphs take normalised inputs). The bundle is staged in a
    temporary directory and moved into `out_dir` only when every check passed.
    """
    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise ExportError(f"quantize: {quantize!r}, expected one of {QUANTIZE_MODES}")
    max_opset = onnx.defs.onnx_opset_version()
    if opset is not None and not MIN_OPSET <= opset <= max_opset:
        raise ExportError(f"opset: {opset}, expected {MIN_OPSET}..{max_opset}")
    modalities = list(input_shapes)
    _validate_specs(graphs, modalities)
    missing_norm = [m for m in modalities if m not in norm]
    if missing_norm:
        raise ExportError(f"norm: no statistics for {', '.join(missing_norm)}")
    try:
        norm_entries = {m: norm_entry(norm[m]["mean"], norm[m]["std"], input_shapes[m],
                                      source=f"norm.{m}") for m in modalities}
    except ValueError as exc:
        raise ExportError(str(exc)) from None

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        with torchlib_ops_cached():
            manifest = _export_into(stage, graphs, modalities, labels, norm_entries,
                                    input_shapes, opset, quantize, tolerance)
        manifest.meta = dict(meta or {})
        manifest.source_checkpoint = dict(source_checkpoint) if source_checkpoint else None
        manifest.write(stage)
        load_manifest(stage)  # a bundle that exports is a bundle the runtime loads
        _replace_bundle(stage, out_dir, manifest)
    except (ParityError, ManifestError) as exc:
        raise ExportError(str(exc)) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return manifest


def _export_into(stage: Path, graphs: Sequence[GraphSpec], modalities: list[str],
                 labels: Sequence[str], norm_entries: dict[str, NormEntry],
                 input_shapes: Mapping[str, Sequence[int]], opset: int | None,
                 quantize: str | None, tolerance: float) -> Manifest:
    entries: list[GraphEntry] = []
    serves: dict[str, dict[str, str]] = {}
    slice_dims: dict[str, dict[str, int]] = {}
    opsets: set[int] = set()
    quant: dict[str, Any] = {"mode": "dynamic", "weight_type": "int8", "graphs": {}}
    for spec in graphs:
        path = stage / f"{spec.name}.onnx"
        exporter, exporter_note = export_onnx(spec, path, opset)
        opsets.add(check_onnx(spec, path, opset))
        diff, expected = check_parity(spec.name, spec.module, path, spec.example_inputs,
                                      spec.input_names, tolerance)
        example_arrays = [np.asarray(spec.example_inputs[n]) for n in spec.input_names]
        inputs = _tensor_specs(spec.input_names, example_arrays)
        outputs = _tensor_specs(spec.output_names, expected)
        if spec.role == "fused" and outputs[0].shape[1:] != [len(labels)]:
            raise ExportError(f"graph {spec.name!r}: first output shaped {outputs[0].shape}, "
                              f"expected logits over {len(labels)} labels")
        if spec.role == "encoder" and len(spec.modalities) == 1:
            slice_dims[spec.modalities[0]] = {o.name: o.sample_shape[-1] for o in outputs}
        fp32 = GraphEntry(name=spec.name, role=spec.role, precision="fp32", file=path.name,
                          sha256=sha256_file(path), size_bytes=path.stat().st_size,
                          modalities=list(spec.modalities), inputs=inputs, outputs=outputs,
                          exporter=exporter, max_abs_diff=diff, exporter_note=exporter_note)
        entries.append(fp32)
        key = subset_key(spec.modalities, modalities)
        if spec.role == "fused":
            serves.setdefault(key, {})["fp32"] = spec.name
        if quantize == "int8":
            q_path = stage / f"{spec.name}.int8.onnx"
            quantize_int8(path, q_path)
            feed = {n: np.asarray(spec.example_inputs[n], dtype=np.float32)
                    for n in spec.input_names}
            report = compare_int8(path, q_path, feed,
                                  expected[0] if spec.role == "fused" else None)
            if not math.isfinite(report.max_abs_diff):
                raise ExportError(f"graph {spec.name!r}: the int8 copy outputs NaN or inf on "
                                  "the example inputs; expected finite outputs")
            entries.append(dataclasses.replace(
                fp32, name=f"{spec.name}.int8", precision="int8", file=q_path.name,
                sha256=sha256_file(q_path), size_bytes=q_path.stat().st_size,
                max_abs_diff=report.max_abs_diff, argmax_agreement=report.argmax_agreement))
            quant["graphs"][spec.name] = vars(report)
            if spec.role == "fused":
                serves[key]["int8"] = f"{spec.name}.int8"
    if quantize == "int8":
        quant["fp32_bytes"] = sum(e.size_bytes for e in entries if e.precision == "fp32")
        quant["int8_bytes"] = sum(e.size_bytes for e in entries if e.precision == "int8")
    return Manifest(
        labels=[str(x) for x in labels], modalities=modalities,
        inputs={m: TensorSpec(m, [BATCH_DIM, *map(int, input_shapes[m])]) for m in modalities},
        norm=norm_entries, slice_dims=slice_dims, opset=max(opsets), graphs=entries,
        serves=serves, default_precision="int8" if quantize == "int8" else "fp32",
        software_version=software_version(),
        created_utc=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        quantization=quant if quantize == "int8" else None,
    )


def _replace_bundle(stage: Path, out_dir: Path, manifest: Manifest) -> None:
    """Move the staged files into `out_dir`, removing the files of a bundle exported there before."""
    out_dir.mkdir(parents=True, exist_ok=True)
    old_manifest = out_dir / MANIFEST_NAME
    stale_files: list[str] = []
    if old_manifest.exists():
        with contextlib.suppress(ValueError, OSError, AttributeError, TypeError):
            stale_files = [g["file"] for g in json.loads(old_manifest.read_text())["graphs"]]
        old_manifest.unlink()  # first, so a half-replaced bundle never looks valid
    for name in stale_files:
        if "/" not in name and "\\" not in name:
            (out_dir / name).unlink(missing_ok=True)
    for entry in manifest.graphs:
        (stage / entry.file).replace(out_dir / entry.file)
    (stage / MANIFEST_NAME).replace(old_manifest)
