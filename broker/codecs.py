"""Update codecs: pure numpy functions from a float32 vector to bytes and back, plus error feedback.

Error bounds (x the input, x̂ = decode(encode(x)), all float32):
- `fp32`: exact.
- `fp16`: |x - x̂| <= max(2**-11 * |x|, 2**-25) for |x| <= 65504; larger magnitudes are clipped to ±65504.
- `int8`: per block of `block_size` elements, scale = max|x_block| / 127 and
  |x - x̂| <= scale / 2 (+ float32 rounding, ~1e-7 relative).
- `topk`: the k = ceil(k_fraction * n) largest-magnitude entries are kept (int8 with one scale per
  `block_size` kept values, same bound as `int8` over the kept values); every other entry decodes to 0,
  and its magnitude is <= the smallest kept magnitude. Indices are delta-coded as LEB128 varints.
  Error feedback lives in the sender (broker.sender): it difference-codes against what receivers
  hold, so whatever a lossy codec dropped goes out again in later messages.
- `stc`: sparse ternary compression (Sattler, Wiedemann, Müller and Samek 2019, "Robust and
  Communication-Efficient Federated Learning from Non-IID Data", IEEE TNNLS 31:3400): the same k
  entries as `topk`, each sent as its sign times one shared magnitude mu = mean |kept entries|,
  positions Golomb-Rice coded. Kept entries decode to ±mu, every other one to 0; about
  b + 1 / (1 - (1 - p)^(2^b)) + 1 bits per kept entry (p = k / n), e.g. ~6.8 at p = 0.05, where
  `topk` spends ~16 (an int8 value and a one-byte varint gap).
"""

from __future__ import annotations

import math
import struct
from enum import IntEnum

import numpy as np

FP16_MAX = 65504.0
DEFAULT_BLOCK = 256
DEFAULT_K_FRACTION = 0.01
_U32 = struct.Struct(">I")
_U32X2 = struct.Struct(">II")
# stc header: k, Golomb-Rice parameter b, bytes of the unary (quotient) stream, mu.
_STC = struct.Struct(">IBIf")
_GOLDEN = (1 + math.sqrt(5)) / 2


class CodecId(IntEnum):
    """Codec identifiers as carried in the wire header."""

    FP32 = 1
    FP16 = 2
    INT8 = 3
    TOPK = 4
    STC = 5


class CodecError(ValueError):
    """A codec payload that cannot be decoded into the announced number of elements."""


# --- dense codecs -------------------------------------------------------------------------------

def _as_vector(vector: np.ndarray) -> np.ndarray:
    flat = np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)
    if not np.isfinite(flat).all():
        raise ValueError("vector: holds NaN or inf; refusing to encode a non-finite update")
    return flat


def encode_fp32(vector: np.ndarray) -> bytes:
    """Little-endian float32, exact."""
    return _as_vector(vector).astype("<f4", copy=False).tobytes()


def decode_fp32(payload: bytes | bytearray | memoryview, n_elements: int) -> np.ndarray:
    """Inverse of `encode_fp32` (4 bytes per element); raises CodecError on a wrong length."""
    if len(payload) != 4 * n_elements:
        raise CodecError(f"fp32: {len(payload)} bytes for {n_elements} elements")
    values = np.frombuffer(payload, dtype="<f4")
    # a writable buffer (the reassembly buffer) is used in place; read-only bytes are copied
    return values.astype(np.float32, copy=not values.flags.writeable)


def encode_fp16(vector: np.ndarray) -> bytes:
    """Little-endian float16, clipped to ±65504."""
    flat = _as_vector(vector)
    return bytes(np.clip(flat, -FP16_MAX, FP16_MAX).astype("<f2").tobytes())


def decode_fp16(payload: bytes | bytearray | memoryview, n_elements: int) -> np.ndarray:
    """Inverse of `encode_fp16` (2 bytes per element); raises CodecError on a wrong length."""
    if len(payload) != 2 * n_elements:
        raise CodecError(f"fp16: {len(payload)} bytes for {n_elements} elements")
    return np.frombuffer(payload, dtype="<f2").astype(np.float32)


def _quantize_blocks(values: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-block symmetric int8: (scales float32 per block, int8 values)."""
    n = values.size
    n_blocks = -(-n // block_size)
    padded = np.zeros(n_blocks * block_size, dtype=np.float32)
    padded[:n] = values
    blocks = padded.reshape(n_blocks, block_size)
    scales = (np.abs(blocks).max(axis=1) / 127.0).astype(np.float32)
    safe = np.where(scales > 0, scales, 1.0).astype(np.float32)
    q = np.clip(np.rint(blocks / safe[:, None]), -127, 127).astype(np.int8)
    return scales, q.reshape(-1)[:n]


def _dequantize_blocks(scales: np.ndarray, q: np.ndarray, block_size: int) -> np.ndarray:
    n = q.size
    n_blocks = scales.size
    padded = np.zeros(n_blocks * block_size, dtype=np.float32)
    padded[:n] = q
    values: np.ndarray = (padded.reshape(n_blocks, block_size) * scales[:, None]).reshape(-1)[:n]
    return values


def encode_int8(vector: np.ndarray, block_size: int = DEFAULT_BLOCK) -> bytes:
    """u32 block size, float32 scale per block, int8 values."""
    if block_size < 1:
        raise ValueError(f"block_size: expected >= 1, got {block_size}")
    flat = _as_vector(vector)
    scales, q = _quantize_blocks(flat, block_size)
    return _U32.pack(block_size) + scales.astype("<f4").tobytes() + q.tobytes()


def decode_int8(payload: bytes | bytearray | memoryview, n_elements: int) -> np.ndarray:
    """Inverse of `encode_int8`; raises CodecError unless the layout fits `n_elements` exactly."""
    if len(payload) < 4:
        raise CodecError("int8: payload shorter than its block size field")
    (block_size,) = _U32.unpack_from(payload)
    if block_size < 1:
        raise CodecError("int8: block size 0")
    n_blocks = -(-n_elements // block_size)
    if len(payload) != 4 + 4 * n_blocks + n_elements:
        raise CodecError(f"int8: {len(payload)} bytes for {n_elements} elements, block {block_size}")
    scales = np.frombuffer(payload, dtype="<f4", count=n_blocks, offset=4).astype(np.float32)
    q = np.frombuffer(payload, dtype=np.int8, count=n_elements, offset=4 + 4 * n_blocks)
    return _dequantize_blocks(scales, q, block_size)


# --- top-k ----------------------------------------------------------------------------------------

def varint_encode(values: np.ndarray) -> bytes:
    """LEB128 of non-negative integers < 2**35, vectorized."""
    v = np.asarray(values, dtype=np.uint64).reshape(-1)
    if v.size == 0:
        return b""
    shifts = np.arange(5, dtype=np.uint64) * np.uint64(7)
    groups = ((v[:, None] >> shifts) & np.uint64(0x7F)).astype(np.uint8)
    n_bytes = 1 + (v[:, None] >= (np.uint64(1) << (shifts[1:]))).sum(axis=1)
    position = np.arange(5)[None, :]
    groups |= np.where(position < (n_bytes[:, None] - 1), 0x80, 0).astype(np.uint8)
    return bytes(groups[position < n_bytes[:, None]].tobytes())


def varint_decode(data: bytes | bytearray | memoryview, count: int) -> np.ndarray:
    """Inverse of `varint_encode`; raises CodecError unless `data` holds exactly `count` values."""
    raw = np.frombuffer(data, dtype=np.uint8)
    if count == 0:
        if raw.size:
            raise CodecError("varint: trailing bytes")
        return np.zeros(0, dtype=np.uint64)
    ends = np.flatnonzero((raw & 0x80) == 0)
    if ends.size != count or ends[-1] != raw.size - 1:
        raise CodecError(f"varint: expected {count} values in {raw.size} bytes, found {ends.size}")
    starts = np.concatenate(([0], ends[:-1] + 1))
    if (ends - starts).max() >= 5:
        raise CodecError("varint: value longer than 5 bytes")
    group_of_byte = np.repeat(np.arange(count), ends - starts + 1)
    shift = (np.arange(raw.size) - starts[group_of_byte]).astype(np.uint64) * np.uint64(7)
    contributions = (raw & 0x7F).astype(np.uint64) << shift
    return np.add.reduceat(contributions, starts)


def topk_count(n_elements: int, k_fraction: float) -> int:
    """How many entries topk keeps."""
    return min(n_elements, max(1, math.ceil(k_fraction * n_elements))) if n_elements else 0


def topk_indices(magnitudes: np.ndarray, k: int) -> np.ndarray:
    """Sorted indices of the k largest magnitudes (exact; ties broken arbitrarily).

    A full introselect over a residual vector can be slow (its values bunch up after a few
    rounds), so large vectors first keep only the entries above a threshold estimated from a
    strided sample; whenever at least k entries pass, the top k are provably among them.
    """
    n = magnitudes.size
    if k >= n:
        return np.arange(n, dtype=np.int64)
    if n >= 65536 and k <= n // 8:
        sample = magnitudes[:: n // 16384]
        rank = sample.size - max(1, int(2 * k / n * sample.size))  # aim for ~2k candidates
        threshold = np.partition(sample, rank)[rank]
        candidates = np.flatnonzero(magnitudes >= threshold)
        if candidates.size >= k:
            chosen = np.argpartition(magnitudes[candidates], candidates.size - k)[candidates.size - k:]
            return np.sort(candidates[chosen])
    return np.sort(np.argpartition(magnitudes, n - k)[n - k:])


def encode_topk(vector: np.ndarray, k_fraction: float = DEFAULT_K_FRACTION,
                block_size: int = DEFAULT_BLOCK) -> bytes:
    """Keep the k largest-magnitude entries, int8-quantised, with delta-coded indices.

    Layout: u32 k, u32 block size, float32 scale per block of kept values, int8 kept values,
    varint index gaps (the first gap is the first index).
    """
    flat = _as_vector(vector)
    k = topk_count(flat.size, k_fraction)
    indices = topk_indices(np.abs(flat), k)
    scales, q = _quantize_blocks(flat[indices], block_size)
    gaps = np.diff(indices, prepend=0)
    return (_U32X2.pack(k, block_size) + scales.astype("<f4").tobytes() + q.tobytes()
            + varint_encode(gaps))


def decode_topk(payload: bytes | bytearray | memoryview, n_elements: int) -> np.ndarray:
    """Inverse of `encode_topk` (zeros where nothing was kept).

    Raises CodecError on a short payload, k > n, or indices out of range or repeated.
    """
    if len(payload) < 8:
        raise CodecError("topk: payload shorter than its k/block fields")
    k, block_size = _U32X2.unpack_from(payload)
    if k > n_elements or block_size < 1:
        raise CodecError(f"topk: k={k} block={block_size} for {n_elements} elements")
    n_blocks = -(-k // block_size)
    values_end = 8 + 4 * n_blocks + k
    if len(payload) < values_end + k:
        raise CodecError(f"topk: {len(payload)} bytes too short for k={k}")
    scales = np.frombuffer(payload, dtype="<f4", count=n_blocks, offset=8).astype(np.float32)
    q = np.frombuffer(payload, dtype=np.int8, count=k, offset=8 + 4 * n_blocks)
    indices = np.cumsum(varint_decode(payload[values_end:], k))
    if k and (indices[-1] >= n_elements or (k > 1 and (np.diff(indices) == 0).any())):
        raise CodecError("topk: indices out of range or repeated")
    out = np.zeros(n_elements, dtype=np.float32)
    out[indices.astype(np.int64)] = _dequantize_blocks(scales, q, block_size)
    return out


# --- sparse ternary (STC) ------------------------------------------------------------------------

def golomb_parameter(p: float) -> int:
    """Golomb-Rice parameter b for gaps between kept positions at density p in (0, 1].

    b* = 1 + floor(log2(log(phi - 1) / log(1 - p))), phi the golden ratio: the optimal Golomb code
    of geometric gaps (Gallager and van Voorhis 1975), as used by Sattler et al. 2019 (eq. 13);
    clipped to [0, 31].
    """
    if p >= 1.0:
        return 0
    if p <= 0.0:
        return 31
    ratio = math.log(_GOLDEN - 1) / math.log(1 - p)
    return int(min(31, max(0, 1 + math.floor(math.log2(ratio)))))


def encode_stc(vector: np.ndarray, k_fraction: float = DEFAULT_K_FRACTION) -> bytes:
    """Sparse ternary compression: the top-k entries' signs, one magnitude mu, Golomb-Rice positions.

    Layout: `_STC` header (u32 k, u8 b, u32 unary bytes, float32 mu), then the unary stream
    (per kept entry, quotient q = gap >> b as q one-bits and a zero-bit, padded with one-bits to
    a byte), then per kept entry b remainder bits (gap & (2^b - 1)) and a sign bit (1: negative),
    padded with zero-bits. The first gap is the first index, later gaps are index differences - 1.
    Bits are packed most significant first.

    Parameters
    ----------
    vector : np.ndarray
        Any shape; flattened to float32, must be finite.
    k_fraction : float
        Fraction of entries kept, in (0, 1].

    Returns
    -------
    bytes
        The payload.

    Raises
    ------
    ValueError
        On a non-finite vector.
    """
    flat = _as_vector(vector)
    k = topk_count(flat.size, k_fraction)
    indices = topk_indices(np.abs(flat), k)
    mu = float(np.abs(flat[indices]).mean()) if k else 0.0
    b = golomb_parameter(k / flat.size) if k else 0
    gaps = np.diff(indices, prepend=-1).astype(np.int64) - 1  # the first is the first index
    quotients = gaps >> b
    unary = np.ones(int(quotients.sum()) + k, dtype=np.uint8)
    unary[np.cumsum(quotients + 1) - 1] = 0
    unary_bytes = np.packbits(np.concatenate([unary, np.ones(-unary.size % 8, dtype=np.uint8)]))
    shifts = np.arange(b - 1, -1, -1, dtype=np.int64)
    fixed = np.concatenate([(gaps[:, None] >> shifts) & 1,
                            (flat[indices] < 0)[:, None].astype(np.int64)], axis=1)
    fixed_bytes = np.packbits(fixed.reshape(-1).astype(np.uint8))
    return (_STC.pack(k, b, unary_bytes.size, mu) + unary_bytes.tobytes() + fixed_bytes.tobytes())


def decode_stc(payload: bytes | bytearray | memoryview, n_elements: int) -> np.ndarray:
    """Inverse of `encode_stc`: ±mu at the kept positions, zeros elsewhere.

    Raises
    ------
    CodecError
        On a short or long payload, k > n, b > 31, a non-finite or negative mu, a unary stream
        without exactly k terminators or with bad padding, or positions out of range.
    """
    if len(payload) < _STC.size:
        raise CodecError("stc: payload shorter than its header")
    k, b, n_unary, mu = _STC.unpack_from(payload)
    if k > n_elements or b > 31 or not (math.isfinite(mu) and mu >= 0):
        raise CodecError(f"stc: k={k} b={b} mu={mu} for {n_elements} elements")
    n_fixed = -(-k * (b + 1) // 8)
    if len(payload) != _STC.size + n_unary + n_fixed:
        raise CodecError(f"stc: {len(payload)} bytes, expected {_STC.size + n_unary + n_fixed}")
    raw = np.frombuffer(payload, dtype=np.uint8)
    unary = np.unpackbits(raw[_STC.size:_STC.size + n_unary])
    ends = np.flatnonzero(unary == 0)
    if ends.size != k or (k and unary.size - ends[-1] - 1 >= 8) or (not k and n_unary):
        raise CodecError(f"stc: unary stream holds {ends.size} terminators, expected {k}")
    fixed_bits = np.unpackbits(raw[_STC.size + n_unary:])
    if fixed_bits[k * (b + 1):].any():
        raise CodecError("stc: non-zero padding bits")
    out = np.zeros(n_elements, dtype=np.float32)
    if not k:
        return out
    quotients = np.diff(ends, prepend=-1) - 1
    fixed = fixed_bits[: k * (b + 1)].reshape(k, b + 1).astype(np.int64)
    remainders = (fixed[:, :b] << np.arange(b - 1, -1, -1, dtype=np.int64)).sum(axis=1)
    gaps = (quotients.astype(np.int64) << b) + remainders
    indices = np.cumsum(gaps + 1) - 1
    if indices[-1] >= n_elements:
        raise CodecError("stc: positions out of range")
    out[indices] = np.where(fixed[:, b] == 1, -mu, mu).astype(np.float32)
    return out


# --- one interface ----------------------------------------------------------------------------------

def encode(codec: CodecId, vector: np.ndarray, *, block_size: int = DEFAULT_BLOCK,
           k_fraction: float = DEFAULT_K_FRACTION) -> bytes:
    """Encode `vector` with `codec`.

    Parameters
    ----------
    codec : CodecId
        Which codec.
    vector : np.ndarray
        Any shape, any real dtype; flattened and cast to float32. Must be finite.
    block_size : int
        Elements per int8 scale (int8 and topk).
    k_fraction : float
        Fraction of entries topk and stc keep, in (0, 1].

    Returns
    -------
    bytes
        The codec payload (layouts in the module docstring and each `encode_*`).

    Raises
    ------
    ValueError
        On a non-finite vector or a bad parameter.
    """
    if codec is CodecId.FP32:
        return encode_fp32(vector)
    if codec is CodecId.FP16:
        return encode_fp16(vector)
    if codec is CodecId.INT8:
        return encode_int8(vector, block_size)
    if codec is CodecId.TOPK:
        return encode_topk(vector, k_fraction, block_size)
    if codec is CodecId.STC:
        return encode_stc(vector, k_fraction)
    raise ValueError(f"codec: unknown {codec!r}")


def decode(codec: CodecId, payload: bytes | bytearray | memoryview, n_elements: int) -> np.ndarray:
    """Decode a payload into `n_elements` float32 values; raises CodecError on malformed payloads."""
    if codec is CodecId.FP32:
        return decode_fp32(payload, n_elements)
    if codec is CodecId.FP16:
        return decode_fp16(payload, n_elements)
    if codec is CodecId.INT8:
        return decode_int8(payload, n_elements)
    if codec is CodecId.TOPK:
        return decode_topk(payload, n_elements)
    if codec is CodecId.STC:
        return decode_stc(payload, n_elements)
    raise CodecError(f"codec: unknown {codec!r}")
