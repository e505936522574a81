"""Fuzzing the manifest loader (issue 14): a consistent Manifest or one ManifestError line.

Inputs are mutated from a valid two-modality, int8-quantized manifest: a value anywhere in the
JSON tree swapped for another type or an absurd value (NaN, 1e308, 10^30, huge lists), a key
deleted or added, and bit flips, cuts and overwrites of the JSON text. When the loader accepts a
manifest, what the runtime does with it must be safe: statistics finite and broadcasting over
the samples, every served subset resolving to a fused graph of that subset and precision.
"""

from __future__ import annotations

import copy
import json
import tempfile
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporters.manifest import (
    MANIFEST_NAME,
    GraphEntry,
    Manifest,
    ManifestError,
    TensorSpec,
    load_manifest,
    subset_key,
)
from exporters.norm import norm_arrays, norm_entry

FUZZ = settings(max_examples=400, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
SHAPES = {"accel": [3, 8], "gyro": [3, 8]}
LABELS = ["walk", "run", "sit"]


def _spec(name: str, dims: list[int]) -> TensorSpec:
    return TensorSpec(name, ["batch", *dims])


def _entry(name: str, role: str, modalities: list[str], inputs: list[TensorSpec],
           outputs: list[TensorSpec], precision: str = "fp32") -> GraphEntry:
    return GraphEntry(name=name, role=role, precision=precision,  # type: ignore[arg-type]
                      file=f"{name}.onnx", sha256="ab" * 32, size_bytes=1234,
                      modalities=modalities, inputs=inputs, outputs=outputs, exporter="dynamo",
                      max_abs_diff=1e-7, argmax_agreement=1.0 if precision == "int8" else None)


def valid_manifest() -> dict[str, Any]:
    """Build a manifest as the exporter writes it for a two-modality agent quantized to int8."""
    mods = list(SHAPES)
    graphs = [_entry(f"encoder-{m}", "encoder", [m], [_spec(m, SHAPES[m])],
                     [_spec(s, [4]) for s in "rus"]) for m in mods]
    graphs.append(_entry("head-R", "head", mods, [_spec("r", [4])], [_spec("logits", [3])]))
    serves: dict[str, dict[str, str]] = {}
    for subset in (["accel"], ["gyro"], mods):
        key = subset_key(subset, mods)
        for precision in ("fp32", "int8"):
            name = f"fused-{key}" + (".int8" if precision == "int8" else "")
            graphs.append(_entry(name, "fused", subset, [_spec(m, SHAPES[m]) for m in subset],
                                 [_spec("logits", [len(LABELS)])], precision))
            serves.setdefault(key, {})[precision] = name
    manifest = Manifest(
        labels=LABELS, modalities=mods, inputs={m: _spec(m, SHAPES[m]) for m in mods},
        norm={m: norm_entry([0.5, -1.0, 2.0], [1.0, 0.25, 3.0], SHAPES[m]) for m in mods},
        slice_dims={m: {"r": 4, "u": 4, "s": 4} for m in mods}, opset=18, graphs=graphs,
        serves=serves, default_precision="int8", software_version="0.1.0",
        source_checkpoint={"path": "ck.pt", "sha256": "0" * 64},
        created_utc="2025-01-01T00:00:00Z", meta={"agent_id": "a1"},
        quantization={"mode": "dynamic", "graphs": {}})
    return manifest.to_dict()


@pytest.fixture(scope="module")
def bundle_dir() -> Iterator[Path]:
    """Give the fuzzed manifest a directory (Hypothesis does not mix with function fixtures)."""
    with tempfile.TemporaryDirectory(prefix="fuzz-manifest-") as name:
        yield Path(name)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


ABSURD = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**30), 10**30), st.sampled_from([0, -1, 2**63]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e308, -0.0, 1e-320]),
    st.text(max_size=12), st.sampled_from(["abc", "batch", "x", "", "../../etc/passwd"]),
    st.lists(st.integers(-2, 10**13), max_size=5), st.just([1] * 5000),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3), st.just({}), st.just([]),
)


@st.composite
def tree_mutations(draw: st.DrawFn) -> dict[str, Any]:
    """Swap, delete or add 1-3 values anywhere in the valid manifest's tree."""
    raw = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(raw)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = raw
        for step in path[:-1]:
            parent = parent[step]
        op = draw(st.sampled_from(["swap", "swap", "delete", "add"]))
        value = copy.deepcopy(draw(ABSURD))  # st.just values are shared between examples
        if op == "swap":
            parent[path[-1]] = value
        elif op == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = value
        else:
            parent.append(value)
    return raw


@st.composite
def text_mutations(draw: st.DrawFn) -> bytes:
    """Flip, cut and overwrite bytes of the valid manifest's JSON text."""
    data = bytearray(json.dumps(VALID, indent=1).encode())
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "cut", "overwrite"]))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del data[max(at, 1):]
        else:
            patch = draw(st.sampled_from([b"NaN", b"Infinity", b"1e999", b"-1", b"null", b"[",
                                          b"\xff\xfe", b"\"", b"99999999999999999999999"]))
            data[at:at + len(patch)] = patch
    return bytes(data)


VALID = valid_manifest()


def _check(bundle_dir: Path) -> None:
    """Check the property, and what an accepted manifest guarantees to the runtime."""
    path = bundle_dir / MANIFEST_NAME
    tracemalloc.start()
    try:
        try:
            manifest = load_manifest(bundle_dir)
        except ManifestError as exc:
            message = str(exc)
            assert len(message.splitlines()) == 1 and message.startswith(f"{path}: "), message
            return
        finally:
            peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * path.stat().st_size + (1 << 20)
    for m in manifest.modalities:
        sample = manifest.inputs[m].sample_shape
        mean, std = norm_arrays(manifest.norm[m])
        assert np.broadcast_shapes(mean.shape, sample) == sample
        assert np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()
    for key, by_precision in manifest.serves.items():
        assert set(key.split("+")) <= set(manifest.modalities)
        for precision, name in by_precision.items():
            entry = manifest.graph(name)
            assert entry.role == "fused" and entry.precision == precision
            assert sorted(t.name for t in entry.inputs) == sorted(entry.modalities)
            assert entry.outputs[0].shape == ["batch", len(manifest.labels)]


def test_the_unmutated_manifest_loads(bundle_dir: Path) -> None:
    """The control: the base document is valid, so rejections below come from the mutations."""
    (bundle_dir / MANIFEST_NAME).write_text(json.dumps(VALID))
    assert load_manifest(bundle_dir).to_dict() == VALID


@FUZZ
@given(raw=tree_mutations())
def test_type_swaps_give_a_manifest_or_one_line(bundle_dir: Path, raw: dict[str, Any]) -> None:
    """Swapped types, absurd values, missing and extra keys: never another exception."""
    (bundle_dir / MANIFEST_NAME).write_text(json.dumps(raw))
    _check(bundle_dir)


@FUZZ
@given(data=text_mutations())
def test_damaged_json_gives_a_manifest_or_one_line(bundle_dir: Path, data: bytes) -> None:
    """Flipped bits, cuts, NaN/Infinity tokens and invalid UTF-8 in the text."""
    (bundle_dir / MANIFEST_NAME).write_bytes(data)
    _check(bundle_dir)
