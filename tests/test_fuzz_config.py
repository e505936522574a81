"""Fuzzing the fleet config loader (issue 14): a valid config or one ConfigError line, bounded.

Documents are mutated from the bundled examples at two levels: values replaced by hostile ones
(NaN, infinities, huge integers, wrong types, nested junk), keys dropped or added; and the YAML
text itself (byte flips, cuts, insertions, non-UTF-8 bytes). Seeds are derandomized: the same
examples run every time.
"""

from __future__ import annotations

import copy
import math
import tempfile
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.config.load import load_config, parse_config
from edge.config.schema import FleetConfig
from edge.errors import ConfigError

from .conftest import EXAMPLES

FUZZ = settings(max_examples=250, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
# Loading a config never needs more than a few MiB; an alias bomb or a huge allocation would.
PEAK_BYTES = 64 << 20
DOCS = [yaml.safe_load((EXAMPLES / f"{n}.yaml").read_text())
        for n in ("basic-motions", "mfeat", "synthetic")]

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=10**18, max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([math.nan, math.inf, -math.inf]),
    st.text(max_size=20), st.sampled_from(["mlp", "conv1d", "ring", "auto", "all", "fp32", "1e999"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    """A folder for the fuzzed files (Hypothesis does not mix with function fixtures)."""
    with tempfile.TemporaryDirectory(prefix="fuzz-config-") as name:
        yield Path(name)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated_documents(draw: st.DrawFn) -> Any:
    """An example config with a few values replaced, keys dropped or junk keys added."""
    doc = copy.deepcopy(draw(st.sampled_from(DOCS)))
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(_paths(doc)))
        if not path:
            doc = draw(VALUES) if draw(st.integers(0, 9)) == 0 else doc
            continue
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        op = draw(st.sampled_from(["replace", "replace", "drop", "add"]))
        if op == "replace":
            parent[path[-1]] = draw(VALUES)
        elif op == "drop" and isinstance(parent, dict):
            parent.pop(path[-1], None)
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(VALUES)
    return doc


def _check(run: Any, source: str) -> None:
    """The property: a FleetConfig or one ConfigError line naming the file; bounded memory."""
    tracemalloc.start()
    try:
        try:
            cfg = run()
        except ConfigError as exc:
            message = str(exc)
            assert len(message.splitlines()) == 1 and message.startswith(f"{source}: "), message
        else:
            assert isinstance(cfg, FleetConfig) and cfg.agent_specs
            assert all(math.isfinite(v) for v in (cfg.training.lr, cfg.comm.deadline_s,
                                                  *cfg.model.split))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < PEAK_BYTES


@FUZZ
@given(doc=mutated_documents())
def test_mutated_documents_load_or_fail_in_one_line(doc: Any) -> None:
    _check(lambda: parse_config(doc, "fuzz.yaml"), "fuzz.yaml")


@st.composite
def mutated_text(draw: st.DrawFn) -> bytes:
    """Example YAML bytes with flips, cuts, insertions (including invalid UTF-8)."""
    data = bytearray((EXAMPLES / draw(st.sampled_from(["mfeat.yaml", "synthetic.yaml"])))
                     .read_bytes())
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del data[at: at + draw(st.integers(1, 40))]
        else:
            data[at:at] = draw(st.sampled_from([b"\xff\xfe", b": [", b"&a [*a]", b"\t", b"{",
                                                b"!!python/object:os.system", b"\n  - ", b"0x",
                                                b"2001-02-30", b".nan", b"1" * 5000]))
    return bytes(data)


@FUZZ
@given(data=mutated_text())
def test_mutated_yaml_text_loads_or_fails_in_one_line(workdir: Path, data: bytes) -> None:
    path = workdir / "fleet.yaml"
    path.write_bytes(data)
    _check(lambda: load_config(path), str(path))
