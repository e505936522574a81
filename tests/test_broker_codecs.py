"""Codecs: round trips over shapes and dtypes, documented error bounds, bad payloads.

Error feedback is the sender's (difference coding); tests/test_broker_exchange.py covers it."""

from __future__ import annotations

import numpy as np
import pytest

from broker import codecs
from broker.codecs import CodecError, CodecId

SHAPES = [(0,), (1,), (7,), (1000,), (3, 4, 5), (257, 3)]
DTYPES = [np.float32, np.float64, np.float16, np.int32]


def _sample(shape: tuple[int, ...], dtype: type, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.normal(scale=3.0, size=shape)
    if np.issubdtype(dtype, np.integer):
        values = np.rint(values * 10)
    return values.astype(dtype)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_fp32_is_exact(shape: tuple[int, ...], dtype: type) -> None:
    x = _sample(shape, dtype)
    decoded = codecs.decode(CodecId.FP32, codecs.encode(CodecId.FP32, x), x.size)
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, x.astype(np.float32).reshape(-1))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_fp16_error_bound(shape: tuple[int, ...], dtype: type) -> None:
    x = _sample(shape, dtype).astype(np.float32).reshape(-1)
    payload = codecs.encode(CodecId.FP16, x)
    decoded = codecs.decode(CodecId.FP16, payload, x.size)
    assert len(payload) == 2 * x.size
    assert (np.abs(x - decoded) <= np.maximum(np.abs(x) * 2.0**-11, 2.0**-25)).all()


def test_fp16_clips_instead_of_overflowing() -> None:
    x = np.array([1e6, -1e6, 3.0], dtype=np.float32)
    decoded = codecs.decode(CodecId.FP16, codecs.encode(CodecId.FP16, x), 3)
    assert np.isfinite(decoded).all()
    np.testing.assert_array_equal(decoded, [65504.0, -65504.0, 3.0])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_size", [1, 16, 256])
def test_int8_per_block_error_bound(shape: tuple[int, ...], dtype: type, block_size: int) -> None:
    x = _sample(shape, dtype).astype(np.float32).reshape(-1)
    x[: x.size // 3] *= 1000.0  # blocks with very different scales: a global scale would fail
    decoded = codecs.decode(CodecId.INT8, codecs.encode(CodecId.INT8, x, block_size=block_size), x.size)
    for start in range(0, x.size, block_size):
        block = x[start:start + block_size]
        bound = np.abs(block).max() / 127.0 / 2.0
        assert np.abs(block - decoded[start:start + block_size]).max() <= bound * (1 + 1e-5) + 1e-12


@pytest.mark.parametrize("n", [1, 10, 1000, 100_000])
@pytest.mark.parametrize("k_fraction", [0.001, 0.01, 0.3, 1.0])
def test_topk_keeps_the_largest_within_int8_bound(n: int, k_fraction: float) -> None:
    x = _sample((n,), np.float32, seed=n)
    decoded = codecs.decode(CodecId.TOPK, codecs.encode(CodecId.TOPK, x, k_fraction=k_fraction), n)
    kept = np.flatnonzero(decoded)
    k = codecs.topk_count(n, k_fraction)
    assert kept.size <= k  # an entry can quantize to exactly 0
    order = np.argsort(-np.abs(x), kind="stable")
    top = order[:k]
    assert set(kept) <= set(top)
    scale_bound = np.abs(x[top]).max() / 127.0 / 2.0
    assert np.abs(x[top] - decoded[top]).max() <= scale_bound * (1 + 1e-5)
    dropped = np.setdiff1d(np.arange(n), top)
    if dropped.size:
        assert np.abs(x[dropped]).max() <= np.abs(x[top]).min()
        assert (decoded[dropped] == 0).all()


def test_topk_bytes_are_small() -> None:
    x = _sample((100_000,), np.float32)
    payload = codecs.encode(CodecId.TOPK, x, k_fraction=0.01)
    assert 4 * x.size / len(payload) >= 100  # ~2.3 bytes per kept entry


def test_varint_round_trip_at_group_edges() -> None:
    values = np.array([0, 1, 127, 128, 16383, 16384, 2**21 - 1, 2**21, 2**28, 2**35 - 1], np.uint64)
    data = codecs.varint_encode(values)
    assert len(codecs.varint_encode(np.array([127]))) == 1
    assert len(codecs.varint_encode(np.array([128]))) == 2
    np.testing.assert_array_equal(codecs.varint_decode(data, values.size), values)


@pytest.mark.parametrize("data,count", [(b"\x80", 1), (b"\x01\x02", 1), (b"\x01", 2),
                                        (b"\x80\x80\x80\x80\x80\x01", 1), (b"\x00", 0)])
def test_varint_rejects_malformed(data: bytes, count: int) -> None:
    with pytest.raises(CodecError):
        codecs.varint_decode(data, count)


@pytest.mark.parametrize("codec,payload,n", [
    (CodecId.FP32, b"\x00" * 7, 2), (CodecId.FP16, b"\x00" * 3, 2), (CodecId.INT8, b"\x00", 1),
    (CodecId.INT8, b"\x00\x00\x00\x00", 1), (CodecId.INT8, b"\x00\x00\x01\x00" + b"\x00" * 3, 4),
    (CodecId.TOPK, b"\x00" * 7, 4),
    (CodecId.TOPK, b"\x00\x00\x00\x05\x00\x00\x01\x00" + b"\x00" * 20, 4),  # k > n
    (CodecId.TOPK, b"\x00\x00\x00\x01\x00\x00\x01\x00" + b"\x00" * 4 + b"\x01" + b"\x09", 4),  # index 9
    (CodecId.TOPK, b"\x00\x00\x00\x02\x00\x00\x01\x00" + b"\x00" * 4 + b"\x01\x01" + b"\x01\x00", 4),
])
def test_malformed_payloads_raise_codec_error(codec: CodecId, payload: bytes, n: int) -> None:
    with pytest.raises(CodecError):
        codecs.decode(codec, payload, n)


def test_encode_refuses_non_finite() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        codecs.encode(CodecId.FP16, np.array([1.0, np.nan], np.float32))


@pytest.mark.parametrize("kind", ["normal", "mostly_zero", "ties", "sorted", "residual"])
def test_topk_indices_match_a_full_selection(kind: str) -> None:
    rng = np.random.default_rng(7)
    n, k = 200_000, 2_000
    m = np.abs(rng.normal(size=n)).astype(np.float32)
    if kind == "mostly_zero":
        m[rng.random(n) < 0.995] = 0  # fewer nonzeros than k: the sampled threshold is 0
    elif kind == "ties":
        m = np.round(m, 1)
    elif kind == "sorted":
        m = np.sort(m)
    elif kind == "residual":  # what error feedback leaves behind: a few tiny, the rest large
        m[rng.choice(n, k, replace=False)] *= 1e-4
    got = codecs.topk_indices(m, k)
    reference = np.argpartition(m, n - k)[n - k:]
    assert got.size == k and (np.diff(got) > 0).all()
    np.testing.assert_array_equal(np.sort(m[got]), np.sort(m[reference]))
