"""int8 dynamic quantization of exported graphs with onnxruntime, and how far it moves the outputs."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.shape_inference import quant_pre_process


@dataclass(frozen=True)
class QuantReport:
    """How an int8 graph compares with its fp32 source on the example inputs."""

    fp32_bytes: int
    int8_bytes: int
    max_abs_diff: float
    # Fraction of examples whose int8 argmax equals the reference argmax (fused graphs only).
    argmax_agreement: float | None = None


def quantize_int8(src: str | Path, dst: str | Path) -> None:
    """Write a dynamically quantized (int8 weights, uint8 activations) copy of `src` to `dst`."""
    with tempfile.TemporaryDirectory() as tmp:
        prepped = Path(tmp) / "prepped.onnx"
        # The recommended pre-processing; symbolic shape inference is skipped because it costs
        # seconds per graph and buys nothing for dynamic quantization of these small graphs.
        quant_pre_process(str(src), str(prepped), skip_symbolic_shape=True)
        quantize_dynamic(prepped, Path(dst), weight_type=QuantType.QInt8)
    onnx.checker.check_model(onnx.load(str(dst)), full_check=True)


def run_graph(path: str | Path, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """All outputs of the ONNX graph at `path` on `inputs` (single-threaded CPU session)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    outputs: list[np.ndarray] = session.run(None, inputs)
    return outputs


def compare_int8(fp32_path: str | Path, int8_path: str | Path, inputs: dict[str, np.ndarray],
                 reference_logits: np.ndarray | None = None) -> QuantReport:
    """Measure size and output drift of `int8_path` against `fp32_path`.

    Argmax agreement is measured against `reference_logits` (the torch model's) when given.
    """
    fp32_out = run_graph(fp32_path, inputs)
    int8_out = run_graph(int8_path, inputs)
    # numpy's max, not Python's: max(0.0, nan) is 0.0 and would hide NaN outputs.
    diff = float(np.max([np.max(np.abs(a - b)) for a, b in zip(fp32_out, int8_out, strict=True)]))
    agreement = None
    if reference_logits is not None:
        agree = np.argmax(int8_out[0], axis=-1) == np.argmax(reference_logits, axis=-1)
        agreement = float(np.mean(agree))
    return QuantReport(
        fp32_bytes=Path(fp32_path).stat().st_size, int8_bytes=Path(int8_path).stat().st_size,
        max_abs_diff=diff, argmax_agreement=agreement,
    )
