"""Export a checkpoint: ONNX encoders, slice heads and fused graphs, the manifest, and how the
onnxruntime bundle compares with the torch model on the checkpoint's own test inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from devices.runtime import Predictor
from edge.errors import UserError
from edge.learning.checkpoint import Checkpoint
from edge.learning.graphs import export_graphs as model_graphs
from exporters.manifest import Manifest, sha256_file
from exporters.norm import apply_norm, norm_entry
from exporters.onnx_export import ExportError, export_graphs


def export_checkpoint(ck: Checkpoint, out_dir: str | Path, *, quantize: str | None = None,
                      opset: int | None = None) -> tuple[Manifest, list[dict[str, Any]]]:
    """Export a loaded checkpoint; returns the manifest and, per served modality subset, how
    the runtime compares with the torch model on the checkpoint's test inputs.
    """
    raw_x = {m: np.asarray(ck.examples["x"][m], dtype=np.float32) for m in ck.modalities}
    try:
        entries = {m: norm_entry(ck.norm[m]["mean"], ck.norm[m]["std"], ck.input_shapes[m],
                                 source=f"{ck.path}: norm.{m}") for m in ck.modalities}
    except ValueError as exc:
        raise UserError(str(exc)) from None
    x_norm = {m: apply_norm(raw_x[m], entries[m]) for m in ck.modalities}
    graphs = model_graphs(ck.model, {m: torch.from_numpy(x) for m, x in x_norm.items()})
    try:
        manifest = export_graphs(
            graphs, out_dir, labels=list(ck.labels), norm=ck.norm,
            input_shapes={m: tuple(ck.input_shapes[m]) for m in ck.modalities},
            opset=opset, quantize=quantize,
            meta={"agent_id": ck.agent_id, "round_idx": getattr(ck, "round_idx", None),
                  "strategy": getattr(ck, "strategy", None), "examples": len(ck.examples["y"])},
            source_checkpoint={"path": str(Path(ck.path).resolve()),
                               "sha256": sha256_file(ck.path)},
        )
    except ExportError as exc:
        raise UserError(f"export of {ck.path}: {exc}") from None
    return manifest, _runtime_vs_torch(ck, out_dir, manifest, raw_x, x_norm)


def _runtime_vs_torch(ck: Checkpoint, out_dir: str | Path, manifest: Manifest,
                      raw_x: dict[str, np.ndarray],
                      x_norm: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """End to end: the runtime on raw inputs against the torch model on each served subset."""
    y = np.asarray(ck.examples["y"])
    rows = []
    precisions = ["fp32"] + (["int8"] if manifest.default_precision == "int8" else [])
    predictors = {p: Predictor(out_dir, precision=p) for p in precisions}
    for key in manifest.serves:
        subset = key.split("+")
        with torch.no_grad():
            out = ck.model({m: torch.from_numpy(x_norm[m]) for m in subset})
        logits = (out.logits if hasattr(out, "logits") else out).numpy()
        torch_probs = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
        row: dict[str, Any] = {"modalities": key, "torch_accuracy": float(np.mean(
            logits.argmax(-1) == y))}
        for precision, predictor in predictors.items():
            pred = predictor.predict({m: raw_x[m] for m in subset})
            row[f"{precision}_accuracy"] = float(np.mean(pred.label_indices == y))
            row[f"{precision}_argmax_agreement"] = float(np.mean(
                pred.label_indices == logits.argmax(-1)))
            row[f"{precision}_max_prob_diff"] = float(np.max(np.abs(pred.probabilities
                                                                    - torch_probs)))
        rows.append(row)
    return rows
