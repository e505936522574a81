"""Manifest validation, hashing and the subset naming shared by exporter and runtime."""

from __future__ import annotations

import json

import pytest

from exporters.manifest import (
    GraphEntry,
    Manifest,
    ManifestError,
    TensorSpec,
    load_manifest,
    manifest_from_dict,
    sha256_file,
    subset_key,
    verify_bundle,
)


def _manifest(tmp_path) -> Manifest:
    onnx_file = tmp_path / "fused-a.onnx"
    onnx_file.write_bytes(b"graph bytes")
    entry = GraphEntry(
        name="fused-a", role="fused", precision="fp32", file="fused-a.onnx",
        sha256=sha256_file(onnx_file), size_bytes=11, modalities=["a"],
        inputs=[TensorSpec("a", ["batch", 4])], outputs=[TensorSpec("logits", ["batch", 2])],
        exporter="dynamo", max_abs_diff=1e-7)
    return Manifest(
        labels=["no", "yes"], modalities=["a"], inputs={"a": TensorSpec("a", ["batch", 4])},
        norm={"a": {"mean": [0.0] * 4, "std": [1.0] * 4, "shape": [4]}},
        slice_dims={"a": {"r": 2, "u": 2, "s": 2}}, opset=18, graphs=[entry],
        serves={"a": {"fp32": "fused-a"}}, software_version="0.1.0")


def test_round_trip_through_json(tmp_path):
    # Prepare
    manifest = _manifest(tmp_path)
    # Execute
    manifest.write(tmp_path)
    loaded = load_manifest(tmp_path)
    # Assert
    assert loaded == manifest
    assert list(json.loads((tmp_path / "manifest.json").read_text()))[:2] == [
        "format", "format_version"]
    verify_bundle(tmp_path, loaded)  # hashes match: no error


def _raw(tmp_path) -> dict:
    return _manifest(tmp_path).to_dict()


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.update(format="other"), r"format: expected 'parse-edge-onnx-bundle'"),
    (lambda r: r.update(format_version=7), r"format_version: bundle has format 7"),
    (lambda r: r.update(labels=["only"]), r"labels: expected array of length >= 2"),
    (lambda r: r["inputs"].pop("a"), r"inputs\.a: missing; expected an object"),
    (lambda r: r["inputs"]["a"].update(shape=[4]), r"inputs\.a\.shape: expected a list starting"),
    (lambda r: r["inputs"]["a"].update(dtype="int8"),
     r"inputs\.a\.dtype: expected one of 'float32', got 'int8'"),
    (lambda r: r["norm"]["a"].update(std=[1.0, 0.0, 1.0, 1.0]),
     r"norm\.a\.std\[1\]: expected float >= 1e-30, got 0\.0"),
    (lambda r: r["norm"]["a"].update(mean=[0.0]), r"norm\.a: expected mean and std of 4 values"),
    (lambda r: r["graphs"][0].update(file="../x.onnx"), r"graphs\[0\]\.file: expected a plain"),
    (lambda r: r["graphs"][0].update(role="tail"),
     r"graphs\[0\]\.role: expected one of 'encoder', 'head', 'fused', got 'tail'"),
    (lambda r: r.update(serves={"a": {"fp32": "ghost"}}), r"serves\.a\.fp32: graph 'ghost'"),
])
def test_invalid_fields_are_named(tmp_path, mutate, message):
    # Prepare
    raw = _raw(tmp_path)
    mutate(raw)
    # Execute / Assert
    with pytest.raises(ManifestError, match=message):
        manifest_from_dict(raw)


def test_unreadable_json_is_named(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match=r"manifest\.json: content: expected valid JSON"):
        load_manifest(tmp_path)


def test_verify_bundle_detects_an_altered_file(tmp_path):
    # Prepare
    manifest = _manifest(tmp_path)
    (tmp_path / "fused-a.onnx").write_bytes(b"graph bytez")
    # Execute / Assert
    with pytest.raises(ManifestError, match=r"fused-a\.onnx: sha256: expected"):
        verify_bundle(tmp_path, manifest)


def test_subset_key_follows_the_agent_modality_order():
    assert subset_key({"gyro", "accel"}, ["accel", "gyro"]) == "accel+gyro"
    assert subset_key(["gyro"], ["accel", "gyro"]) == "gyro"
    assert subset_key(["fou", "pix", "kar"], ["pix", "fou", "kar"]) == "pix+fou+kar"


def test_manifest_module_imports_no_numpy_or_torch():
    import subprocess
    import sys

    code = ("import sys, exporters.manifest; "
            "bad = [m for m in ('torch', 'numpy') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
