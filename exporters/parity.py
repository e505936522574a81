"""Parity between a torch module and its ONNX export, measured on real inputs."""

from __future__ import annotations

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
    """The module's outputs (always a list) on `inputs`, fed positionally in `input_names` order."""
    args = [torch.from_numpy(np.ascontiguousarray(inputs[n], dtype=np.float32)) for n in input_names]
    with torch.no_grad():
        out = module(*args)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return [o.detach().cpu().numpy().astype(np.float32) for o in outs]


def max_abs_diff(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    """Largest absolute elementwise difference over paired outputs; shapes must match."""
    if len(a) != len(b):
        raise ParityError(f"output count differs: {len(a)} vs {len(b)}")
    worst = 0.0
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if x.shape != y.shape:
            raise ParityError(f"output {i} shape differs: {x.shape} vs {y.shape}")
        if x.size:
            worst = max(worst, float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))))
    return worst


def check_parity(name: str, module: torch.nn.Module, onnx_path: str | Path,
                 inputs: dict[str, np.ndarray], input_names: Sequence[str],
                 tolerance: float = FP32_TOLERANCE) -> tuple[float, list[np.ndarray]]:
    """Max |torch - onnxruntime| over all outputs; raises ParityError above `tolerance`.

    Returns the difference and the torch outputs (reused as references for int8 checks).
    """
    expected = torch_outputs(module, inputs, input_names)
    feed = {n: np.ascontiguousarray(inputs[n], dtype=np.float32) for n in input_names}
    got = run_graph(onnx_path, feed)
    diff = max_abs_diff(expected, got)
    if not np.isfinite(diff) or diff > tolerance:
        raise ParityError(f"graph {name!r}: torch vs onnxruntime max abs diff {diff:.3g} exceeds "
                          f"{tolerance:.0e} on {len(next(iter(feed.values())))} example inputs")
    return diff, expected
