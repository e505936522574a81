"""Fuzzing the bounded npz reader (issue 14): a valid result or one NpzError line, memory bounded.

Inputs are mutated from real numpy archives: bit flips, truncation and byte overwrites of the
whole file (zip layer), and edits of the .npy header inside a well-formed zip (shape, dtype,
order, header length, garbage text), so both layers are reached. Seeds are derandomized: the
same examples run every time.
"""

from __future__ import annotations

import io
import struct
import tempfile
import tracemalloc
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from devices.npzio import NpzError, read_npz

CAP_BYTES = 1 << 20  # the cap the fuzzed reader runs with
# What a refused or accepted read may allocate beyond its cap: one read chunk (1 MiB), the
# zip's central directory and numpy's header parsing on these small files.
SLACK_BYTES = 3 << 20
FUZZ = settings(max_examples=300, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])

DTYPES = st.sampled_from(["<f4", ">f8", "<i8", "|u1", "|b1", "<c8", "<U3", "|S2"])
ARRAYS = hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=3, max_side=6))


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    """Give the fuzzed files a directory (Hypothesis does not mix with function fixtures)."""
    with tempfile.TemporaryDirectory(prefix="fuzz-npz-") as name:
        yield Path(name)


def _archive(arrays: list[np.ndarray], compressed: bool) -> bytes:
    out = io.BytesIO()
    save = np.savez_compressed if compressed else np.savez
    named: dict[str, Any] = {f"k{i}": a for i, a in enumerate(arrays)}
    save(out, **named)
    return out.getvalue()


def _check(path: Path) -> None:
    """Check the property: arrays within the cap or one NpzError line; bounded memory."""
    tracemalloc.start()
    try:
        try:
            arrays = read_npz(path, max_bytes=CAP_BYTES)
        except NpzError as exc:
            message = str(exc)
            assert len(message.splitlines()) == 1 and message.startswith(f"{path}: "), message
        else:
            assert all(isinstance(a, np.ndarray) and not a.dtype.hasobject
                       for a in arrays.values())
            assert sum(a.nbytes for a in arrays.values()) <= CAP_BYTES
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= CAP_BYTES + SLACK_BYTES + 4 * path.stat().st_size


@st.composite
def file_mutations(draw: st.DrawFn) -> bytes:
    """Flip, cut and overwrite bytes anywhere in a real archive."""
    data = bytearray(_archive(draw(st.lists(ARRAYS, min_size=1, max_size=3)), draw(st.booleans())))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "overwrite"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del data[at:]
        else:
            patch = draw(st.binary(min_size=1, max_size=8))
            data[at:at + len(patch)] = patch
    return bytes(data)


SHAPES = st.one_of(
    st.lists(st.one_of(st.integers(-3, 12), st.sampled_from([2**31, 2**63, 10**12, 10**30])),
             max_size=40).map(lambda dims: repr(tuple(dims))),
    st.sampled_from(["None", "'abc'", "[1, 2]", "(1.5,)", "(True,)", "()", "(-1,)"]),
)
DESCRS = st.sampled_from([
    "'<f4'", "'|O'", "'<V0'", "'|S0'", "'<U0'", "'>f8'", "'<c16'", "'|b1'", "'<M8[s]'",
    "[('a', '<f4')]", "[('a', '|O')]", "('<f4', (1000000000,))", "'|S1000000000000'", "{}",
    "None", "'nonsense'", "[('', '|V4')]", "'<f4', 'x'",
])


@st.composite
def header_edits(draw: st.DrawFn) -> bytes:
    """Write one .npy member with an edited header and some data into a well-formed zip."""
    text = (f"{{'descr': {draw(DESCRS)}, 'fortran_order': "
            f"{draw(st.sampled_from(['False', 'True', 'None', '1']))}, 'shape': {draw(SHAPES)}, }}")
    if draw(st.booleans()):
        text = draw(st.text(max_size=60))  # garbage instead of a dictionary
    body = text.encode("utf-8", "replace") + b"\n"
    version = draw(st.sampled_from([(1, 0), (2, 0), (3, 0), (0, 9)]))
    length = draw(st.one_of(st.just(len(body)), st.integers(0, 2**32 - 1)))
    length_bytes = (struct.pack("<H", min(length, 0xFFFF)) if version == (1, 0)
                    else struct.pack("<I", length))
    member = b"\x93NUMPY" + bytes(version) + length_bytes + body
    member += draw(st.binary(max_size=256))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", draw(st.sampled_from([zipfile.ZIP_STORED,
                                                          zipfile.ZIP_DEFLATED]))) as archive:
        archive.writestr("x.npy", member)
    return out.getvalue()


@FUZZ
@given(data=file_mutations())
def test_mutated_archives_give_arrays_or_one_line(workdir: Path, data: bytes) -> None:
    """Flipped, cut and overwritten archives: never another exception, never unbounded memory."""
    path = workdir / "mutated.npz"
    path.write_bytes(data)
    _check(path)


@FUZZ
@given(data=header_edits())
def test_edited_headers_give_arrays_or_one_line(workdir: Path, data: bytes) -> None:
    """Lying shapes, refused dtypes, bad versions and lengths in a valid zip: same property."""
    path = workdir / "header.npz"
    path.write_bytes(data)
    _check(path)


@settings(max_examples=60, derandomize=True, deadline=None, database=None)
@given(arrays=st.lists(ARRAYS, min_size=1, max_size=3), compressed=st.booleans())
def test_unmutated_archives_read_back_exactly(workdir: Path, arrays: list[np.ndarray],
                                             compressed: bool) -> None:
    """The control: what numpy writes, the reader returns unchanged."""
    path = workdir / "clean.npz"
    path.write_bytes(_archive(arrays, compressed))
    got = read_npz(path, max_bytes=CAP_BYTES)
    assert len(got) == len(arrays)
    for i, want in enumerate(arrays):
        np.testing.assert_array_equal(got[f"k{i}"], want)
        assert got[f"k{i}"].dtype == want.dtype
