"""Issue 14 on the board path: hostile bundles and inputs are one-line errors with exit status 2.

Each case is an example from the issue, reproduced on a real exported toy bundle and served by
the real `parse-edge infer` / `Predictor` (onnxruntime): a manifest with wrong types, missing
fields, absurd sizes or non-finite statistics (kind 4, 6), a garbage or foreign .onnx whose sha256
the manifest matches (kind 4), a graph with NaN weights (kind 6), and decompression bombs, .npy
files renamed .npz, truncated and bit-flipped archives as inputs (kinds 4, 5).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from devices.runtime import InputError, Predictor, load_npz_inputs
from edge.cli import main
from exporters.manifest import ManifestError, sha256_file
from tests.exporters_toy import toy_bundle
from tests.hostile_files import declared_bomb, four_gib_bomb, zip64_bomb


@pytest.fixture(scope="module")
def toy() -> SimpleNamespace:
    """Share the fp32 multimodal mlp toy bundle with the CLI tests; never modified."""
    return toy_bundle("mlp", ("accel", "gyro"))


@pytest.fixture
def bundle(toy: SimpleNamespace, tmp_path: Path) -> Path:
    """Copy the bundle privately, for a test to damage."""
    return Path(shutil.copytree(toy.dir, tmp_path / "bundle"))


@pytest.fixture
def inputs(toy: SimpleNamespace, tmp_path: Path) -> Path:
    """Write real raw inputs for both modalities as an .npz."""
    path = tmp_path / "both.npz"
    np.savez(path, **toy.raw)
    return path


def _infer_error(capsys: pytest.CaptureFixture[str], bundle: Path, npz: Path) -> str:
    """Run `parse-edge infer` expecting a user error: exit 2, one line, no output."""
    rc = main(["infer", str(bundle), str(npz), "--json"])
    captured = capsys.readouterr()
    assert rc == 2, captured.out[:300]
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    return lines[0]


def _edit_manifest(bundle: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    path = bundle / "manifest.json"
    raw = json.loads(path.read_text())
    edit(raw)
    path.write_text(json.dumps(raw))  # allow_nan: NaN and Infinity are written as tokens


def _set(keys: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(raw: dict[str, Any]) -> None:
        node = raw
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    return edit


def _drop(keys: tuple[Any, ...]) -> Callable[[dict[str, Any]], None]:
    def edit(raw: dict[str, Any]) -> None:
        node = raw
        for key in keys[:-1]:
            node = node[key]
        del node[keys[-1]]
    return edit


def _replace_graph(bundle: Path, name: str, data: bytes) -> None:
    """Put `data` in place of graph `name` and make the manifest's sha256 and size match it."""
    (bundle / f"{name}.onnx").write_bytes(data)

    def edit(raw: dict[str, Any]) -> None:
        entry = next(g for g in raw["graphs"] if g["name"] == name)
        entry["sha256"] = sha256_file(bundle / entry["file"])
        entry["size_bytes"] = len(data)
    _edit_manifest(bundle, edit)


@pytest.mark.parametrize("edit, message", [
    # issue 14 kind 4: wrong types
    (_set(("inputs",), [{"name": "accel"}]), "manifest.json: inputs: expected object, got array"),
    (_set(("norm", "accel", "shape"), "abc"), "norm.accel.shape: expected array, got str"),
    (_set(("inputs", "gyro", "shape"), "abc"), "inputs.gyro.shape: expected array, got str"),
    (_set(("opset",), "x"), "opset: expected int, got str"),
    (_set(("graphs", 0, "size_bytes"), "12"), "graphs[0].size_bytes: expected int, got str"),
    (_set(("labels",), "walk,run"), "labels: expected array, got str"),
    # missing fields
    (_drop(("labels",)), "labels: missing; this field is required"),
    (_drop(("graphs", 2, "sha256")), "graphs[2].sha256: missing; this field is required"),
    (_drop(("norm", "gyro")), "norm.gyro: missing; expected an object with mean, std and shape"),
    # absurd sizes
    (_set(("inputs", "accel", "shape"), ["batch", 10**12]),
     "inputs.accel.shape[1]: expected int <= 2147483647, got 1000000000000"),
    (_set(("inputs", "accel", "shape"), ["batch", 65536, 65536]),
     "inputs.accel.shape: expected at most 16777216 values per sample"),
    (_set(("opset",), 10**30), "opset: expected int <= 100, got 1000000000000000000000000000000"),
    # issue 14 kind 6: non-finite statistics
    (_set(("norm", "accel", "mean", 0), float("nan")),
     "norm.accel.mean[0]: expected float >= -1e+30, got nan"),
    (_set(("norm", "gyro", "std", 1), 0.0), "norm.gyro.std[1]: expected float >= 1e-30, got 0.0"),
    (_set(("norm", "gyro", "std", 1), float("inf")),
     "norm.gyro.std[1]: expected float <= 1e+30, got inf"),
    # references that the runtime would follow into a KeyError or IndexError
    (_set(("serves", "accel", "fp32"), "head-R"), "serves.accel.fp32: expected a fused fp32 graph"),
    (_set(("labels",), ["a", "b"]), "outputs[0].shape: expected logits ['batch', 2] over the labels"),
    (_set(("norm", "accel", "shape"), [5]), "norm.accel.shape: expected a shape broadcasting"),
])
def test_hostile_manifest_is_a_one_line_error(capsys: pytest.CaptureFixture[str], bundle: Path,
                                              inputs: Path, edit: Callable[[dict[str, Any]], None],
                                              message: str) -> None:
    """Wrong types, missing fields, absurd sizes, non-finite statistics: field named, exit 2."""
    _edit_manifest(bundle, edit)
    line = _infer_error(capsys, bundle, inputs)
    assert f"{bundle / 'manifest.json'}: " in line
    assert message in line


def test_non_utf8_manifest_is_a_one_line_error(capsys: pytest.CaptureFixture[str], bundle: Path,
                                               inputs: Path) -> None:
    """A manifest saved in Latin-1 (or damaged) is named, not a UnicodeDecodeError."""
    path = bundle / "manifest.json"
    path.write_bytes(path.read_bytes().replace(b'"walk"', b'"w\xe4lk"'))
    assert "manifest.json: content: expected UTF-8 text" in _infer_error(capsys, bundle, inputs)


def test_garbage_onnx_with_matching_sha256_is_a_one_line_error(
        capsys: pytest.CaptureFixture[str], bundle: Path, inputs: Path) -> None:
    """Issue 14 kind 4: the manifest vouches for the file, onnxruntime cannot parse it."""
    _replace_graph(bundle, "fused-accel+gyro", b"\x08\x07garbage, not a protobuf" * 40)
    line = _infer_error(capsys, bundle, inputs)
    assert "fused-accel+gyro.onnx: graph: expected an ONNX graph onnxruntime can run" in line
    assert "InvalidProtobuf" in line


def test_another_models_graph_with_matching_sha256_is_a_one_line_error(
        capsys: pytest.CaptureFixture[str], bundle: Path, inputs: Path) -> None:
    """A valid ONNX file of another graph (one input, not two) fails where it is run."""
    _replace_graph(bundle, "fused-accel+gyro", (bundle / "fused-accel.onnx").read_bytes())
    line = _infer_error(capsys, bundle, inputs)
    assert "fused-accel+gyro.onnx: graph: expected an ONNX graph onnxruntime can run on " \
           "inputs ['accel', 'gyro']" in line


def _nan_weights(path: Path) -> bytes:
    model = onnx.load(str(path))
    for init in model.graph.initializer:
        weights = numpy_helper.to_array(init)
        if weights.dtype.kind == "f":
            init.CopyFrom(numpy_helper.from_array(np.full_like(weights, np.nan), init.name))
    data: bytes = model.SerializeToString()
    return data


def test_graph_with_nan_weights_never_serves_nan(capsys: pytest.CaptureFixture[str],
                                                 bundle: Path, toy: SimpleNamespace,
                                                 inputs: Path) -> None:
    """Issue 14 kind 6: NaN probabilities with exit 0 before; now refused, naming the graph."""
    _replace_graph(bundle, "fused-accel+gyro", _nan_weights(bundle / "fused-accel+gyro.onnx"))
    with pytest.raises(ManifestError, match=r"fused-accel\+gyro\.onnx: logits: expected finite "
                                            r"logits, got NaN or inf"):
        Predictor(bundle).predict(toy.raw)
    line = _infer_error(capsys, bundle, inputs)
    assert "expected finite logits" in line
    # The other subsets' graphs are intact and still serve.
    pred = Predictor(bundle).predict({"accel": toy.raw["accel"]})
    assert np.isfinite(pred.probabilities).all()


def test_inputs_that_overflow_normalisation_are_named(bundle: Path, toy: SimpleNamespace) -> None:
    """Finite raw values whose (x - mean) / std is inf in float32 are refused, not served."""
    _edit_manifest(bundle, _set(("norm", "accel", "std"), [1e-3] * len(toy.norm["accel"]["std"])))
    huge = np.full_like(toy.raw["accel"], 1e36)
    with pytest.raises(InputError, match=r"input 'accel': values too large to normalise"):
        Predictor(bundle).predict({"accel": huge, "gyro": toy.raw["gyro"]})


def _npy_renamed(tmp_path: Path, toy: SimpleNamespace) -> Path:
    path = tmp_path / "renamed.npz"
    with open(path, "wb") as fh:
        np.save(fh, toy.raw["accel"])
    return path


def _damaged(tmp_path: Path, toy: SimpleNamespace, how: str) -> Path:
    path = tmp_path / f"{how}.npz"
    np.savez_compressed(path, **toy.raw)
    data = bytearray(path.read_bytes())
    if how == "truncated":
        del data[len(data) // 2:]
    else:
        data[len(data) // 3] ^= 0x20
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("make, message", [
    (lambda tmp, toy: declared_bomb(tmp / "declared.npz"),
     "declared.npz: accel: array of shape (1000000000000, 3, 50) and dtype <f4 needs"),
    (_npy_renamed, "renamed.npz: <file>: expected an .npz archive, got a single .npy array"),
    (lambda tmp, toy: _damaged(tmp, toy, "truncated"),
     "truncated.npz: <file>: expected a readable .npz archive, the file is truncated or corrupt"),
    (lambda tmp, toy: _damaged(tmp, toy, "flipped"), "flipped.npz: <file>: expected a readable"),
])
def test_hostile_input_files_are_one_line_errors(
        capsys: pytest.CaptureFixture[str], toy: SimpleNamespace, tmp_path: Path,
        make: Callable[[Path, SimpleNamespace], Path], message: str) -> None:
    """Issue 14 kinds 4 and 5 through `parse-edge infer`: exit 2, the file and member named."""
    line = _infer_error(capsys, toy.dir, make(tmp_path, toy))
    assert message in line


def test_four_gib_bomb_is_refused_by_the_input_loader(tmp_path: Path) -> None:
    """Issue 14 kind 5: a ~4 MB npz that really holds a 4 GiB array; the cap is configurable."""
    path = four_gib_bomb()
    with pytest.raises(InputError, match=r"bomb\.npz: x: array of shape \(1073741824,\) and "
                                         r"dtype <f4 needs 4294967296 bytes, over the loader's "
                                         r"cap of 1073741824 bytes"):
        load_npz_inputs(path)
    small = zip64_bomb(tmp_path / "small.npz", n_chunks=1)  # 16 MiB
    with pytest.raises(InputError, match=r"cap of 1048576 bytes"):
        load_npz_inputs(small, max_bytes=1 << 20)
    assert load_npz_inputs(small, max_bytes=32 << 20)["x"].nbytes == 16 << 20
