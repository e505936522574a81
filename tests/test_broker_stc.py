"""Sparse ternary compression (broker.codecs stc): round trips, sizes, and hostile payloads.

Properties are Hypothesis-generated (seeded): any finite vector and fraction round-trips to ±mu at
exactly the top-k positions; any byte string either decodes to n finite values or raises CodecError.
"""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from broker import codecs
from broker.codec_spec import codec_spec, parse_codec_spec
from broker.codecs import CodecError, CodecId

PROFILE = settings(derandomize=True, max_examples=200, deadline=None)
FINITE = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)


@PROFILE
@given(hnp.arrays(np.float32, st.integers(0, 3000), elements=FINITE),
       st.floats(1e-4, 1.0, allow_nan=False))
def test_stc_round_trip_is_signed_mean_magnitude_at_the_topk_positions(x: np.ndarray, p: float) -> None:
    decoded = codecs.decode(CodecId.STC, codecs.encode(CodecId.STC, x, k_fraction=p), x.size)
    k = codecs.topk_count(x.size, p)
    kept = codecs.topk_indices(np.abs(x), k)
    assert decoded.dtype == np.float32 and decoded.shape == (x.size,)
    dropped = np.setdiff1d(np.arange(x.size), kept)
    assert (decoded[dropped] == 0).all()
    if k:
        mu = np.float32(np.abs(x[kept].astype(np.float64)).mean())
        np.testing.assert_allclose(np.abs(decoded[kept]), mu, rtol=1e-6)
        nonzero = x[kept] != 0
        assert (np.sign(decoded[kept][nonzero]) == np.sign(x[kept][nonzero])).all()


@pytest.mark.parametrize("p,max_bits", [(0.01, 9.5), (0.05, 7.0), (0.1, 6.0)])
def test_stc_spends_few_bits_per_kept_entry(p: float, max_bits: float) -> None:
    # Golomb-Rice positions plus a sign bit: ~b + 1/(1-(1-p)^(2^b)) + 1 bits (Sattler et al. 2019);
    # topk spends ~16 (int8 value, one-byte varint gap).
    x = np.random.default_rng(0).normal(size=100_000).astype(np.float32)
    payload = codecs.encode(CodecId.STC, x, k_fraction=p)
    k = codecs.topk_count(x.size, p)
    assert 8 * len(payload) / k <= max_bits
    assert len(payload) < len(codecs.encode(CodecId.TOPK, x, k_fraction=p)) / 2


def test_golomb_parameter_follows_the_formula() -> None:
    for p in (0.001, 0.01, 0.05, 0.1, 0.3):
        ratio = math.log((math.sqrt(5) - 1) / 2) / math.log(1 - p)
        assert codecs.golomb_parameter(p) == max(0, 1 + math.floor(math.log2(ratio)))
    assert codecs.golomb_parameter(1.0) == 0


def _header(k: int, b: int, n_unary: int, mu: float) -> bytes:
    return struct.pack(">IBIf", k, b, n_unary, mu)


@pytest.mark.parametrize("payload,n", [
    (b"\x00" * 5, 4),                                        # shorter than the header
    (_header(5, 0, 1, 1.0) + b"\x00" * 2, 4),                # k > n
    (_header(1, 32, 1, 1.0) + b"\x7f" + b"\x00" * 5, 4),     # b > 31
    (_header(1, 0, 1, float("nan")) + b"\x7f\x00", 4),       # mu not finite
    (_header(1, 0, 1, -1.0) + b"\x7f\x00", 4),               # mu negative
    (_header(1, 0, 1, 1.0) + b"\x7f", 4),                    # short fixed part
    (_header(1, 0, 1, 1.0) + b"\x7f\x00\x00", 4),            # trailing byte
    (_header(2, 0, 1, 1.0) + b"\x7f\x00", 4),                # one terminator for k = 2
    (_header(1, 0, 2, 1.0) + b"\x7f\xff\x00", 4),            # a padding byte of the unary stream
    (_header(1, 0, 1, 1.0) + b"\xf7\x00", 4),                # position 4 of 4
    (_header(1, 0, 1, 1.0) + b"\x7f\x40", 4),                # non-zero padding bit
])
def test_stc_rejects_malformed_payloads(payload: bytes, n: int) -> None:
    with pytest.raises(CodecError):
        codecs.decode(CodecId.STC, payload, n)


@PROFILE
@given(st.binary(max_size=64), st.integers(0, 64))
def test_stc_any_bytes_decode_or_raise_codec_error(payload: bytes, n: int) -> None:
    try:
        out = codecs.decode(CodecId.STC, payload, n)
    except CodecError:
        return
    assert out.shape == (n,) and np.isfinite(out).all()


@PROFILE
@given(hnp.arrays(np.float32, st.integers(1, 500), elements=FINITE), st.floats(0.01, 1.0),
       st.data())
def test_stc_flipping_a_byte_never_escapes_codec_error(x: np.ndarray, p: float, data: st.DataObject) -> None:
    payload = bytearray(codecs.encode(CodecId.STC, x, k_fraction=p))
    i = data.draw(st.integers(0, len(payload) - 1))
    payload[i] ^= data.draw(st.integers(1, 255))
    try:
        out = codecs.decode(CodecId.STC, bytes(payload), x.size)
    except CodecError:
        return
    assert out.shape == (x.size,) and np.isfinite(out).all()


def test_stc_specs_parse_round_trip_and_are_difference_coded() -> None:
    spec = parse_codec_spec("stc:0.08/int8")
    assert (spec.codec, spec.k_fraction, spec.keyframe_codec, spec.difference) == (
        CodecId.STC, 0.08, CodecId.INT8, True)
    assert parse_codec_spec(str(spec)) == spec
    assert codec_spec("stc", 0.08, keyframe_codec="int8") == spec
    with pytest.raises(ValueError, match="fraction"):
        parse_codec_spec("stc:0")
    with pytest.raises(ValueError, match="dense"):
        parse_codec_spec("topk/stc")
