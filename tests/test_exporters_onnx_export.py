"""Export of mlp / conv1d agents (unimodal and multimodal) to verified ONNX bundles."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from devices.runtime import Predictor
from exporters.manifest import load_manifest, sha256_file
from exporters.onnx_export import ExportError, GraphSpec, export_graphs
from tests.exporters_toy import LABELS, make_case, normalised, torch_logits, toy_bundle

# The conv1d multimodal agent is exported with int8 too; the other three are fp32 only.
CASES = [("mlp", ("accel",), None), ("mlp", ("accel", "gyro"), None),
         ("conv1d", ("gyro",), None), ("conv1d", ("accel", "gyro"), "int8")]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-{'+'.join(c[1])}")
def exported(request):
    kind, modalities, quantize = request.param
    return toy_bundle(kind, modalities, quantize)


def test_every_graph_is_a_checked_single_file_onnx_with_dynamic_batch(exported):
    # Prepare
    e = exported
    # Execute
    files = sorted(p.name for p in e.dir.iterdir())
    # Assert
    quantized = [f"{s.name}.int8.onnx" for s in e.specs] if e.manifest.quantization else []
    assert files == sorted([f"{s.name}.onnx" for s in e.specs] + quantized + ["manifest.json"])
    for spec in e.specs:
        model = onnx.load(str(e.dir / f"{spec.name}.onnx"))
        onnx.checker.check_model(model, full_check=True)
        assert [i.name for i in model.graph.input] == spec.input_names
        assert [o.name for o in model.graph.output] == spec.output_names
        assert all(i.type.tensor_type.shape.dim[0].dim_param for i in model.graph.input)
        assert not any(init.data_location == onnx.TensorProto.EXTERNAL
                       for init in model.graph.initializer)
    # batch 1 and batch 5 both run on the same graph
    fused = e.dir / f"fused-{'+'.join(e.modalities)}.onnx"
    session = ort.InferenceSession(str(fused), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        (logits,) = session.run(None, {m: e.xs[m][:batch] for m in e.modalities})
        assert logits.shape == (batch, len(LABELS))


def test_manifest_describes_the_bundle(exported):
    # Prepare
    e = exported
    # Execute
    on_disk = json.loads((e.dir / "manifest.json").read_text())
    loaded = load_manifest(e.dir)
    # Assert
    assert on_disk["format_version"] == 1 and on_disk["labels"] == LABELS
    assert loaded.modalities == list(e.modalities)
    assert loaded.software_version not in ("", "unknown")
    assert loaded.source_checkpoint == {"path": "ck.pt", "sha256": "0" * 64}
    assert loaded.meta["agent_id"] == f"{e.kind}-{len(e.modalities)}"
    assert loaded.opset >= 17
    for m in e.modalities:
        assert loaded.inputs[m].shape == ["batch", *e.raw[m].shape[1:]]
        assert loaded.slice_dims[m] == {"r": 8, "u": 8, "s": 8}
        channels = e.raw[m].shape[1]
        assert loaded.norm[m]["shape"] == ([channels, 1] if e.kind == "conv1d" else [channels])
    for g in loaded.graphs:
        assert g.sha256 == sha256_file(e.dir / g.file)
        assert g.exporter == "dynamo"
    fp32 = [g for g in loaded.graphs if g.precision == "fp32"]
    assert sorted(g.name for g in fp32) == sorted(s.name for s in e.specs)
    assert all(g.max_abs_diff is not None and g.max_abs_diff <= 1e-4 for g in fp32)
    expected_keys = {"+".join(c) for c in e.agent.subsets()}
    assert set(loaded.serves) == expected_keys
    assert all(loaded.graph(v["fp32"]).role == "fused" for v in loaded.serves.values())
    assert loaded.default_precision == ("int8" if e.manifest.quantization else "fp32")


def test_each_subset_graph_agrees_with_the_torch_model_on_that_subset(exported):
    # Prepare
    e = exported
    predictor = Predictor(e.dir, precision="fp32")
    for subset in e.agent.subsets():
        # Execute: the runtime sees raw inputs and normalises them itself
        pred = predictor.predict({m: e.raw[m] for m in subset})
        ref = torch_logits(e.agent, {m: e.xs[m] for m in subset})
        # Assert
        assert pred.graph == f"fused-{'+'.join(subset)}"
        ref_probs = torch.softmax(torch.from_numpy(ref), dim=-1).numpy()
        np.testing.assert_allclose(pred.probabilities, ref_probs, atol=1e-5)
        assert (pred.label_indices == ref.argmax(-1)).all()


def test_int8_export_writes_quantized_copies_and_reports_size_and_agreement():
    # Prepare / Execute
    e = toy_bundle("conv1d", ("accel", "gyro"), "int8")
    manifest = e.manifest
    # Assert
    int8 = [g for g in manifest.graphs if g.precision == "int8"]
    assert len(int8) == len(e.specs)
    assert manifest.default_precision == "int8"
    assert manifest.quantization["int8_bytes"] < manifest.quantization["fp32_bytes"]
    fused = [g for g in int8 if g.role == "fused"]
    assert len(fused) == 3
    assert all(g.argmax_agreement is not None and g.argmax_agreement >= 0.8 for g in fused)
    model = onnx.load(str(e.dir / "encoder-accel.int8.onnx"))
    assert any(n.op_type in ("ConvInteger", "MatMulInteger") for n in model.graph.node)
    pred = Predictor(e.dir).predict({"accel": e.raw["accel"], "gyro": e.raw["gyro"]})
    assert pred.graph == "fused-accel+gyro.int8"
    ref = torch_logits(e.agent, e.xs)
    assert np.mean(pred.label_indices == ref.argmax(-1)) >= 0.8


class ExportsDifferently(nn.Module):
    """A module whose traced graph drifts from eager by 0.1 % (e.g. an export-only shortcut)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export():
            return x[:, :4] * 1.001
        return x[:, :4]


def test_parity_failure_fails_the_export_and_leaves_no_bundle(tmp_path):
    # Prepare
    x = np.random.default_rng(0).normal(size=(8, 6)).astype(np.float32)
    spec = GraphSpec("fused-accel", "fused", ExportsDifferently(), ["accel"], ["logits"], ("accel",),
                     {"accel": x})
    # Execute / Assert
    with pytest.raises(ExportError, match=r"fused-accel.*max abs diff .* exceeds 1e-04"):
        export_graphs([spec], tmp_path / "out", labels=LABELS,
                      norm={"accel": {"mean": [0.0] * 6, "std": [1.0] * 6}},
                      input_shapes={"accel": (6,)})
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # staging directory removed too


class Branchy(nn.Module):
    """Data-dependent Python control flow: torch.export refuses it, TorchScript traces it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x[:, :4] * 2
        return -x[:, :4]


def test_dynamo_failure_falls_back_to_torchscript_and_says_why(tmp_path):
    # Prepare: positive inputs, so the traced branch is the one parity sees
    x = np.abs(np.random.default_rng(0).normal(size=(8, 6))).astype(np.float32)
    spec = GraphSpec("fused-accel", "fused", Branchy(), ["accel"], ["logits"], ("accel",),
                     {"accel": x})
    # Execute
    manifest = export_graphs([spec], tmp_path / "out", labels=LABELS,
                             norm={"accel": {"mean": [0.0] * 6, "std": [1.0] * 6}},
                             input_shapes={"accel": (6,)})
    # Assert
    (entry,) = manifest.graphs
    assert entry.exporter == "torchscript"
    assert "data-dependent" in entry.exporter_note and "\n" not in entry.exporter_note
    assert entry.max_abs_diff <= 1e-4
    pred = Predictor(tmp_path / "out").predict({"accel": x[:3]})
    assert pred.probabilities.shape == (3, len(LABELS))


def _tiny_fused() -> tuple[GraphSpec, dict, dict]:
    x = np.random.default_rng(0).normal(size=(8, 6)).astype(np.float32)
    torch.manual_seed(0)
    spec = GraphSpec("fused-accel", "fused", nn.Linear(6, 4), ["accel"], ["logits"], ("accel",),
                     {"accel": x})
    return spec, {"accel": {"mean": [0.0] * 6, "std": [1.0] * 6}}, {"accel": (6,)}


def test_an_opset_below_the_dynamo_minimum_uses_torchscript_and_is_honoured(tmp_path):
    # Prepare
    spec, norm, shapes = _tiny_fused()
    # Execute
    manifest = export_graphs([spec], tmp_path / "o17", labels=LABELS, norm=norm,
                             input_shapes=shapes, opset=17)
    # Assert
    (entry,) = manifest.graphs
    assert manifest.opset == 17 and entry.exporter == "torchscript"
    assert "below the dynamo exporter's minimum 18" in entry.exporter_note
    model = onnx.load(str(tmp_path / "o17" / "fused-accel.onnx"))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]


def test_an_opset_out_of_range_is_refused_before_exporting(tmp_path):
    spec, norm, shapes = _tiny_fused()
    with pytest.raises(ExportError, match=r"opset: 5, expected 13\.\.\d+"):
        export_graphs([spec], tmp_path / "o5", labels=LABELS, norm=norm, input_shapes=shapes,
                      opset=5)
    assert not (tmp_path / "o5").exists()


def test_reexport_replaces_the_previous_bundle_files(tmp_path):
    # Prepare
    out = tmp_path / "b"
    e = toy_bundle("mlp", ("accel", "gyro"))
    fused = [s for s in e.specs if s.role == "fused"]
    export_graphs(fused[:2], out, labels=LABELS, norm=e.norm, input_shapes=e.shapes)
    (out / "notes.txt").write_text("user file")
    # Execute: a second export with other graphs
    export_graphs(fused[2:], out, labels=LABELS, norm=e.norm, input_shapes=e.shapes)
    # Assert
    assert sorted(p.name for p in out.iterdir()) == [
        "fused-accel+gyro.onnx", "manifest.json", "notes.txt"]
    assert list(load_manifest(out).serves) == ["accel+gyro"]


@pytest.mark.parametrize("mutate, message", [
    (lambda s: [*s, s[0]], "graph names must be unique; repeated: fused-accel"),
    (lambda s: [GraphSpec(**{**vars(s[0]), "input_names": ["gyro"]})],
     "no example inputs for gyro"),
    (lambda s: [GraphSpec(**{**vars(s[0]), "role": "encoder"})], "no fused graph"),
    (lambda s: [GraphSpec(**{**vars(s[0]), "role": "decoder"})], "role 'decoder'"),
])
def test_inconsistent_graph_specs_are_rejected_before_exporting(tmp_path, mutate, message):
    # Prepare
    agent, raw, norm, shapes = make_case("mlp", ("accel",))
    xs = normalised(raw, norm)
    specs = [s for s in agent.export_graphs({"accel": torch.from_numpy(xs["accel"])})
             if s.role == "fused"]
    # Execute / Assert
    with pytest.raises(ExportError, match=message):
        export_graphs(mutate(specs), tmp_path / "out", labels=LABELS, norm=norm,
                      input_shapes=shapes)


def test_statistics_that_fit_neither_channels_nor_features_are_rejected(tmp_path):
    # Prepare
    agent, raw, norm, shapes = make_case("conv1d", ("accel",))
    xs = normalised(raw, norm)
    specs = [s for s in agent.export_graphs({"accel": torch.from_numpy(xs["accel"])})
             if s.role == "fused"]
    bad = {"accel": {"mean": [0.0] * 7, "std": [1.0] * 7}}
    # Execute / Assert
    with pytest.raises(ExportError, match=r"norm.accel: 7 statistics fit neither"):
        export_graphs(specs, tmp_path / "out", labels=LABELS, norm=bad, input_shapes=shapes)
