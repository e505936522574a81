"""The torch-free runtime: graph choice, normalisation, and one-line errors for bad bundles/inputs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from devices.runtime import InputError, Predictor, load_npz_inputs, softmax
from exporters.manifest import ManifestError
from tests.exporters_toy import LABELS, torch_logits, toy_bundle


@pytest.fixture(scope="module")
def bundle():
    """A multimodal conv1d agent exported fp32 and int8 (shared with the exporter tests)."""
    return toy_bundle("conv1d", ("accel", "gyro"), "int8")


@pytest.fixture
def copy(bundle, tmp_path):
    """A private copy of the bundle that a test may damage."""
    return shutil.copytree(bundle.dir, tmp_path / "bundle")


def test_full_input_is_served_by_the_full_graph_and_matches_torch(bundle):
    # Prepare
    predictor = Predictor(bundle.dir, precision="fp32")
    # Execute
    pred = predictor.predict(bundle.raw)
    # Assert
    ref = torch_logits(bundle.agent, bundle.xs)
    assert pred.graph == "fused-accel+gyro" and pred.missing == ()
    np.testing.assert_allclose(pred.probabilities, softmax(ref), atol=1e-5)
    assert pred.labels == [LABELS[i] for i in ref.argmax(-1)]
    np.testing.assert_allclose(pred.probabilities.sum(-1), 1.0, atol=1e-6)


def test_missing_modality_is_served_by_the_remaining_subset(bundle):
    # Prepare
    predictor = Predictor(bundle.dir, precision="fp32")
    # Execute
    pred = predictor.predict({"gyro": bundle.raw["gyro"]})
    # Assert
    assert pred.graph == "fused-gyro"
    assert pred.modalities == ("gyro",) and pred.missing == ("accel",)
    ref = torch_logits(bundle.agent, {"gyro": bundle.xs["gyro"]})
    np.testing.assert_allclose(pred.probabilities, softmax(ref), atol=1e-5)


def test_modalities_argument_restricts_the_inputs_used(bundle):
    # Prepare
    predictor = Predictor(bundle.dir, precision="fp32")
    # Execute
    pred = predictor.predict(bundle.raw, modalities=["accel"])
    # Assert
    assert pred.graph == "fused-accel" and pred.missing == ("gyro",)


def test_int8_is_the_default_of_a_quantized_bundle_and_agrees_with_fp32(bundle):
    # Prepare
    int8, fp32 = Predictor(bundle.dir), Predictor(bundle.dir, precision="fp32")
    # Execute
    p8, p32 = int8.predict(bundle.raw), fp32.predict(bundle.raw)
    # Assert
    assert p8.graph == "fused-accel+gyro.int8"
    assert np.mean(p8.label_indices == p32.label_indices) >= 0.8
    assert np.max(np.abs(p8.probabilities - p32.probabilities)) < 0.1


def test_one_sample_without_batch_axis_and_float64_are_accepted(bundle):
    # Prepare
    predictor = Predictor(bundle.dir, precision="fp32")
    sample = {m: x[3].astype(np.float64) for m, x in bundle.raw.items()}
    # Execute
    pred = predictor.predict(sample)
    # Assert
    batch = predictor.predict({m: x[3:4] for m, x in bundle.raw.items()})
    assert pred.probabilities.shape == (1, len(LABELS))
    np.testing.assert_allclose(pred.probabilities, batch.probabilities, atol=1e-6)


def test_to_dict_lists_every_class_probability(bundle):
    # Prepare
    predictor = Predictor(bundle.dir, precision="fp32")
    # Execute
    out = predictor.predict({"accel": bundle.raw["accel"][:2]}).to_dict(predictor.labels)
    # Assert
    assert out["graph"] == "fused-accel" and out["missing"] == ["gyro"]
    assert len(out["predictions"]) == 2
    assert set(out["predictions"][0]["probabilities"]) == set(LABELS)
    json.dumps(out)  # JSON-ready


def test_altered_graph_file_is_a_hash_mismatch_naming_the_file(copy):
    # Prepare
    target = copy / "fused-gyro.onnx"
    data = bytearray(target.read_bytes())
    data[-5] ^= 0xFF
    target.write_bytes(bytes(data))
    # Execute / Assert
    with pytest.raises(ManifestError, match=r"fused-gyro\.onnx: sha256: expected .*file altered"):
        Predictor(copy)


def test_missing_graph_file_is_named(copy):
    # Prepare
    (copy / "fused-accel.int8.onnx").unlink()
    # Execute / Assert
    with pytest.raises(ManifestError, match=r"fused-accel\.int8\.onnx: file: missing"):
        Predictor(copy)


def test_newer_manifest_format_asks_for_an_upgrade(copy):
    # Prepare
    path = copy / "manifest.json"
    raw = json.loads(path.read_text())
    raw["format_version"] = 2
    path.write_text(json.dumps(raw))
    # Execute / Assert
    with pytest.raises(ManifestError, match=r"format_version: bundle has format 2, .*reads up to 1"):
        Predictor(copy)


def test_missing_manifest_is_named(tmp_path):
    with pytest.raises(ManifestError, match=r"manifest\.json: file: missing"):
        Predictor(tmp_path)


def test_int8_precision_on_an_fp32_bundle_is_refused(copy):
    # Prepare: drop the int8 graphs from the manifest
    path = copy / "manifest.json"
    raw = json.loads(path.read_text())
    raw["graphs"] = [g for g in raw["graphs"] if g["precision"] == "fp32"]
    raw["serves"] = {k: {"fp32": v["fp32"]} for k, v in raw["serves"].items()}
    path.write_text(json.dumps(raw))
    # Execute / Assert
    with pytest.raises(ManifestError, match=r"precision 'int8': no graph of that precision"):
        Predictor(copy, precision="int8")


@pytest.mark.parametrize("make_inputs, message", [
    (lambda r: {**r, "magnet": r["accel"]}, r"input 'magnet': unknown modality, expected one of "
                                            r"accel, gyro"),
    (lambda r: {"accel": r["accel"][:, :, :-1]}, r"input 'accel': shape \(24, 3, 39\), expected "
                                                 r"\(batch, 3, 40\)"),
    (lambda r: {"accel": r["accel"].astype(np.int64)}, r"input 'accel': dtype int64, expected "
                                                       r"float32"),
    (lambda r: {"accel": np.where(np.arange(40) == 7, np.nan, r["accel"])},
     r"input 'accel': contains NaN or infinite values"),
    (lambda r: {"accel": r["accel"], "gyro": r["gyro"][:5]}, r"disagree on batch size"),
    (lambda r: {}, r"no input given"),
])
def test_bad_inputs_are_one_line_errors_naming_the_input(bundle, make_inputs, message):
    # Prepare
    predictor = Predictor(bundle.dir, precision="fp32")
    # Execute / Assert
    with pytest.raises(InputError, match=message) as info:
        predictor.predict(make_inputs(bundle.raw))
    assert "\n" not in str(info.value)


def test_requested_modality_absent_from_the_input_is_named(bundle):
    predictor = Predictor(bundle.dir, precision="fp32")
    with pytest.raises(InputError, match=r"input 'gyro': requested but not provided"):
        predictor.predict({"accel": bundle.raw["accel"]}, modalities=["accel", "gyro"])


def test_npz_loader_names_a_bad_file(tmp_path):
    # Prepare
    bad = tmp_path / "x.npz"
    bad.write_text("not a zip")
    good = tmp_path / "y.npz"
    np.savez(good, accel=np.zeros((2, 3, 40), np.float32))
    # Execute / Assert
    with pytest.raises(InputError,
                       match=r"x\.npz: <file>: expected an \.npz archive \(a zip of \.npy arrays\)"):
        load_npz_inputs(bad)
    assert load_npz_inputs(good)["accel"].shape == (2, 3, 40)
