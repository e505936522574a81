"""The export manifest: what an ONNX bundle holds, shared by the exporter and the torch-free runtime."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# This module is imported by the on-board runtime: stdlib only (numpy lives in exporters.norm).

MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "parse-edge-onnx-bundle"
FORMAT_VERSION = 1
BATCH_DIM = "batch"
ROLES = ("encoder", "head", "fused")
PRECISIONS = ("fp32", "int8")
SUPPORTED_DTYPES = ("float32",)


class ManifestError(ValueError):
    """A bundle (manifest or one of its files) is not what was expected; the message is one line."""

    def __init__(self, source: str, what: str, expected: str) -> None:
        self.source = source
        self.what = what
        self.expected = expected
        super().__init__(f"{source}: {what}: {expected}")


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output; `shape[0]` is the dynamic batch axis ("batch")."""

    name: str
    shape: list[int | str]
    dtype: str = "float32"

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample (the batch axis dropped)."""
        return tuple(int(d) for d in self.shape[1:])


@dataclass(frozen=True)
class GraphEntry:
    """One ONNX file in the bundle and what it computes."""

    name: str
    role: str
    precision: str
    file: str
    sha256: str
    size_bytes: int
    modalities: list[str]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    exporter: str
    # fp32: max |torch - onnxruntime| on the example inputs; int8: max |fp32 - int8| of outputs.
    max_abs_diff: float | None = None
    # int8 fused graphs only: fraction of examples whose argmax equals the fp32 torch argmax.
    argmax_agreement: float | None = None
    # Why the TorchScript fallback was used, when it was.
    exporter_note: str | None = None


@dataclass
class Manifest:
    """Everything a runtime needs to serve an exported agent, and where it came from."""

    labels: list[str]
    modalities: list[str]
    inputs: dict[str, TensorSpec]
    # Applied by the runtime, never baked into the graphs: x_norm = (x - mean) / std, where
    # mean/std are flat lists reshaped to `shape` (broadcastable against one sample).
    norm: dict[str, dict[str, Any]]
    slice_dims: dict[str, dict[str, int]]
    opset: int
    graphs: list[GraphEntry]
    # Modality-subset key ("accel+gyro", order of `modalities`) -> precision -> fused graph name.
    serves: dict[str, dict[str, str]]
    default_precision: str = "fp32"
    software_version: str = "unknown"
    source_checkpoint: dict[str, Any] | None = None
    created_utc: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] | None = None
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    def graph(self, name: str) -> GraphEntry:
        """The graph called `name`."""
        for entry in self.graphs:
            if entry.name == name:
                return entry
        raise ManifestError(MANIFEST_NAME, f"graph {name!r}", "not listed in the manifest")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; key order puts the format first so a reader can check it early."""
        body = asdict(self)
        head = {"format": body.pop("format"), "format_version": body.pop("format_version")}
        return {**head, **body}

    def write(self, bundle_dir: str | Path) -> Path:
        """Write `bundle_dir/manifest.json` atomically and return its path."""
        path = Path(bundle_dir) / MANIFEST_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")
        tmp.replace(path)
        return path


def subset_key(modalities: Iterable[str], order: Sequence[str]) -> str:
    """The canonical name of a modality subset: its members in `order`, joined by '+'."""
    chosen = set(modalities)
    return "+".join(m for m in order if m in chosen)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _require(cond: bool, source: str, what: str, expected: str) -> None:
    if not cond:
        raise ManifestError(source, what, expected)


def _tensor(raw: Any, source: str, what: str) -> TensorSpec:
    _require(isinstance(raw, dict), source, what, "expected an object with name, shape, dtype")
    name, shape, dtype = raw.get("name"), raw.get("shape"), raw.get("dtype", "float32")
    _require(isinstance(name, str) and bool(name), source, f"{what}.name", "expected a string")
    _require(isinstance(shape, list) and len(shape) >= 1 and shape[0] == BATCH_DIM, source,
             f"{what}.shape", f"expected a list starting with {BATCH_DIM!r}")
    _require(all(isinstance(d, int) and d > 0 for d in shape[1:]), source, f"{what}.shape",
             "expected positive integer sizes after the batch axis")
    _require(dtype in SUPPORTED_DTYPES, source, f"{what}.dtype",
             f"expected one of {', '.join(SUPPORTED_DTYPES)}, got {dtype!r}")
    return TensorSpec(name=name, shape=list(shape), dtype=dtype)


def _graph(raw: Any, source: str, idx: int) -> GraphEntry:
    what = f"graphs[{idx}]"
    _require(isinstance(raw, dict), source, what, "expected an object")
    for key in ("name", "file", "sha256", "exporter"):
        _require(isinstance(raw.get(key), str), source, f"{what}.{key}", "expected a string")
    _require(raw.get("role") in ROLES, source, f"{what}.role", f"expected one of {ROLES}")
    _require(raw.get("precision") in PRECISIONS, source, f"{what}.precision",
             f"expected one of {PRECISIONS}")
    _require("/" not in raw["file"] and "\\" not in raw["file"] and not raw["file"].startswith("."),
             source, f"{what}.file", "expected a plain file name inside the bundle")
    return GraphEntry(
        name=raw["name"], role=raw["role"], precision=raw["precision"], file=raw["file"],
        sha256=raw["sha256"], size_bytes=int(raw.get("size_bytes", 0)),
        modalities=list(raw.get("modalities", [])),
        inputs=[_tensor(t, source, f"{what}.inputs[{i}]") for i, t in enumerate(raw["inputs"])],
        outputs=[_tensor(t, source, f"{what}.outputs[{i}]") for i, t in enumerate(raw["outputs"])],
        exporter=raw["exporter"], max_abs_diff=raw.get("max_abs_diff"),
        argmax_agreement=raw.get("argmax_agreement"), exporter_note=raw.get("exporter_note"),
    )


def manifest_from_dict(raw: Any, source: str = MANIFEST_NAME) -> Manifest:
    """Validate a parsed manifest; every problem is a ManifestError naming the field."""
    _require(isinstance(raw, dict), source, "top level", "expected a JSON object")
    _require(raw.get("format") == FORMAT_NAME, source, "format", f"expected {FORMAT_NAME!r}")
    version = raw.get("format_version")
    _require(isinstance(version, int) and version >= 1, source, "format_version",
             "expected a positive integer")
    _require(version <= FORMAT_VERSION, source, "format_version",
             f"bundle has format {version}, this parse-edge reads up to {FORMAT_VERSION}; "
             "upgrade parse-edge on this board")
    modalities = raw.get("modalities")
    _require(isinstance(modalities, list) and bool(modalities)
             and all(isinstance(m, str) for m in modalities), source, "modalities",
             "expected a non-empty list of names")
    labels = raw.get("labels")
    _require(isinstance(labels, list) and len(labels) >= 2, source, "labels",
             "expected a list of at least two class names")
    inputs = {m: _tensor(raw.get("inputs", {}).get(m), source, f"inputs.{m}") for m in modalities}
    norm = raw.get("norm", {})
    for m in modalities:
        stats = norm.get(m)
        _require(isinstance(stats, dict) and {"mean", "std", "shape"} <= set(stats), source,
                 f"norm.{m}", "expected an object with mean, std and shape")
        size = math.prod(stats["shape"])
        _require(len(stats["mean"]) == size and len(stats["std"]) == size, source, f"norm.{m}",
                 f"expected mean and std of {size} values (shape {stats['shape']})")
        _require(all(s > 0 for s in stats["std"]), source, f"norm.{m}.std",
                 "expected strictly positive values")
    graphs = [_graph(g, source, i) for i, g in enumerate(raw.get("graphs", []))]
    names = {g.name for g in graphs}
    serves = raw.get("serves", {})
    _require(isinstance(serves, dict) and bool(serves), source, "serves",
             "expected at least one modality subset with a fused graph")
    for key, by_precision in serves.items():
        for precision, name in by_precision.items():
            _require(name in names, source, f"serves.{key}.{precision}",
                     f"graph {name!r} is not listed in graphs")
    return Manifest(
        labels=[str(x) for x in labels], modalities=list(modalities), inputs=inputs, norm=norm,
        slice_dims=raw.get("slice_dims", {}), opset=int(raw.get("opset", 0)), graphs=graphs,
        serves=serves, default_precision=raw.get("default_precision", "fp32"),
        software_version=str(raw.get("software_version", "unknown")),
        source_checkpoint=raw.get("source_checkpoint"), created_utc=raw.get("created_utc", ""),
        meta=raw.get("meta", {}), quantization=raw.get("quantization"),
        format=raw["format"], format_version=version,
    )


def load_manifest(bundle_dir: str | Path) -> Manifest:
    """Read and validate `bundle_dir/manifest.json`."""
    path = Path(bundle_dir) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(str(path), "file", "missing; expected the manifest of an exported bundle")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(str(path), "content", f"expected valid JSON ({exc})") from None
    return manifest_from_dict(raw, str(path))


def verify_graph_file(bundle_dir: str | Path, entry: GraphEntry) -> Path:
    """Check that `entry`'s file exists and has the recorded sha256; return its path."""
    path = Path(bundle_dir) / entry.file
    if not path.is_file():
        raise ManifestError(str(path), "file", f"missing; the manifest lists graph {entry.name!r}")
    actual = sha256_file(path)
    if actual != entry.sha256:
        raise ManifestError(str(path), "sha256",
                            f"expected {entry.sha256[:16]}…, got {actual[:16]}… (file altered)")
    return path


def verify_bundle(bundle_dir: str | Path, manifest: Manifest) -> None:
    """Check every file the manifest lists."""
    for entry in manifest.graphs:
        verify_graph_file(bundle_dir, entry)
