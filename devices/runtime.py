"""The on-board inference runtime: an exported bundle served with onnxruntime and numpy (no torch)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from devices.npzio import DEFAULT_MAX_BYTES, NpzError, read_npz
from devices.profiles import get_profile
from devices.providers import make_session, select_providers
from exporters.manifest import (
    GraphEntry,
    Manifest,
    ManifestError,
    load_manifest,
    verify_bundle,
    verify_graph_file,
)
from exporters.norm import apply_norm, norm_arrays

# What onnxruntime raises on a file it cannot load or a graph it cannot run (InvalidProtobuf,
# InvalidGraph, Fail, ...): its own classes, which derive from Exception directly.
ORT_ERRORS: tuple[type[Exception], ...] = (RuntimeError, *(
    cls for cls in vars(ort_state).values() if isinstance(cls, type) and issubclass(cls, Exception)))


class InputError(ValueError):
    """An input does not match what the bundle expects; the message names it, in one line."""


@dataclass(frozen=True)
class Prediction:
    """The runtime's answer for one batch."""

    labels: list[str]  # predicted label per sample
    label_indices: np.ndarray  # (batch,) int64
    probabilities: np.ndarray  # (batch, n_labels) float32, rows sum to 1
    modalities: tuple[str, ...]  # modalities the serving graph consumed
    missing: tuple[str, ...]  # the agent's modalities absent from the input
    graph: str  # name of the fused graph that served the batch

    def to_dict(self, class_names: Sequence[str]) -> dict[str, Any]:
        """JSON-ready form with per-class probabilities."""
        return {
            "graph": self.graph,
            "modalities": list(self.modalities),
            "missing": list(self.missing),
            "predictions": [
                {"label": label, "probabilities": dict(zip(class_names, map(float, row),
                                                           strict=True))}
                for label, row in zip(self.labels, self.probabilities, strict=True)
            ],
        }


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probabilities: np.ndarray = (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32,
                                                                           copy=False)
    return probabilities


def load_npz_inputs(path: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, np.ndarray]:
    """Read the arrays of an .npz file, keyed by modality name, with the bounded `devices.npzio`.

    Raises
    ------
    InputError
        One line naming the file and member: not an .npz, truncated or corrupt, object arrays,
        or arrays over `max_bytes` in total (checked from the headers, before allocating).
    """
    try:
        return read_npz(path, max_bytes=max_bytes)
    except NpzError as exc:
        raise InputError(str(exc)) from None


class Predictor:
    """Serve an exported bundle with onnxruntime.

    Verifies the bundle, picks the fused graph for the modalities present, normalises the
    inputs, runs the graph and returns labels with probabilities.
    """

    def __init__(self, bundle_dir: str | Path, *, precision: str | None = None,
                 threads: int = 1, verify: bool = True, provider: str | None = None,
                 profile: str | None = None) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.manifest: Manifest = load_manifest(self.bundle_dir)
        self.precision = precision or self.manifest.default_precision
        if not any(self.precision in by_p for by_p in self.manifest.serves.values()):
            raise ManifestError(str(self.bundle_dir), f"precision {self.precision!r}",
                                "no graph of that precision; export with --quantize int8 for int8")
        if verify:
            verify_bundle(self.bundle_dir, self.manifest)
        self.threads = threads
        # Execution providers, best first: `provider` overrides, `profile` (a device profile
        # name) limits the automatic choice to what that board class can have.
        allowed = get_profile(profile).onnx_providers if profile else None
        self.providers = select_providers(ort.get_available_providers(), allowed, provider)
        # Per-call work stays small at batch 1: statistics, shapes and graph choice are cached.
        self._norm = {m: norm_arrays(self.manifest.norm[m]) for m in self.manifest.modalities}
        self._sample_shapes = {m: spec.sample_shape for m, spec in self.manifest.inputs.items()}
        self._graph_cache: dict[frozenset[str], GraphEntry] = {}
        self._sessions: dict[str, ort.InferenceSession] = {}

    @property
    def labels(self) -> list[str]:
        """The class names, in logit order."""
        return self.manifest.labels

    @property
    def modalities(self) -> list[str]:
        """Every modality the exported agent holds."""
        return self.manifest.modalities

    def graph_for(self, modalities: Iterable[str]) -> GraphEntry:
        """Pick the fused graph serving `modalities`.

        The exact subset if exported, else the largest exported subset of it.
        """
        present = frozenset(modalities)
        if present in self._graph_cache:
            return self._graph_cache[present]
        candidates = []
        for key, by_precision in self.manifest.serves.items():
            members = set(key.split("+"))
            if members <= present and self.precision in by_precision:
                candidates.append((len(members), key))
        if not candidates:
            raise InputError(f"no exported graph serves modalities {sorted(present)}; "
                             f"served: {', '.join(self.manifest.serves)}")
        _, key = max(candidates)
        entry = self.manifest.graph(self.manifest.serves[key][self.precision])
        self._graph_cache[present] = entry
        return entry

    def _session(self, entry: GraphEntry) -> ort.InferenceSession:
        if entry.name not in self._sessions:
            path = verify_graph_file(self.bundle_dir, entry)
            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            self._sessions[entry.name] = make_session(str(path), options, self.providers)
        return self._sessions[entry.name]

    def _run(self, entry: GraphEntry, feed: dict[str, np.ndarray]) -> np.ndarray:
        """Run `entry` on `feed`: logits (batch, n_labels), finite, or a ManifestError.

        A file whose sha256 matches a lying manifest can still be garbage, another model, or a
        graph whose weights are NaN: each is a one-line error naming the file, never an
        onnxruntime traceback or NaN probabilities.
        """
        source = str(self.bundle_dir / entry.file)
        names = [t.name for t in entry.outputs]
        logits_name = "logits" if "logits" in names else names[0]
        try:
            (logits,) = self._session(entry).run([logits_name], feed)
        except ORT_ERRORS as exc:
            raise ManifestError(source, "graph", f"expected an ONNX graph onnxruntime can run "
                                f"on inputs {sorted(feed)} ({type(exc).__name__}: {exc})") from None
        logits = np.asarray(logits)
        expected = (len(next(iter(feed.values()))), len(self.labels))
        if logits.shape != expected or logits.dtype.kind != "f":
            raise ManifestError(source, logits_name, f"expected float logits shaped {expected}, "
                                f"got {logits.dtype} {logits.shape}")
        if not np.isfinite(logits).all():
            raise ManifestError(source, logits_name, "expected finite logits, got NaN or inf "
                                "from finite inputs (are the graph's weights finite?)")
        return logits

    def _checked(self, name: str, value: Any) -> np.ndarray:
        arr = np.asarray(value)
        if arr.dtype.kind != "f":
            raise InputError(f"input {name!r}: dtype {arr.dtype}, expected "
                             f"{self.manifest.inputs[name].dtype}")
        sample = self._sample_shapes[name]
        if arr.shape == sample:
            arr = arr[None]
        if arr.shape[1:] != sample or arr.shape[0] == 0:
            raise InputError(f"input {name!r}: shape {arr.shape}, expected (batch, "
                             f"{', '.join(map(str, sample))}) with batch >= 1")
        if not np.isfinite(arr).all():
            raise InputError(f"input {name!r}: contains NaN or infinite values, expected finite "
                             "numbers")
        return arr

    def predict(self, inputs: Mapping[str, Any],
                modalities: Sequence[str] | None = None) -> Prediction:
        """Predict from `inputs` ({modality: array (batch, *shape) or one sample}).

        A missing modality is served by the graph of the remaining ones. `modalities` restricts
        which of the inputs are used. Raises InputError for bad inputs and ManifestError when
        the bundle's graph fails or outputs non-finite logits.
        """
        known = self.manifest.modalities
        for name in list(inputs) + list(modalities or []):
            if name not in known:
                raise InputError(f"input {name!r}: unknown modality, expected one of "
                                 f"{', '.join(known)}")
        wanted = list(modalities) if modalities is not None else list(inputs)
        absent = [m for m in wanted if m not in inputs]
        if absent:
            raise InputError(f"input {absent[0]!r}: requested but not provided")
        if not wanted:
            raise InputError(f"no input given, expected at least one of {', '.join(known)}")
        entry = self.graph_for(wanted)
        feed = {}
        for m in entry.modalities:
            with np.errstate(over="ignore"):  # overflow is refused just below, in one line
                feed[m] = apply_norm(self._checked(m, inputs[m]), self._norm[m])
            if not np.isfinite(feed[m]).all():
                raise InputError(f"input {m!r}: values too large to normalise in float32, "
                                 "expected magnitudes like the training data")
        batches = {m: len(x) for m, x in feed.items()}
        if len(set(batches.values())) > 1:
            raise InputError(f"inputs disagree on batch size: {batches}")
        logits = self._run(entry, feed)
        probabilities = softmax(logits.astype(np.float32))
        idx = np.argmax(probabilities, axis=-1).astype(np.int64)
        order = {m: i for i, m in enumerate(known)}
        used = tuple(sorted(entry.modalities, key=order.__getitem__))
        return Prediction(
            labels=[self.labels[i] for i in idx], label_indices=idx,
            probabilities=probabilities, modalities=used,
            missing=tuple(m for m in known if m not in used), graph=entry.name,
        )

