"""Parity measurement between a torch module and its ONNX graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from exporters.convert import GraphSpec, export_onnx
from exporters.parity import ParityError, check_parity, max_abs_diff, torch_outputs


class TwoOut(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a * 2, a[:, :2] + b


def test_faithful_export_passes_and_returns_torch_outputs(tmp_path):
    # Prepare
    rng = np.random.default_rng(0)
    inputs = {"a": rng.normal(size=(5, 3)).astype(np.float32),
              "b": rng.normal(size=(5, 2)).astype(np.float32)}
    spec = GraphSpec("two", "head", TwoOut(), ["a", "b"], ["y", "z"], (), inputs)
    export_onnx(spec, tmp_path / "two.onnx", None)
    # Execute
    diff, expected = check_parity("two", TwoOut(), tmp_path / "two.onnx", inputs, ["a", "b"])
    # Assert
    assert diff <= 1e-6
    np.testing.assert_allclose(expected[1], inputs["a"][:, :2] + inputs["b"], rtol=1e-6)


def test_a_drifting_graph_fails_with_the_measured_difference(tmp_path):
    # Prepare: export x*2, then compare it against a module computing x*2.001
    x = {"a": np.ones((4, 3), np.float32), "b": np.zeros((4, 2), np.float32)}
    export_onnx(GraphSpec("two", "head", TwoOut(), ["a", "b"], ["y", "z"], (), x),
                tmp_path / "two.onnx", None)

    class Drift(TwoOut):
        def forward(self, a, b):
            y, z = super().forward(a, b)
            return y * 1.0005, z

    # Execute / Assert
    with pytest.raises(ParityError, match=r"graph 'two': .*max abs diff 0\.001 exceeds 1e-04"):
        check_parity("two", Drift(), tmp_path / "two.onnx", x, ["a", "b"])


def test_max_abs_diff_refuses_mismatched_outputs():
    with pytest.raises(ParityError, match="output count differs"):
        max_abs_diff([np.zeros(2)], [np.zeros(2), np.zeros(2)])
    with pytest.raises(ParityError, match=r"output 0 shape differs"):
        max_abs_diff([np.zeros((2, 3))], [np.zeros((3, 2))])
    assert max_abs_diff([np.array([1.0, 2.0])], [np.array([1.5, 2.0])]) == 0.5


def test_torch_outputs_always_returns_a_list_of_float32():
    out = torch_outputs(nn.Identity(), {"x": np.ones((2, 2), np.float64)}, ["x"])
    assert len(out) == 1 and out[0].dtype == np.float32
