"""Wire format: round trip, signing, and a named reason for each kind of damage."""

from __future__ import annotations

import struct

import pytest

from broker import wire
from broker.codecs import CodecId
from broker.rejects import Reject, RejectedError

KEY = b"fleet-secret"


def _message(payload: bytes = b"\x01\x02\x03\x04", key: bytes | None = None, ref_round: int = -1,
             **fields: object) -> tuple[wire.Header, bytes]:
    keep = ref_round >= 0
    digest = wire.update_digest("f", "a1", 3, "fuse/accel+gyro", "sig1", CodecId.FP32, ref_round, 1,
                                payload, keep)
    header = wire.Header("f", "a1", 3, "fuse/accel+gyro", "sig1", CodecId.FP32, ref_round, 1,
                         len(payload), 0, 1, 0, len(payload), digest, keep)._replace(**fields)
    return header, wire.encode_message(header, payload, key)


@pytest.mark.parametrize("key", [None, KEY])
@pytest.mark.parametrize("ref_round", [-1, 2])
def test_round_trip(key: bytes | None, ref_round: int) -> None:
    header, data = _message(key=key, ref_round=ref_round)
    decoded, payload = wire.decode_message(data, key)
    assert decoded == header
    assert payload == b"\x01\x02\x03\x04"
    assert len(data) == wire.header_len(header, signed=key is not None) + 4
    assert decoded.is_delta == (ref_round >= 0)


def test_digest_covers_identity_fields() -> None:
    base = wire.update_digest("f", "a1", 3, "k", "s", CodecId.FP32, -1, 1, b"x")
    variants = [
        wire.update_digest("g", "a1", 3, "k", "s", CodecId.FP32, -1, 1, b"x"),
        wire.update_digest("f", "a2", 3, "k", "s", CodecId.FP32, -1, 1, b"x"),
        wire.update_digest("f", "a1", 4, "k", "s", CodecId.FP32, -1, 1, b"x"),
        wire.update_digest("f", "a1", 3, "k2", "s", CodecId.FP32, -1, 1, b"x"),
        wire.update_digest("f", "a1", 3, "k", "s2", CodecId.FP32, -1, 1, b"x"),
        wire.update_digest("f", "a1", 3, "k", "s", CodecId.FP16, -1, 1, b"x"),
        wire.update_digest("f", "a1", 3, "k", "s", CodecId.FP32, 2, 1, b"x"),
        wire.update_digest("f", "a1", 3, "k", "s", CodecId.FP32, -1, 2, b"x"),
        wire.update_digest("f", "a1", 3, "k", "s", CodecId.FP32, -1, 1, b"y"),
        wire.update_digest("f", "a1", 3, "k", "s", CodecId.FP32, -1, 1, b"x", keep_reference=True),
    ]
    assert base not in variants and len(set(variants)) == len(variants)


def _reason(data: bytes, key: bytes | None = None, limit: int | None = None) -> Reject:
    with pytest.raises(RejectedError) as info:
        wire.decode_message(data, key, limit)
    return info.value.reason


def test_named_damage_gets_named_reason() -> None:
    _, data = _message()
    _, signed = _message(key=KEY)
    assert _reason(data[:3]) is Reject.TRUNCATED
    assert _reason(data[:40]) is Reject.TRUNCATED
    assert _reason(data[:-1]) is Reject.TRUNCATED
    assert _reason(data + b"\x00") is Reject.MALFORMED
    assert _reason(b"XXXX" + data[4:]) is Reject.BAD_MAGIC
    assert _reason(b"ab") is Reject.BAD_MAGIC
    assert _reason(data[:4] + b"\x09" + data[5:]) is Reject.BAD_VERSION
    assert _reason(data, limit=len(data) - 1) is Reject.OVERSIZED
    assert _reason(data, key=KEY) is Reject.UNSIGNED
    assert _reason(signed, key=b"other key") is Reject.BAD_HMAC
    tampered = bytearray(signed)
    tampered[-1] ^= 1
    assert _reason(bytes(tampered), key=KEY) is Reject.BAD_HMAC


def test_inconsistent_fields_are_malformed() -> None:
    _, data = _message()
    flags_unknown = data[:5] + b"\x80" + data[6:]
    reserved = data[:7] + b"\x01" + data[8:]
    delta_flag = data[:5] + bytes([data[5] | wire.Flags.DELTA]) + data[6:]
    _, delta = _message(ref_round=1)
    delta_without_keep = delta[:5] + bytes([delta[5] & ~wire.Flags.KEEP]) + delta[6:]
    assert _reason(delta_without_keep) is Reject.MALFORMED
    with pytest.raises(ValueError, match="keep"):
        _message(ref_round=1, keep_reference=False)
    assert _reason(flags_unknown) is Reject.MALFORMED
    assert _reason(reserved) is Reject.MALFORMED
    assert _reason(delta_flag) is Reject.MALFORMED
    _, bad_chunk = _message(chunk_index=1, chunk_count=1)
    _, zero_chunks = _message(chunk_count=0)
    _, beyond = _message(chunk_offset=2)
    assert _reason(bad_chunk) is Reject.MALFORMED
    assert _reason(zero_chunks) is Reject.MALFORMED
    assert _reason(beyond) is Reject.MALFORMED
    bad_codec = data[:6] + b"\x63" + data[7:]
    assert _reason(bad_codec) is Reject.BAD_CODEC
    fleet_at = wire.FIXED_LEN
    bad_utf8 = data[:fleet_at + 1] + b"\xff" + data[fleet_at + 2:]
    assert _reason(bad_utf8) is Reject.MALFORMED


def test_header_layout_is_stable() -> None:
    _, data = _message()
    assert data[:4] == b"PEUP" and data[4] == wire.VERSION
    (round_idx,) = struct.unpack_from(">I", data, 8)
    assert round_idx == 3
    assert wire.FIXED_LEN == 68


def test_encode_refuses_long_strings() -> None:
    payload = b""
    with pytest.raises(ValueError, match="branch_key"):
        digest = wire.update_digest("f", "a", 0, "k" * 300, "s", CodecId.FP32, -1, 0, payload)
        wire.encode_message(wire.Header("f", "a", 0, "k" * 300, "s", CodecId.FP32, -1, 0, 0, 0, 1, 0,
                                        0, digest), payload)
