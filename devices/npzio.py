"""Bounded reading of .npz archives and .npy files: hostile files give one-line errors.

`numpy.load` trusts the file: it allocates whatever shape an .npy header declares (an 844-byte
archive can ask for 546 TiB), reads a version-2 header's declared length (up to 4 GiB) before
checking it, and lets zipfile's and zlib's exceptions escape. This reader checks each member's
header first — format version, header length, dtype, shape and the bytes it would allocate
against a cap — and only then reads exactly the declared bytes, so the memory it uses is bounded
by the cap plus one read chunk, and a bomb is refused before any allocation.

Board side: numpy, the standard library and `exporters.schema.FieldError` (the common base of
the loaders' one-line errors). `edge` may import this module, never the reverse.
The .npy layout is numpy's NEP 1 ("A simple file format for NumPy arrays"); an .npz archive
is a zip file with one ``<key>.npy`` member per array (`numpy.savez`, `numpy.savez_compressed`).
"""

from __future__ import annotations

import io
import math
import os
import stat
import struct
import tokenize
import typing
import zipfile
import zlib
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exporters.schema import FieldError

# A quarter of the RAM of the smallest boards in devices.profiles (4 GiB: rpi4, jetson-nano),
# and ~20x the largest bundled data set as float32 (UCI-HAR, 10299 x 9 x 128 x 4 B = 47 MB).
DEFAULT_MAX_BYTES = 1 << 30
# numpy's own limit on header text (numpy.lib.format, `max_header_size`): 10000 characters.
MAX_HEADER_BYTES = 10_000
# numpy 2 allows 64 dimensions (NPY_MAXDIMS); no sensor or label array needs more than a few.
MAX_NDIM = 32
# An .npz of a fleet's data holds a handful of arrays; thousands of members is not a data file.
MAX_MEMBERS = 1024
# Kinds a numeric or label array may have: bool, ints, uints, floats, complex, bytes, str.
# Object arrays need pickle (code execution on load); structured/void arrays are never data here.
ALLOWED_KINDS = "biufcSU"

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_READ_CHUNK_BYTES = 1 << 20
# What zipfile and zlib raise on malformed archives: zipfile does not wrap its struct, zlib,
# seek and name-decoding failures, so a truncated or bit-flipped archive can surface any of these.
_ARCHIVE_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError,
                   NotImplementedError, struct.error, OverflowError, KeyError, IndexError)


class NpzError(FieldError):
    """A file is not a readable, bounded .npz/.npy; the message is one line.

    Attributes `source` (the file), `field` (``<file>`` or the member key) and `expected`
    let a caller re-raise it as its own error type (edge: ``ConfigError``).
    """


@dataclass(frozen=True)
class ArrayHeader:
    """What an .npy header declares, checked: the array is not read yet."""

    shape: tuple[int, ...]
    dtype: np.dtype[np.generic]
    fortran_order: bool

    @property
    def nbytes(self) -> int:
        """Bytes the array occupies once read (exact integer, no overflow)."""
        return math.prod(self.shape) * self.dtype.itemsize


def read_npz(path: str | Path, *, keys: Collection[str] | None = None,
             max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, np.ndarray]:
    """Read the arrays of an .npz archive, refusing anything that is not plain bounded data.

    Parameters
    ----------
    path : str or Path
        The archive (`numpy.savez` or `numpy.savez_compressed` output).
    keys : collection of str, optional
        Read only these members (absent ones are simply not returned); default: every member.
    max_bytes : int
        Cap on the bytes of all returned arrays together, checked from the headers before
        anything is allocated (default `DEFAULT_MAX_BYTES`, 1 GiB).

    Returns
    -------
    dict of str to numpy.ndarray
        Member key (file name without ``.npy``) to array, in archive order.

    Raises
    ------
    NpzError
        Not a regular file, a single .npy renamed .npz, not a zip, a truncated or corrupted
        archive (CRC checked), an unsupported compression or encryption, a member that is not
        an .npy, object/pickled or structured dtypes, or arrays over `max_bytes`.
    """
    source = str(path)
    _check_regular_file(source)
    with open(source, "rb") as fh:
        magic = fh.read(len(_NPY_MAGIC))
    if magic.startswith(_NPY_MAGIC):
        raise NpzError(source, "<file>", "expected an .npz archive, got a single .npy array "
                       "(save with numpy.savez)")
    if not magic.startswith(_ZIP_MAGICS):
        raise NpzError(source, "<file>", "expected an .npz archive (a zip of .npy arrays)")
    arrays: dict[str, np.ndarray] = {}
    budget = max_bytes
    try:
        with zipfile.ZipFile(source) as archive:
            members = _members(source, archive)
            for key, info in members.items():
                if keys is not None and key not in keys:
                    continue
                # zipfile's member stream is an io.BufferedIOBase (ZipExtFile); typeshed says IO.
                with typing.cast(io.BufferedIOBase, archive.open(info)) as stream:
                    arrays[key] = _read_array(stream, source, key, budget, max_bytes)
                budget -= arrays[key].nbytes
    except NpzError:
        raise
    except _ARCHIVE_ERRORS as exc:
        raise NpzError(source, "<file>", f"expected a readable .npz archive, the file is "
                       f"truncated or corrupt ({type(exc).__name__}: {exc})") from None
    return arrays


def read_npy(path: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """Read one .npy file with the same checks as each member of `read_npz`.

    Raises
    ------
    NpzError
        Not a regular file, not an .npy, a bad header, a refused dtype, an array over
        `max_bytes`, or a truncated file.
    """
    source = str(path)
    _check_regular_file(source)
    try:
        with open(source, "rb") as fh:
            return _read_array(fh, source, "<file>", max_bytes, max_bytes)
    except OSError as exc:
        raise NpzError(source, "<file>", f"cannot read the file ({exc.strerror})") from None


def read_header(stream: io.BufferedIOBase, source: str, field: str) -> ArrayHeader:
    """Parse and check an .npy header from `stream`, reading at most `MAX_HEADER_BYTES` + 12.

    numpy's parser (`numpy.lib.format.read_array_header_1_0` / ``_2_0``) reads the header text;
    the length is checked here first, because numpy reads a version-2 header's declared length
    (up to 4 GiB) before comparing it with its own limit.

    Raises
    ------
    NpzError
        Not an .npy, an unsupported format version, a header too long or unparsable, a negative
        or too many dimensions, or a refused dtype (object, structured, sub-array, zero-size).
    """
    prefix = _read_exact(stream, len(_NPY_MAGIC) + 2, source, field, "the .npy magic")
    if not prefix.startswith(_NPY_MAGIC):
        raise NpzError(source, field, "expected an .npy array (numpy's magic bytes are missing)")
    version = (prefix[-2], prefix[-1])
    if version not in ((1, 0), (2, 0)):
        raise NpzError(source, field, f"expected .npy format version 1.0 or 2.0, got "
                       f"{version[0]}.{version[1]}")
    length_format = "<H" if version == (1, 0) else "<I"
    length_bytes = _read_exact(stream, struct.calcsize(length_format), source, field,
                               "the header length")
    (header_len,) = struct.unpack(length_format, length_bytes)
    if header_len > MAX_HEADER_BYTES:
        raise NpzError(source, field, f"expected an .npy header of at most {MAX_HEADER_BYTES} "
                       f"bytes, the file declares {header_len}")
    text = _read_exact(stream, header_len, source, field, "the header")
    parse = (np.lib.format.read_array_header_1_0 if version == (1, 0)
             else np.lib.format.read_array_header_2_0)
    try:
        shape, fortran_order, dtype = parse(io.BytesIO(length_bytes + text))
    except (ValueError, TypeError, KeyError, IndexError, SyntaxError, RecursionError,
            OverflowError, tokenize.TokenError) as exc:  # numpy re-tokenizes unparsable headers
        raise NpzError(source, field, f"expected a valid .npy header ({exc})") from None
    return _checked_header(tuple(shape), dtype, bool(fortran_order), source, field)


def _checked_header(shape: tuple[int, ...], dtype: np.dtype[np.generic], fortran_order: bool,
                    source: str, field: str) -> ArrayHeader:
    if dtype.hasobject:
        raise NpzError(source, field, "expected plain numeric or string data, got Python "
                       "objects (loading them needs pickle, which is refused)")
    if dtype.kind not in ALLOWED_KINDS or dtype.names is not None or dtype.subdtype is not None:
        raise NpzError(source, field, f"expected a numeric, boolean or string array, got dtype "
                       f"{dtype.str}")
    if dtype.itemsize == 0:
        raise NpzError(source, field, f"expected a dtype with a non-zero item size, got "
                       f"{dtype.str}")
    if len(shape) > MAX_NDIM:
        raise NpzError(source, field, f"expected at most {MAX_NDIM} dimensions, got {len(shape)}")
    if any(d < 0 for d in shape):
        raise NpzError(source, field, f"expected non-negative dimensions, got shape {shape}")
    return ArrayHeader(shape, dtype, fortran_order)


def _read_array(stream: io.BufferedIOBase, source: str, field: str, budget: int,
                max_bytes: int) -> np.ndarray:
    header = read_header(stream, source, field)
    if header.nbytes > budget:
        spent = "" if budget == max_bytes else f" ({max_bytes - budget} already read)"
        raise NpzError(source, field, f"array of shape {header.shape} and dtype "
                       f"{header.dtype.str} needs {header.nbytes} bytes, over the loader's cap "
                       f"of {max_bytes} bytes{spent}; expected a smaller array or a larger "
                       "max_bytes")
    # Fortran-ordered data is the transpose of a C-ordered array of the reversed shape.
    layout = header.shape[::-1] if header.fortran_order else header.shape
    array = np.empty(layout, dtype=header.dtype)
    view = array.reshape(-1).view(np.uint8).data
    filled = 0
    while filled < len(view):
        got = stream.readinto(view[filled:filled + _READ_CHUNK_BYTES])
        if not got:
            raise NpzError(source, field, f"expected {header.nbytes} data bytes for shape "
                           f"{header.shape}, the data ends after {filled} (truncated)")
        filled += got
    # Reading to the end also makes zipfile compare the member's CRC-32 (bit flips in data).
    if stream.read(1):
        raise NpzError(source, field, f"expected exactly {header.nbytes} data bytes for shape "
                       f"{header.shape}, more follow (corrupt header or data)")
    return array.T if header.fortran_order else array


def _members(source: str, archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise NpzError(source, "<file>", f"expected at most {MAX_MEMBERS} arrays, the archive "
                       f"lists {len(infos)}")
    members: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        name = info.filename
        if not name.endswith(".npy") or "/" in name or info.is_dir():
            raise NpzError(source, name, "expected only <key>.npy members, as numpy.savez writes")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise NpzError(source, name, f"expected stored or deflated data (numpy.savez / "
                           f"savez_compressed), got zip compression method {info.compress_type}")
        if info.flag_bits & 0x1:
            raise NpzError(source, name, "expected an unencrypted member")
        key = name[: -len(".npy")]
        if key in members:
            raise NpzError(source, name, "expected each array once, the name is repeated")
        members[key] = info
    return members


def _read_exact(stream: io.BufferedIOBase, size: int, source: str, field: str, what: str) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise NpzError(source, field, f"expected {size} bytes of {what}, the data ends after "
                       f"{len(data)} (truncated)")
    return data


def _check_regular_file(source: str) -> None:
    # A FIFO or a device (/dev/zero) would block or never end; only regular files are data.
    try:
        mode = os.stat(source).st_mode
    except OSError as exc:
        raise NpzError(source, "<file>", f"cannot read the file ({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        raise NpzError(source, "<file>", "expected a regular file")
