"""int8 dynamic quantization of an exported graph."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from torch import nn

from exporters.convert import GraphSpec, export_onnx
from exporters.quantize import compare_int8, quantize_int8, run_graph


def test_quantized_conv_graph_is_smaller_valid_and_close(tmp_path):
    # Prepare
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv1d(3, 64, 5, padding=2), nn.ReLU(),
                           nn.Conv1d(64, 64, 5, padding=2), nn.ReLU(),
                           nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(64, 6)).eval()
    x = np.random.default_rng(0).normal(size=(32, 3, 50)).astype(np.float32)
    fp32 = tmp_path / "g.onnx"
    export_onnx(GraphSpec("g", "fused", module, ["x"], ["logits"], ("x",), {"x": x}), fp32, None)
    with torch.no_grad():
        ref = module(torch.from_numpy(x)).numpy()
    # Execute
    quantize_int8(fp32, tmp_path / "g.int8.onnx")
    report = compare_int8(fp32, tmp_path / "g.int8.onnx", {"x": x}, ref)
    # Assert
    ops = {n.op_type for n in onnx.load(str(tmp_path / "g.int8.onnx")).graph.node}
    assert {"ConvInteger", "MatMulInteger"} & ops
    assert report.int8_bytes < 0.6 * report.fp32_bytes
    assert 0 < report.max_abs_diff < 0.1 * np.abs(ref).max()
    assert report.argmax_agreement >= 0.9
    (out,) = run_graph(tmp_path / "g.int8.onnx", {"x": x[:1]})
    assert out.shape == (1, 6)
