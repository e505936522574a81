"""The bounded .npz/.npy reader: numpy's files read back exactly, hostile files refused in one line.

Issue 14, kinds 4 and 5: a truncated or bit-flipped npz, a .npy renamed .npz, a 4 MB npz holding a
4 GiB array and an 844-byte npz declaring a (10^12, 3, 50) array. Memory is measured with
tracemalloc, which sees numpy's and zlib's allocations.
"""

from __future__ import annotations

import os
import struct
import tracemalloc
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from devices.npzio import NpzError, read_header, read_npy, read_npz
from tests.hostile_files import declared_bomb, four_gib_bomb, npy_header, zip64_bomb

MB = 1 << 20


@pytest.fixture
def peak_bytes() -> Iterator[Callable[[], int]]:
    """Trace allocations for the test; call the fixture's value for the peak so far."""
    tracemalloc.start()
    try:
        yield lambda: tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _one_line(exc: pytest.ExceptionInfo[NpzError], path: Path, field: str) -> str:
    message = str(exc.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(f"{path}: {field}: "), message
    return message


def test_numpy_archives_read_back_exactly(tmp_path: Path) -> None:
    """Every dtype kind numpy.savez writes for data comes back equal, in both compressions."""
    rng = np.random.default_rng(0)
    arrays: dict[str, Any] = {
        "x_accel": rng.normal(size=(5, 3, 7)).astype(np.float32),
        "x_fortran": np.asfortranarray(rng.normal(size=(4, 6))),
        "big_endian": np.arange(6, dtype=">i4"),
        "y": rng.integers(0, 4, size=5),
        "mask": np.array([True, False, True]),
        "labels": np.array(["walk", "run"]),
        "raw_bytes": np.array([b"ab", b"c"]),
        "complex": np.array([1 + 2j]),
        "empty": np.zeros((0, 3), np.float32),
        "scalar": np.float64(2.5),
    }
    for save in (np.savez, np.savez_compressed):
        path = tmp_path / f"{save.__name__}.npz"
        save(path, **arrays)
        got = read_npz(path)
        assert list(got) == list(arrays)
        for key, want in arrays.items():
            np.testing.assert_array_equal(got[key], want)
            assert got[key].dtype == np.asarray(want).dtype and got[key].shape == np.shape(want)
        assert got["x_fortran"].flags.f_contiguous and got["x_accel"].flags.writeable


def test_keys_select_members_and_the_cap_counts_only_what_is_read(tmp_path: Path) -> None:
    """`keys` reads a subset; the cap applies to the arrays returned, all together."""
    path = tmp_path / "d.npz"
    np.savez(path, a=np.zeros(1000, np.float32), b=np.zeros(1000, np.float32), c=np.ones(3))
    assert list(read_npz(path, keys={"c", "missing"})) == ["c"]
    assert set(read_npz(path, keys={"a"}, max_bytes=4000)) == {"a"}
    with pytest.raises(NpzError) as exc:
        read_npz(path, max_bytes=6000)
    assert "b: array of shape (1000,) and dtype <f4 needs 4000 bytes" in str(exc.value)
    assert "(4000 already read)" in _one_line(exc, path, "b")


def test_declared_bomb_is_refused_before_allocating(tmp_path: Path,
                                                    peak_bytes: Callable[[], int]) -> None:
    """Issue 14: an 844-byte npz declaring (10^12, 3, 50) float32 (546 TiB)."""
    path = declared_bomb(tmp_path / "declared.npz")
    assert path.stat().st_size == 844
    with pytest.raises(NpzError) as exc:
        read_npz(path)
    message = _one_line(exc, path, "accel")
    assert "shape (1000000000000, 3, 50) and dtype <f4 needs 600000000000000 bytes" in message
    assert "over the loader's cap of 1073741824 bytes" in message
    assert peak_bytes() < MB


def test_real_four_gib_bomb_is_refused_before_allocating(tmp_path: Path,
                                                         peak_bytes: Callable[[], int]) -> None:
    """Issue 14: a ~4 MB deflated npz that really holds a 4 GiB float32 array (valid CRC)."""
    path = four_gib_bomb()
    assert path.stat().st_size < 5 * MB
    assert zipfile.ZipFile(path).getinfo("x.npy").file_size > 4 << 30
    tracemalloc.reset_peak()
    with pytest.raises(NpzError) as exc:
        read_npz(path)
    assert "x: array of shape (1073741824,) and dtype <f4 needs 4294967296 bytes" in _one_line(
        exc, path, "x")
    assert peak_bytes() < MB


def test_bomb_under_a_larger_cap_reads_in_bounded_chunks(tmp_path: Path,
                                                         peak_bytes: Callable[[], int]) -> None:
    """With the cap raised, a 32 MiB bomb is read: memory is the array plus about one chunk."""
    path = zip64_bomb(tmp_path / "small-bomb.npz", n_chunks=2)
    tracemalloc.reset_peak()
    arrays = read_npz(path, max_bytes=64 * MB)
    assert arrays["x"].nbytes == 32 * MB and not arrays["x"].any()
    assert peak_bytes() < 32 * MB + 4 * MB


def test_npy_renamed_npz_is_named(tmp_path: Path) -> None:
    """Issue 14: a .npy renamed .npz; read_npy reads the same file as what it is."""
    path = tmp_path / "x.npz"
    with open(path, "wb") as fh:
        np.save(fh, np.arange(4.0))
    with pytest.raises(NpzError) as exc:
        read_npz(path)
    assert "expected an .npz archive, got a single .npy array" in _one_line(exc, path, "<file>")
    np.testing.assert_array_equal(read_npy(path), np.arange(4.0))


@pytest.mark.parametrize("cut", [0, 10, 200, -30, -1])
def test_truncated_archive_is_named(tmp_path: Path, cut: int) -> None:
    """Issue 14: a truncated npz, cut anywhere (magic, local header, data, central directory)."""
    good = tmp_path / "good.npz"
    np.savez_compressed(good, x=np.arange(500.0))
    path = tmp_path / "cut.npz"
    data = good.read_bytes()
    path.write_bytes(data[:cut] if cut >= 0 else data[:len(data) + cut])
    with pytest.raises(NpzError) as exc:
        read_npz(path)
    assert "expected" in _one_line(exc, path, "<file>")


@pytest.mark.parametrize("compress", [False, True])
def test_bit_flip_in_data_fails_the_crc(tmp_path: Path, compress: bool) -> None:
    """Issue 14: one flipped bit in the array data is caught by the member's CRC-32."""
    path = tmp_path / "flip.npz"
    (np.savez_compressed if compress else np.savez)(path, x=np.linspace(0, 1, 4000))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x04
    path.write_bytes(bytes(data))
    with pytest.raises(NpzError) as exc:
        read_npz(path)
    message = _one_line(exc, path, "<file>")
    assert "Bad CRC-32" in message or "Error -3" in message  # stored: CRC; deflated: zlib


def test_object_arrays_are_refused_without_unpickling(tmp_path: Path) -> None:
    """Object arrays need pickle; the header says so and nothing is unpickled."""
    path = tmp_path / "obj.npz"
    np.savez(path, o=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(NpzError) as exc:
        read_npz(path)
    assert "got Python objects" in _one_line(exc, path, "o")


@pytest.mark.parametrize("descr, expected", [
    ("|V8", "expected a numeric, boolean or string array, got dtype |V8"),
    ("<M8[s]", "got dtype <M8[s]"),
    ("|S0", "expected a dtype with a non-zero item size"),
    ([("a", "<f4"), ("b", "|O")], "got Python objects"),
])
def test_refused_dtypes(tmp_path: Path, descr: Any, expected: str) -> None:
    """Structured, void, datetime and zero-size dtypes are not data this project reads."""
    path = tmp_path / "d.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", npy_header((2,), descr) + bytes(64))
    with pytest.raises(NpzError) as exc:
        read_npz(path)
    assert expected in _one_line(exc, path, "x")


@pytest.mark.parametrize("header, expected", [
    (b"\x93NUMPY\x02\x00" + struct.pack("<I", (4 << 30) - 1), "at most 10000 bytes, the file"),
    (b"\x93NUMPY\x03\x00" + struct.pack("<I", 10) + b"{}", "version 1.0 or 2.0, got 3.0"),
    (b"\x93NUMPY\x01\x00" + struct.pack("<H", 8) + b"{'a': 1}", "expected a valid .npy header"),
    (b"\x93NUMPY\x01\x00" + struct.pack("<H", 9000) + b"[" * 9000, "expected a valid .npy header"),
    (b"\x93NUMPY\x01\x00\xff", "the header length, the data ends after 1"),
    (b"\x93NUMPZ\x01\x00", "numpy's magic bytes are missing"),
])
def test_bad_headers_are_named(tmp_path: Path, header: bytes, expected: str) -> None:
    """A version-2 header declaring 4 GiB of text is refused before numpy would read it."""
    path = tmp_path / "h.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", header)
    with pytest.raises(NpzError) as exc:
        read_npz(path)
    assert expected in _one_line(exc, path, "x")


def test_negative_and_too_many_dimensions_are_named(tmp_path: Path) -> None:
    """Negative dimensions (numpy's parser accepts any int) and too many are refused."""
    for shape, expected in (((3, -2), "expected non-negative dimensions, got shape (3, -2)"),
                            ((1,) * 40, "expected at most 32 dimensions, got 40")):
        path = tmp_path / "n.npz"
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("x.npy", npy_header(shape) + bytes(8))
        with pytest.raises(NpzError) as exc:
            read_npz(path)
        assert expected in _one_line(exc, path, "x")


def test_declared_shape_with_missing_or_extra_data_is_named(tmp_path: Path) -> None:
    """Data shorter than the header declares is truncated; longer means a lying header."""
    for extra, expected in ((-4, "the data ends after 28 (truncated)"), (4, "more follow")):
        path = tmp_path / "s.npz"
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("x.npy", npy_header((8,)) + bytes(32 + extra))
        with pytest.raises(NpzError) as exc:
            read_npz(path)
        assert expected in _one_line(exc, path, "x")


def test_archive_members_must_be_plain_npy(tmp_path: Path) -> None:
    """Only `<key>.npy` members, stored or deflated, each once, a bounded number of them."""
    cases: list[tuple[Callable[[zipfile.ZipFile], None], str, str]] = [
        (lambda z: z.writestr("notes.txt", "hi"), "notes.txt", "expected only <key>.npy"),
        (lambda z: z.writestr("dir/x.npy", npy_header((0,))), "dir/x.npy", "expected only"),
        (lambda z: z.writestr("x.npy", npy_header((0,)), compress_type=zipfile.ZIP_LZMA),
         "x.npy", "got zip compression method 14"),
    ]
    for write, field, expected in cases:
        path = tmp_path / "m.npz"
        with zipfile.ZipFile(path, "w") as archive:
            write(archive)
        with pytest.raises(NpzError) as exc:
            read_npz(path)
        assert expected in _one_line(exc, path, field)
    path = tmp_path / "many.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for i in range(1025):
            archive.writestr(f"a{i}.npy", b"")
    with pytest.raises(NpzError) as exc:
        read_npz(path)
    assert "expected at most 1024 arrays, the archive lists 1025" in _one_line(exc, path, "<file>")


def test_repeated_member_is_named(tmp_path: Path) -> None:
    """A zip may list one name twice; which array would be meant is ambiguous."""
    path = tmp_path / "dup.npz"
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", npy_header((0,)))
        archive.writestr("x.npy", npy_header((0,)))
    with pytest.raises(NpzError) as exc:
        read_npz(path)
    assert "the name is repeated" in _one_line(exc, path, "x.npy")


def test_special_and_missing_files_are_named(tmp_path: Path) -> None:
    """A FIFO or /dev/zero would block or never end; only regular files are read."""
    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)
    for path, expected in ((fifo, "expected a regular file"),
                           (Path("/dev/zero"), "expected a regular file"),
                           (tmp_path / "none.npz", "cannot read the file (No such file")):
        for read in (read_npz, read_npy):
            with pytest.raises(NpzError) as exc:
                read(path)
            assert expected in _one_line(exc, path, "<file>")
    text = tmp_path / "t.npz"
    text.write_text("y,x\n1,2\n")
    with pytest.raises(NpzError) as exc:
        read_npz(text)
    assert "expected an .npz archive (a zip of .npy arrays)" in _one_line(exc, text, "<file>")


def test_read_npy_has_the_same_bounds(tmp_path: Path) -> None:
    """A bare .npy gets the header, dtype and cap checks of an archive member."""
    path = tmp_path / "big.npy"
    path.write_bytes(npy_header((10**9, 100)) + bytes(100))
    with pytest.raises(NpzError) as exc:
        read_npy(path)
    assert "needs 400000000000 bytes" in _one_line(exc, path, "<file>")
    good = tmp_path / "good.npy"
    np.save(good, np.eye(3, dtype=np.float32))
    np.testing.assert_array_equal(read_npy(good), np.eye(3))
    with open(good, "rb") as fh:
        header = read_header(fh, str(good), "<file>")
    assert header.shape == (3, 3) and header.nbytes == 36
