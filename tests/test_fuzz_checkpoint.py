"""Fuzzing the checkpoint loader (issue 14): a usable checkpoint or one ConfigError line.

A real checkpoint is mutated at two levels: its dictionary (fields replaced by hostile values,
dropped or added; tensors reshaped, retyped or filled with NaN), saved again with torch.save;
and its bytes (flips, cuts, overwrites), which torch.load must reject cleanly. Seeds are
derandomized: the same examples run every time.
"""

from __future__ import annotations

import copy
import io
import math
import tempfile
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.config.load import parse_config
from edge.data.fleet_data import agent_data, fleet_info
from edge.errors import ConfigError
from edge.learning.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from edge.learning.learner import make_learner
from edge.learning.strategies import get_strategy

FUZZ = settings(max_examples=60, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
PEAK_BYTES = 256 << 20
RAW = {"fleet": "fuzz", "data": {"dataset": "synthetic-pid", "synthetic": {"n_samples": 200, "dim": 4}},
       "agents": {"counts": {"a": 1, "a+b": 1}}, "topology": {"kind": "ring"},
       "families": {"a": {"hidden": [8], "latent": 6}, "b": {"hidden": [8], "latent": 6}}}

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(),
                    st.text(max_size=10))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8)


@pytest.fixture(scope="module")
def original() -> Iterator[tuple[Path, bytes, dict[str, Any]]]:
    """A real checkpoint: its folder, its bytes and its loaded dictionary."""
    cfg = parse_config(RAW, "inline")
    spec = cfg.agent_specs[1]
    learner = make_learner(cfg, spec, agent_data(cfg)[spec.id], fleet_info(cfg),
                           get_strategy("parse").sharing, "sliced")
    learner.train(1)
    with tempfile.TemporaryDirectory(prefix="fuzz-ckpt-") as name:
        path = Path(name) / "checkpoint.pt"
        save_checkpoint(path, cfg, learner, spec.id, 0, "parse")
        yield Path(name), path.read_bytes(), torch.load(path, weights_only=True)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _hostile_tensor(draw: st.DrawFn, old: Any) -> Any:
    base = old if isinstance(old, torch.Tensor) else torch.zeros(3)
    op = draw(st.sampled_from(["nan", "inf", "reshape", "retype", "empty", "huge"]))
    if op == "nan" and base.is_floating_point() and base.numel():
        return base.clone().fill_(math.nan)
    if op == "inf" and base.is_floating_point() and base.numel():
        out = base.clone().reshape(-1)
        out[0] = math.inf
        return out.reshape(base.shape)
    if op == "reshape":
        return torch.zeros(draw(st.lists(st.integers(0, 5), max_size=3)))
    if op == "retype":
        return base.to(draw(st.sampled_from([torch.int64, torch.float64, torch.bool, torch.uint8])))
    if op == "empty":
        return torch.empty(0)
    return torch.full((2,), 1e38)


@st.composite
def mutated_payloads(draw: st.DrawFn, payload: dict[str, Any]) -> Any:
    """The real checkpoint dictionary with a few fields made hostile."""
    doc = copy.deepcopy(payload)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        op = draw(st.sampled_from(["value", "tensor", "drop", "add"]))
        if op == "value":
            parent[path[-1]] = draw(VALUES)
        elif op == "tensor":
            parent[path[-1]] = _hostile_tensor(draw, parent[path[-1]])
        elif op == "drop" and isinstance(parent, dict):
            parent.pop(path[-1], None)
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=6))] = draw(VALUES)
    return doc


def _check(path: Path) -> None:
    """The property: a finite, usable Checkpoint, or one ConfigError line naming the file."""
    tracemalloc.start()
    try:
        try:
            ckpt = load_checkpoint(path)
        except ConfigError as exc:
            message = str(exc)
            assert len(message.splitlines()) == 1 and message.startswith(f"{path}: "), message
        else:
            assert isinstance(ckpt, Checkpoint)
            assert all(bool(torch.isfinite(p).all()) for p in ckpt.model.parameters())
            x = {m: torch.from_numpy(v[:2]) for m, v in ckpt.examples["x"].items()}
            with torch.no_grad():
                assert ckpt.model(x).logits.shape[-1] == len(ckpt.labels)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < PEAK_BYTES


@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")  # repr of big payloads
@FUZZ
@given(data=st.data())
def test_mutated_checkpoint_dictionaries(original: tuple[Path, bytes, dict[str, Any]],
                                         data: st.DataObject) -> None:
    folder, _, payload = original
    doc = data.draw(mutated_payloads(payload))
    path = folder / "mutated.pt"
    buffer = io.BytesIO()
    torch.save(doc, buffer)
    path.write_bytes(buffer.getvalue())
    _check(path)


@FUZZ
@given(data=st.data())
def test_mutated_checkpoint_bytes(original: tuple[Path, bytes, dict[str, Any]],
                                  data: st.DataObject) -> None:
    folder, raw, _ = original
    blob = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(blob) - 1))
        op = data.draw(st.sampled_from(["flip", "cut", "overwrite"]))
        if op == "flip":
            blob[at] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "cut":
            del blob[at:]
            if not blob:
                break
        else:
            chunk = data.draw(st.binary(min_size=1, max_size=16))
            blob[at: at + len(chunk)] = chunk
    path = folder / "bytes.pt"
    path.write_bytes(bytes(blob))
    _check(path)
