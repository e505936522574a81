"""`parse-edge infer`: serve an exported bundle on an .npz of inputs with onnxruntime (no torch)."""

from __future__ import annotations

import argparse
import json

from edge.errors import UserError

# Everything this command imports is torch-free: devices.runtime needs numpy and onnxruntime only.


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str) -> None:
    """Register the `infer` subcommand."""
    parser = sub.add_parser(
        name, help="run onnxruntime inference on an exported bundle",
        description="Predict labels for the arrays in INPUT.npz (keys = modality names) with the "
                    "fused graph of the modalities present; a missing modality is served by the "
                    "graph of the remaining ones.")
    parser.add_argument("bundle", help="directory written by `parse-edge export`")
    parser.add_argument("input", help=".npz file: one array (batch, *shape) per modality")
    parser.add_argument("--modalities", default=None,
                        help="comma-separated modalities to use (default: every one in the file)")
    parser.add_argument("--precision", choices=["fp32", "int8"], default=None,
                        help="graph precision (default: int8 if the bundle was quantized)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Load, verify, predict, print."""
    from devices.runtime import InputError, Predictor, load_npz_inputs
    from exporters.manifest import ManifestError

    modalities = None
    if args.modalities is not None:
        modalities = [m.strip() for m in args.modalities.split(",") if m.strip()]
        if not modalities:
            raise UserError("--modalities: expected a comma-separated list of modality names")
    try:
        predictor = Predictor(args.bundle, precision=args.precision)
        inputs = load_npz_inputs(args.input)
    except (InputError, ManifestError) as exc:
        raise UserError(str(exc)) from None
    try:
        prediction = predictor.predict(inputs, modalities)
    except InputError as exc:  # names the array; say which file it came from
        raise UserError(f"{args.input}: {exc}") from None
    except ManifestError as exc:
        raise UserError(str(exc)) from None
    if args.json:
        print(json.dumps(prediction.to_dict(predictor.labels), indent=2))
        return 0
    missing = f"; missing: {', '.join(prediction.missing)}" if prediction.missing else ""
    print(f"graph {prediction.graph} (modalities: {', '.join(prediction.modalities)}{missing})")
    print(f"{'#':>5}  {'label':<16} {'p':>6}")
    for i, (label, row) in enumerate(zip(prediction.labels, prediction.probabilities,
                                         strict=True)):
        print(f"{i:>5}  {label:<16} {row.max():>6.3f}")
    return 0

