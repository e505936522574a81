"""Hostile data files, built for real: decompression bombs and lying .npy headers (issue 14)."""

from __future__ import annotations

import atexit
import io
import shutil
import struct
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

_ZEROS = bytes(1 << 24)
_CACHE: dict[str, Path] = {}


def npy_header(shape: tuple[int, ...], descr: str = "<f4", fortran_order: bool = False) -> bytes:
    """Write a version-1.0 .npy header (magic included) declaring `shape` and `descr`."""
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        out, {"descr": descr, "shape": shape, "fortran_order": fortran_order})
    return out.getvalue()


def declared_bomb(path: Path, shape: tuple[int, ...] = (10**12, 3, 50)) -> Path:
    """Write a tiny .npz whose one member declares `shape` but holds 600 zero bytes.

    Issue 14's example: 844 bytes declaring (10^12, 3, 50) float32, i.e. 546 TiB.
    """
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("accel.npy", npy_header(shape) + bytes(600))
    return path


def zip64_bomb(path: Path, n_chunks: int = 256) -> Path:
    """Write a real ~4 MB deflated .npz holding `n_chunks` x 16 MiB of float32 zeros.

    At the default, 4 GiB, CRC included: what numpy.savez_compressed writes for
    np.zeros(2**30, np.float32).

    Deflating 4 GiB takes ~8 s, so the stream is built from one compressed 16 MiB segment
    ended by a full flush (which resets the window, so segments concatenate into one valid
    raw deflate stream, RFC 1951 §3.2.3), then written as a zip64 member (APPNOTE 4.5.3).
    """
    header = npy_header((n_chunks * len(_ZEROS) // 4,))
    first = zlib.compressobj(6, zlib.DEFLATED, -15)
    head = first.compress(header) + first.flush(zlib.Z_FULL_FLUSH)
    segment = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = segment.compress(_ZEROS) + segment.flush(zlib.Z_FULL_FLUSH)
    tail = zlib.compressobj(6, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)
    crc = zlib.crc32(header)
    for _ in range(n_chunks):
        crc = zlib.crc32(_ZEROS, crc)
    data_size = len(header) + n_chunks * len(_ZEROS)
    comp_size = len(head) + n_chunks * len(body) + len(tail)
    name = b"x.npy"
    extra = struct.pack("<HHQQ", 0x0001, 16, data_size, comp_size)
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 8, 0, 0x21, crc, 0xFFFFFFFF,
                        0xFFFFFFFF, len(name), len(extra)) + name + extra
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 8, 0, 0x21, crc,
                          0xFFFFFFFF, 0xFFFFFFFF, len(name), len(extra), 0, 0, 0, 0,
                          0) + name + extra
    with open(path, "wb") as fh:
        fh.write(local + head)
        for _ in range(n_chunks):
            fh.write(body)
        fh.write(tail)
        cd_offset = fh.tell()
        fh.write(central)
        fh.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), cd_offset, 0))
    return path


def four_gib_bomb() -> Path:
    """Return the issue's 4 GiB `zip64_bomb`, built once per test session (~2 s) and shared.

    Tests must not modify it.
    """
    if "bomb" not in _CACHE:
        root = Path(tempfile.mkdtemp(prefix="parse-edge-bomb-"))
        atexit.register(shutil.rmtree, root, True)
        _CACHE["bomb"] = zip64_bomb(root / "bomb.npz")
    return _CACHE["bomb"]
