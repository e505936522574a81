"""Parity between a torch module and its ONNX export, measured on real inputs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from exporters.quantize import run_graph

FP32_TOLERANCE = 1e-4


class ParityError(ValueError):
    """The exported graph does not compute what the torch module computes."""


def torch_outputs(module: torch.nn.Module, inputs: dict[str, np.ndarray],
                  input_names: Sequence[str]) -> list[np.ndarray]:
    """Run `module` on `inputs` fed positionally in `input_names` order; outputs as a list."""
    args = [torch.from_numpy(np.ascontiguousarray(inputs[n], dtype=np.float32)) for n in input_names]
    with torch.no_grad():
        out = module(*args)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return [o.detach().cpu().numpy().astype(np.float32) for o in outs]


def max_abs_diff(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    """Largest absolute elementwise difference over paired outputs; shapes must match.

    NaN anywhere gives NaN (Python's `max` would drop it: max(0.0, nan) is 0.0), so a caller
    comparing the result with a tolerance must treat NaN as a failure.
    """
    if len(a) != len(b):
        raise ParityError(f"output count differs: {len(a)} vs {len(b)}")
    diffs = [0.0]
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if x.shape != y.shape:
            raise ParityError(f"output {i} shape differs: {x.shape} vs {y.shape}")
        if x.size:
            diffs.append(float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))))
    return float(np.max(diffs))  # numpy's max propagates NaN


def check_parity(name: str, module: torch.nn.Module, onnx_path: str | Path,
                 inputs: dict[str, np.ndarray], input_names: Sequence[str],
                 tolerance: float = FP32_TOLERANCE) -> tuple[float, list[np.ndarray]]:
    """Max |torch - onnxruntime| over all outputs; raises ParityError above `tolerance`.

    Returns the difference and the torch outputs (reused as references for int8 checks).
    """
    expected = torch_outputs(module, inputs, input_names)
    feed = {n: np.ascontiguousarray(inputs[n], dtype=np.float32) for n in input_names}
    got = run_graph(onnx_path, feed)
    for side, outputs in (("the torch module", expected), ("onnxruntime", got)):
        if not all(np.isfinite(o).all() for o in outputs):
            raise ParityError(f"graph {name!r}: {side} outputs NaN or inf on the example inputs; "
                              "expected finite outputs (are the weights finite?)")
    diff = max_abs_diff(expected, got)
    if not math.isfinite(diff) or diff > tolerance:
        raise ParityError(f"graph {name!r}: torch vs onnxruntime max abs diff {diff:.3g} exceeds "
                          f"{tolerance:.0e} on {len(next(iter(feed.values())))} example inputs")
    return diff, expected
