"""`parse-edge infer`: serve an exported bundle on an .npz of inputs with onnxruntime (no torch).

Inputs are predicted one row at a time, as a board serves windows, and each row's latency is
measured (after one warm-up call that loads the graph). The .npz keys are modality names -
`accel` - or the data-file naming `x_accel` (the same file a fleet trains from); `y` (labels)
and arrays for modalities the bundle does not serve are ignored with a note on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from edge.errors import UserError

# Everything this command imports is torch-free: devices.runtime needs numpy and onnxruntime only.


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str) -> None:
    """Register the `infer` subcommand."""
    parser = sub.add_parser(
        name, help="run onnxruntime inference on an exported bundle",
        description="Predict labels for the arrays in INPUT.npz (keys: modality names, or "
                    "x_<modality> as in a data file) with the fused graph of the modalities "
                    "present, one row at a time with its latency; a missing modality is served "
                    "by the graph of the remaining ones, an extra one is ignored with a note.")
    parser.add_argument("bundle", help="directory written by `parse-edge export`")
    parser.add_argument("input", help=".npz file: one array (batch, *shape) per modality")
    parser.add_argument("--modalities", default=None,
                        help="comma-separated modalities to use (default: every one in the file)")
    parser.add_argument("--precision", choices=["fp32", "int8"], default=None,
                        help="graph precision (default: int8 if the bundle was quantized)")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per input row (label, probabilities, latency_ms)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Load, verify, predict row by row, print."""
    from devices.runtime import InputError, Predictor, load_npz_inputs
    from exporters.manifest import ManifestError

    modalities = None
    if args.modalities is not None:
        modalities = [m.strip() for m in args.modalities.split(",") if m.strip()]
        if not modalities:
            raise UserError("--modalities: expected a comma-separated list of modality names")
    try:
        predictor = Predictor(args.bundle, precision=args.precision)
        raw = load_npz_inputs(args.input)
    except (InputError, ManifestError) as exc:
        raise UserError(str(exc)) from None
    inputs = served_inputs(raw, predictor.modalities, args.input)
    for m, array in inputs.items():   # one sample without its batch axis: a batch of one
        if getattr(array, "shape", None) == predictor.manifest.inputs[m].sample_shape:
            inputs[m] = array[None]
    try:
        # The whole batch once: checks every array (shape, dtype, finite values, same number of
        # rows) before anything is printed, and loads the graph so that no row pays for it.
        batch = predictor.predict(inputs, modalities)
        for i in range(len(batch.labels)):
            started = time.perf_counter()
            prediction = predictor.predict(_row(inputs, i), modalities)
            latency_ms = (time.perf_counter() - started) * 1e3
            _print_row(i, prediction, predictor.labels, latency_ms, args.json)
    except InputError as exc:  # names the array; say which file it came from
        raise UserError(f"{args.input}: {exc}") from None
    except ManifestError as exc:
        raise UserError(str(exc)) from None
    return 0


def served_inputs(raw: dict[str, Any], served: list[str], source: str) -> dict[str, Any]:
    """Keep the arrays of an .npz the bundle serves, keyed by modality.

    `x_<m>` is read as `<m>`; labels (`y`) and other modalities are left out with a note on stderr.
    """
    inputs: dict[str, Any] = {}
    for key, array in raw.items():
        name = key[2:] if key.startswith("x_") and key[2:] in served else key
        if name in served:
            inputs[name] = array
        elif key == "y":
            print(f"note: {source}: ignoring 'y' (labels are not an input)", file=sys.stderr)
        else:
            print(f"note: {source}: ignoring {key!r}: this bundle serves {', '.join(served)}",
                  file=sys.stderr)
    return inputs


def _row(inputs: dict[str, Any], i: int) -> dict[str, Any]:
    return {m: a[i:i + 1] for m, a in inputs.items()}


def _print_row(i: int, prediction: Any, class_names: list[str], latency_ms: float,
               as_json: bool) -> None:
    label = prediction.labels[0]
    probabilities = prediction.probabilities[0]
    if as_json:
        print(json.dumps({
            "row": i, "label": label,
            "probabilities": {c: float(p) for c, p in zip(class_names, probabilities, strict=True)},
            "graph": prediction.graph, "modalities": list(prediction.modalities),
            "missing": list(prediction.missing), "latency_ms": round(latency_ms, 4)}))
        return
    if i == 0:
        missing = f"; missing: {', '.join(prediction.missing)}" if prediction.missing else ""
        print(f"graph {prediction.graph} (modalities: {', '.join(prediction.modalities)}{missing})")
        print(f"{'#':>5}  {'label':<16} {'p':>6}  {'ms':>7}")
    print(f"{i:>5}  {label:<16} {probabilities.max():>6.3f}  {latency_ms:>7.3f}")
