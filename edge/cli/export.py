"""`parse-edge export`: a checkpoint to ONNX encoders, slice heads, fused graphs and a manifest."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edge.errors import UserError

# torch, exporters.onnx_export and edge.checkpoint are imported inside `run`: every CLI module is
# imported at start-up, and `parse-edge infer` must run without torch.


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    """Register the `export` subcommand."""
    parser = sub.add_parser(
        name, help="export a checkpoint to ONNX encoders, heads and a manifest",
        description="Export an agent checkpoint to single-file ONNX graphs (one per encoder, one "
                    "per head, one fused graph per modality subset), check torch/onnxruntime "
                    "parity on the agent's test inputs and write DIR/manifest.json.")
    parser.add_argument("checkpoint", help="checkpoint.pt written by simulate/agent/trial")
    parser.add_argument("--out", required=True, help="bundle directory to write")
    parser.add_argument("--quantize", choices=["int8"], default=None,
                        help="also write int8 (onnxruntime dynamic quantization) graphs")
    parser.add_argument("--opset", type=int, default=None,
                        help="ONNX opset, 13 or newer (default: the exporter's choice; "
                             "below 18 the TorchScript exporter is used, for older runtimes)")
    parser.set_defaults(run=run)


def export_checkpoint(ck: Any, out_dir: str | Path, *, quantize: str | None = None,
                      opset: int | None = None) -> tuple[Any, list[dict[str, Any]]]:
    """Export a loaded checkpoint; returns the manifest and, per served modality subset, how
    the runtime compares with the torch model on the checkpoint's test inputs."""
    import numpy as np
    import torch

    from exporters.manifest import sha256_file
    from exporters.norm import apply_norm, norm_entry
    from exporters.onnx_export import ExportError, export_graphs

    if not hasattr(ck.model, "export_graphs"):
        raise UserError(f"{ck.path}: this model has no export_graphs(); cannot export it")
    raw_x = {m: np.asarray(ck.examples["x"][m], dtype=np.float32) for m in ck.modalities}
    try:
        entries = {m: norm_entry(ck.norm[m]["mean"], ck.norm[m]["std"], ck.input_shapes[m],
                                 source=f"{ck.path}: norm.{m}") for m in ck.modalities}
    except ValueError as exc:
        raise UserError(str(exc)) from None
    x_norm = {m: apply_norm(raw_x[m], entries[m]) for m in ck.modalities}
    graphs = ck.model.export_graphs({m: torch.from_numpy(x) for m, x in x_norm.items()})
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


def _runtime_vs_torch(ck: Any, out_dir: str | Path, manifest: Any, raw_x: dict,
                      x_norm: dict) -> list[dict[str, Any]]:
    """End to end: the runtime on raw inputs against the torch model on each served subset."""
    import numpy as np
    import torch

    from devices.runtime import Predictor

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


def run(args: argparse.Namespace) -> int:
    """Load the checkpoint, export, and print what was written and how well it matches."""
    from edge.checkpoint import load_checkpoint

    ck = load_checkpoint(args.checkpoint)
    manifest, checks = export_checkpoint(ck, args.out, quantize=args.quantize, opset=args.opset)
    print(f"exported agent {ck.agent_id} ({'+'.join(ck.modalities)}) to {args.out} "
          f"(opset {manifest.opset}, {len(manifest.graphs)} graphs)")
    print(f"{'graph':<28} {'prec':<5} {'KB':>8} {'max|diff|':>10} {'argmax=':>8}")
    for g in manifest.graphs:
        agree = "" if g.argmax_agreement is None else f"{g.argmax_agreement:.3f}"
        print(f"{g.name:<28} {g.precision:<5} {g.size_bytes / 1024:>8.1f} "
              f"{g.max_abs_diff:>10.2e} {agree:>8}")
    for g in manifest.graphs:
        if g.exporter_note and g.precision == "fp32":
            print(f"note: {g.name} used the {g.exporter} exporter ({g.exporter_note})")
    if manifest.quantization:
        q = manifest.quantization
        print(f"int8 total {q['int8_bytes'] / 1024:.1f} KB vs fp32 {q['fp32_bytes'] / 1024:.1f} KB")
    print("runtime on raw test inputs vs torch (accuracy on the checkpoint's test examples):")
    for row in checks:
        cols = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in row.items())
        print(f"  {cols}")
    return 0
