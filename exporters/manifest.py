"""The export manifest: what an ONNX bundle holds, shared by the exporter and the torch-free runtime.

The dataclasses below are the manifest's schema: their field types carry the bounds, and
`manifest_from_dict` checks a parsed manifest against them with msgspec (`exporters.schema`),
then checks what types cannot say — that graphs, inputs, statistics and served subsets refer
to each other consistently. Every problem is a one-line `ManifestError` naming the file and
field, so a hostile or damaged bundle never reaches onnxruntime with a shape, a name or a
statistic that would make it crash or serve NaN.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import typing
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict

from msgspec import Meta

from exporters.schema import (
    Count,
    FieldError,
    FiniteFloat,
    Fraction,
    NonNegativeFloat,
    PositiveFloat,
    Size,
    convert,
)

# This module is imported by the on-board runtime: stdlib and msgspec only (numpy lives in
# exporters.norm).

MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "parse-edge-onnx-bundle"
FORMAT_VERSION = 1
BATCH_DIM = "batch"
Role = Literal["encoder", "head", "fused"]
Precision = Literal["fp32", "int8"]
ROLES: tuple[str, ...] = typing.get_args(Role)
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)
# Older opsets lack ops these graphs use (e.g. ReduceMean with axes as input is fine from 13);
# the newest ONNX opset is 23 (ONNX 1.18), so 100 leaves decades of room.
MIN_OPSET = 13
MAX_OPSET = 100
# A manifest lists tens of graphs and per-feature statistics: ~100 KB. Refuse to parse more.
MAX_MANIFEST_BYTES = 16 << 20
# Values in one sample (16 Mi float32 = 64 MiB): far above any sensor window, far below RAM.
MAX_SAMPLE_VALUES = 1 << 24

Name = Annotated[str, Meta(min_length=1, max_length=256)]
ModalityName = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[^+\s]+$")]
Sha256 = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
Opset = Annotated[int, Meta(ge=MIN_OPSET, le=MAX_OPSET)]


class ManifestError(FieldError):
    """A bundle (manifest or one of its files) is not what was expected; the message is one line."""


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output; `shape[0]` is the dynamic batch axis ("batch")."""

    name: Name
    shape: Annotated[list[Size | str], Meta(min_length=1, max_length=32)]
    dtype: Literal["float32"] = "float32"

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample (the batch axis dropped)."""
        return tuple(int(d) for d in self.shape[1:])


class NormEntry(TypedDict):
    """Input statistics: x_norm = (x - mean) / std, flat lists reshaped to `shape`."""

    mean: list[FiniteFloat]
    std: list[PositiveFloat]
    shape: Annotated[list[Size], Meta(max_length=32)]


@dataclass(frozen=True)
class GraphEntry:
    """One ONNX file in the bundle and what it computes."""

    name: Name
    role: Role
    precision: Precision
    file: Name
    sha256: Sha256
    size_bytes: Count
    modalities: list[ModalityName]
    inputs: Annotated[list[TensorSpec], Meta(min_length=1)]
    outputs: Annotated[list[TensorSpec], Meta(min_length=1)]
    exporter: str
    # fp32: max |torch - onnxruntime| on the example inputs; int8: max |fp32 - int8| of outputs.
    max_abs_diff: NonNegativeFloat | None = None
    # int8 fused graphs only: fraction of examples whose argmax equals the fp32 torch argmax.
    argmax_agreement: Fraction | None = None
    # Why the TorchScript fallback was used, when it was.
    exporter_note: str | None = None


@dataclass
class Manifest:
    """Everything a runtime needs to serve an exported agent, and where it came from."""

    labels: Annotated[list[str], Meta(min_length=2)]
    modalities: Annotated[list[ModalityName], Meta(min_length=1)]
    inputs: dict[str, TensorSpec]
    # Applied by the runtime, never baked into the graphs: x_norm = (x - mean) / std, where
    # mean/std are flat lists reshaped to `shape` (broadcastable against one sample).
    norm: dict[str, NormEntry]
    slice_dims: dict[str, dict[str, Count]]
    opset: Opset
    graphs: Annotated[list[GraphEntry], Meta(min_length=1)]
    # Modality-subset key ("accel+gyro", order of `modalities`) -> precision -> fused graph name.
    serves: dict[str, dict[str, str]]
    default_precision: Precision = "fp32"
    software_version: str = "unknown"
    source_checkpoint: dict[str, Any] | None = None
    created_utc: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] | None = None
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    def graph(self, name: str) -> GraphEntry:
        """Return the graph called `name`; ManifestError if it is not listed."""
        for entry in self.graphs:
            if entry.name == name:
                return entry
        raise ManifestError(MANIFEST_NAME, f"graph {name!r}", "not listed in the manifest")

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict; the format comes first so a reader can check it early."""
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
    """Name a modality subset canonically: its members in `order`, joined by '+'."""
    chosen = set(modalities)
    return "+".join(m for m in order if m in chosen)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_from_dict(raw: Any, source: str = MANIFEST_NAME) -> Manifest:
    """Validate a parsed manifest.

    Parameters
    ----------
    raw : Any
        The parsed JSON document.
    source : str
        The file name used in errors.

    Returns
    -------
    Manifest
        Typed, bounded and consistent: every modality has an input spec and finite statistics
        (std > 0) that broadcast over its samples, every served subset names a fused graph of
        that subset and precision, and fused graphs output one logit per label.

    Raises
    ------
    ManifestError
        The first problem, naming the field (``graphs[2].inputs[0].shape``, ``norm.accel.std[3]``).
    """
    if not isinstance(raw, dict):
        raise ManifestError(source, "top level", f"expected a JSON object, got {_kind(raw)}")
    _check_format(raw, source)
    manifest: Manifest = convert(raw, Manifest, source, error=ManifestError)
    _check_inputs(manifest, source)
    _check_graphs(manifest, source)
    _check_serves(manifest, source)
    return manifest


def load_manifest(bundle_dir: str | Path) -> Manifest:
    """Read and validate `bundle_dir/manifest.json` (at most `MAX_MANIFEST_BYTES`).

    Raises
    ------
    ManifestError
        Missing, too large, not UTF-8 JSON, or invalid (see `manifest_from_dict`).
    """
    path = Path(bundle_dir) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(str(path), "file", "missing; expected the manifest of an exported bundle")
    try:
        with open(path, "rb") as fh:
            # Sized from the file: read(MAX + 1) would allocate the whole limit up front.
            data = fh.read(min(os.fstat(fh.fileno()).st_size, MAX_MANIFEST_BYTES) + 1)
    except OSError as exc:
        raise ManifestError(str(path), "file", f"cannot read it ({exc.strerror})") from None
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(str(path), "file", f"expected at most {MAX_MANIFEST_BYTES} bytes")
    try:
        # json accepts NaN and Infinity tokens; they reach the schema, which names the field.
        raw = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ManifestError(str(path), "content", f"expected UTF-8 text ({exc.reason} at byte "
                            f"{exc.start})") from None
    except (ValueError, RecursionError) as exc:
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


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


def _check_format(raw: dict[str, Any], source: str) -> None:
    # Checked before the schema: a bundle from a newer parse-edge should ask for an upgrade,
    # not fail on a field this version does not know.
    if raw.get("format") != FORMAT_NAME:
        raise ManifestError(source, "format", f"expected {FORMAT_NAME!r}")
    version = raw.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ManifestError(source, "format_version", "expected a positive integer")
    if version > FORMAT_VERSION:
        raise ManifestError(source, "format_version",
                            f"bundle has format {version}, this parse-edge reads up to "
                            f"{FORMAT_VERSION}; upgrade parse-edge on this board")


def _check_tensor(spec: TensorSpec, source: str, what: str) -> None:
    if spec.shape[0] != BATCH_DIM:
        raise ManifestError(source, f"{what}.shape", f"expected a list starting with "
                            f"{BATCH_DIM!r}, got {spec.shape[0]!r}")
    if not all(isinstance(d, int) for d in spec.shape[1:]):
        raise ManifestError(source, f"{what}.shape",
                            "expected positive integer sizes after the batch axis")
    if math.prod(spec.sample_shape) > MAX_SAMPLE_VALUES:
        raise ManifestError(source, f"{what}.shape", f"expected at most {MAX_SAMPLE_VALUES} "
                            f"values per sample, got {spec.sample_shape}")


def _check_inputs(manifest: Manifest, source: str) -> None:
    modalities = manifest.modalities
    if len(set(modalities)) != len(modalities):
        raise ManifestError(source, "modalities", "expected each modality once")
    for table, what in ((manifest.inputs, "inputs"), (manifest.norm, "norm")):
        for key in table:
            if key not in modalities:
                raise ManifestError(source, f"{what}.{key}", "expected a modality listed in "
                                    f"modalities ({', '.join(modalities)})")
    for m in modalities:
        spec = manifest.inputs.get(m)
        if spec is None:
            raise ManifestError(source, f"inputs.{m}", "missing; expected an object with name, "
                                "shape, dtype")
        _check_tensor(spec, source, f"inputs.{m}")
        stats = manifest.norm.get(m)
        if stats is None:
            raise ManifestError(source, f"norm.{m}", "missing; expected an object with mean, "
                                "std and shape")
        sample, shape = spec.sample_shape, tuple(stats["shape"])
        if len(shape) != len(sample) or any(s not in (1, d) for s, d in zip(shape, sample,
                                                                             strict=True)):
            raise ManifestError(source, f"norm.{m}.shape", f"expected a shape broadcasting over "
                                f"samples shaped {sample}, got {shape}")
        size = math.prod(shape)
        if len(stats["mean"]) != size or len(stats["std"]) != size:
            raise ManifestError(source, f"norm.{m}",
                                f"expected mean and std of {size} values (shape {list(shape)})")


def _check_graphs(manifest: Manifest, source: str) -> None:
    names: set[str] = set()
    for i, entry in enumerate(manifest.graphs):
        what = f"graphs[{i}]"
        if entry.name in names:
            raise ManifestError(source, f"{what}.name", f"expected unique names, {entry.name!r} "
                                "is repeated")
        names.add(entry.name)
        if "/" in entry.file or "\\" in entry.file or entry.file.startswith("."):
            raise ManifestError(source, f"{what}.file", "expected a plain file name inside the bundle")
        unknown = [m for m in entry.modalities if m not in manifest.modalities]
        if unknown:
            raise ManifestError(source, f"{what}.modalities", f"expected modalities of the "
                                f"bundle, got {unknown}")
        for kind, specs in (("inputs", entry.inputs), ("outputs", entry.outputs)):
            for j, spec in enumerate(specs):
                _check_tensor(spec, source, f"{what}.{kind}[{j}]")
        if entry.role == "fused":
            _check_fused(manifest, entry, source, what)


def _check_fused(manifest: Manifest, entry: GraphEntry, source: str, what: str) -> None:
    # The runtime feeds a fused graph one input per modality, named after it, and reads the
    # first output as logits over `labels`.
    if sorted(t.name for t in entry.inputs) != sorted(entry.modalities) or not entry.modalities:
        raise ManifestError(source, f"{what}.inputs", f"expected one input per modality "
                            f"{entry.modalities}")
    for j, spec in enumerate(entry.inputs):
        if spec.shape != manifest.inputs[spec.name].shape:
            raise ManifestError(source, f"{what}.inputs[{j}].shape", f"expected "
                                f"{manifest.inputs[spec.name].shape} like inputs.{spec.name}")
    logits = entry.outputs[0].shape
    if logits != [BATCH_DIM, len(manifest.labels)]:
        raise ManifestError(source, f"{what}.outputs[0].shape", f"expected logits "
                            f"[{BATCH_DIM!r}, {len(manifest.labels)}] over the labels, got {logits}")


def _check_serves(manifest: Manifest, source: str) -> None:
    if not manifest.serves:
        raise ManifestError(source, "serves", "expected at least one modality subset with a "
                            "fused graph")
    graphs = {g.name: g for g in manifest.graphs}
    for key, by_precision in manifest.serves.items():
        if not key or subset_key(key.split("+"), manifest.modalities) != key:
            raise ManifestError(source, f"serves.{key}", "expected modalities of the bundle "
                                f"joined by '+' in the order {manifest.modalities}")
        for precision, name in by_precision.items():
            what = f"serves.{key}.{precision}"
            if precision not in PRECISIONS:
                raise ManifestError(source, what, f"expected a precision, one of "
                                    f"{', '.join(map(repr, PRECISIONS))}")
            entry = graphs.get(name)
            if entry is None:
                raise ManifestError(source, what, f"graph {name!r} is not listed in graphs")
            if entry.role != "fused" or entry.precision != precision:
                raise ManifestError(source, what, f"expected a fused {precision} graph, "
                                    f"{name!r} is a {entry.role} {entry.precision} graph")
            if subset_key(entry.modalities, manifest.modalities) != key:
                raise ManifestError(source, what, f"expected a graph of modalities {key!r}, "
                                    f"{name!r} consumes {entry.modalities}")
