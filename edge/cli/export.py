"""`parse-edge export`: a checkpoint to ONNX encoders, slice heads, fused graphs and a manifest."""

from __future__ import annotations

import argparse

# edge.learning.* (torch) is imported inside `run`: every CLI module is imported at start-up, and
# `parse-edge infer` must run without torch.


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str) -> None:
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


def run(args: argparse.Namespace) -> int:
    """Load the checkpoint, export, and print what was written and how well it matches."""
    from edge.learning.checkpoint import load_checkpoint
    from edge.learning.export import export_checkpoint

    ck = load_checkpoint(args.checkpoint)
    manifest, checks = export_checkpoint(ck, args.out, quantize=args.quantize, opset=args.opset)
    print(f"exported agent {ck.agent_id} ({'+'.join(ck.modalities)}) to {args.out} "
          f"(opset {manifest.opset}, {len(manifest.graphs)} graphs)")
    print(f"{'graph':<28} {'prec':<5} {'KB':>8} {'max|diff|':>10} {'argmax=':>8}")
    for g in manifest.graphs:
        agree = "-" if g.argmax_agreement is None else f"{g.argmax_agreement:.3f}"
        print(f"{g.name:<28} {g.precision:<5} {g.size_bytes / 1024:>8.1f} "
              f"{g.max_abs_diff:>10.2e} {agree:>8}")
    print("max|diff|: largest output difference from torch (int8: from the fp32 graph) on the "
          "check inputs; argmax=: share of them where an int8 head picks the torch model's "
          "class ('-': not measured, as for fp32 graphs)")
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
