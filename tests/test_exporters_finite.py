"""Issue 14 kind 6 on the export side: NaN weights, statistics and outputs never pass a check.

Before: a checkpoint whose weights were all NaN exported with the parity check passing, because
Python's max(0.0, nan) is 0.0 and dropped the NaN difference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from exporters.convert import GraphSpec, export_onnx
from exporters.norm import norm_entry
from exporters.onnx_export import ExportError, export_graphs
from exporters.parity import ParityError, check_parity, max_abs_diff
from exporters.quantize import compare_int8
from tests.exporters_toy import LABELS, make_case, normalised


def _fused_specs(poison: str | None = None) -> tuple[list[GraphSpec], dict[str, object]]:
    agent, raw, norm, shapes = make_case("mlp", ("accel",), n=8)
    agent.export_roles = ("fused",)
    xs = normalised(raw, norm)
    if poison == "weights":
        with torch.no_grad():
            for p in agent.parameters():
                p.fill_(float("nan"))
    if poison == "inputs":
        xs["accel"][3, 2] = np.inf
    specs = agent.export_graphs({m: torch.from_numpy(x) for m, x in xs.items()})
    return specs, {"labels": LABELS, "norm": norm, "input_shapes": shapes}


def test_nan_weights_are_refused_before_export(tmp_path: Path) -> None:
    """A checkpoint with NaN weights exports nothing and names the first bad weight."""
    specs, kwargs = _fused_specs("weights")
    with pytest.raises(ExportError, match=r"graph 'fused-accel': weight '.*' holds NaN or inf; "
                                          r"expected finite weights"):
        export_graphs(specs, tmp_path / "bundle", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "bundle").exists()


def test_non_finite_example_inputs_are_refused(tmp_path: Path) -> None:
    """Parity measured on inf inputs proves nothing; the example input is named."""
    specs, kwargs = _fused_specs("inputs")
    with pytest.raises(ExportError, match=r"example input 'accel' holds NaN or inf"):
        export_graphs(specs, tmp_path / "bundle", **kwargs)  # type: ignore[arg-type]


def test_max_abs_diff_keeps_nan() -> None:
    """NaN anywhere makes the difference NaN, in any output position."""
    finite, nan = np.zeros(3), np.array([0.0, np.nan, 0.0])
    assert np.isnan(max_abs_diff([finite], [nan]))
    assert np.isnan(max_abs_diff([finite, finite + 1], [nan, finite + 1.5]))
    assert np.isnan(max_abs_diff([finite + 1, finite], [finite + 1.5, nan]))
    assert max_abs_diff([finite, finite], [finite + 0.25, finite]) == 0.25


class Scale(nn.Module):
    """y = x * factor."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scale the input."""
        return x * self.factor


def test_parity_fails_when_either_side_outputs_nan(tmp_path: Path) -> None:
    """A module computing NaN no longer 'matches' its graph with max_abs_diff 0."""
    x = {"x": np.ones((4, 3), np.float32)}
    path = tmp_path / "scale.onnx"
    export_onnx(GraphSpec("scale", "head", Scale(2.0), ["x"], ["y"], (), x), path, None)
    diff, _ = check_parity("scale", Scale(2.0), path, x, ["x"])
    assert diff == 0.0
    with pytest.raises(ParityError, match=r"graph 'scale': the torch module outputs NaN or inf"):
        check_parity("scale", Scale(float("nan")), path, x, ["x"])


def _two_output_graph(path: Path, weight: float) -> None:
    """y1 = x, y2 = x * weight: a graph whose second output alone can turn NaN."""
    w = numpy_helper.from_array(np.array([weight], np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y1"]), helper.make_node("Mul", ["x", "w"], ["y2"])],
        "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 3]) for n in ("y1", "y2")],
        [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def test_int8_drift_keeps_nan(tmp_path: Path) -> None:
    """compare_int8's drift is NaN when any output of the copy is NaN (was order-dependent)."""
    _two_output_graph(tmp_path / "fp32.onnx", 2.0)
    _two_output_graph(tmp_path / "nan.onnx", float("nan"))
    _two_output_graph(tmp_path / "near.onnx", 2.01)
    feed = {"x": np.ones((2, 3), np.float32)}
    assert np.isnan(compare_int8(tmp_path / "fp32.onnx", tmp_path / "nan.onnx", feed).max_abs_diff)
    near = compare_int8(tmp_path / "fp32.onnx", tmp_path / "near.onnx", feed).max_abs_diff
    assert near == pytest.approx(0.01, abs=1e-6)


@pytest.mark.parametrize("mean, std, message", [
    ([0.0, 0.0, 0.0], [1.0, 1e-40, 1.0], r"std: expected strictly positive values in \[1e-30"),
    ([0.0, 0.0, 0.0], [1.0, 1e31, 1.0], r"std: expected strictly positive values in \[1e-30"),
    ([0.0, -2e30, 0.0], [1.0] * 3, r"mean: expected magnitudes up to 1e\+30"),
])
def test_statistics_the_loader_would_refuse_are_refused_at_export(
        mean: list[float], std: list[float], message: str) -> None:
    """A std of 1e-40 is 0 in float32 (division by zero on the board); bounds match the loader."""
    with pytest.raises(ValueError, match=message):
        norm_entry(mean, std, (3,))
