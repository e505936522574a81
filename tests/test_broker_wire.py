"""Wire format: round trip, signing, and a named reason for each kind of damage."""

from __future__ import annotations

import struct

import pytest

from broker import wire
from broker.codecs import CodecId
from broker.keys import KeyRing
from broker.rejects import Reject, RejectedError

FLEET_KEY = b"fleet-secret"
KEYS = KeyRing("f", FLEET_KEY)
KEY = KEYS.key_for("a1")  # the sender's own key, derived from the fleet key
RUN = bytes(range(16))


def _header(payload: bytes, ref_round: int = -1, **fields: object) -> wire.Header:
    keep = ref_round >= 0
    header = wire.Header("f", "a1", 3, "fuse/accel+gyro", "sig1", CodecId.FP32, ref_round, 1,
                         len(payload), 0, 1, 0, len(payload), b"", RUN, 7, keep)._replace(**fields)
    return header._replace(sha256=wire.update_digest(header, payload))


def _message(payload: bytes = b"\x01\x02\x03\x04", key: bytes | None = None, ref_round: int = -1,
             **fields: object) -> tuple[wire.Header, bytes]:
    header = _header(payload, ref_round)._replace(**fields)
    return header, wire.encode_message(header, payload, key)


@pytest.mark.parametrize("key", [None, KEY])
@pytest.mark.parametrize("ref_round", [-1, 2])
def test_round_trip(key: bytes | None, ref_round: int) -> None:
    header, data = _message(key=key, ref_round=ref_round)
    decoded, payload = wire.decode_message(data, KEYS if key else None)
    assert decoded == header
    assert payload == b"\x01\x02\x03\x04"
    assert len(data) == wire.header_len(header, signed=key is not None) + 4
    assert decoded.is_delta == (ref_round >= 0)


def test_digest_covers_identity_fields() -> None:
    header = _header(b"x")
    base = wire.update_digest(header, b"x")
    variants = [wire.update_digest(header._replace(**{name: value}), b"x") for name, value in [
        ("fleet", "g"), ("sender", "a2"), ("round_idx", 4), ("branch_key", "k2"), ("signature", "s2"),
        ("codec", CodecId.FP16), ("ref_round", 2), ("n_elements", 2), ("keep_reference", True),
        ("run_id", bytes(16)), ("epoch", 8)]] + [wire.update_digest(header, b"y")]
    # the chunk fields are not part of the update's identity
    same = wire.update_digest(header._replace(chunk_index=1, chunk_count=2, chunk_offset=5), b"x")
    assert base not in variants and len(set(variants)) == len(variants) and same == base


def _reason(data: bytes, key: KeyRing | None = None, limit: int | None = None) -> Reject:
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
    assert _reason(data, key=KEYS) is Reject.UNSIGNED
    assert _reason(signed, key=KeyRing("f", b"other key")) is Reject.BAD_HMAC
    # signed with another agent's key: a2's key cannot vouch for a message claiming sender a1
    _, by_a2 = _message(key=KEYS.key_for("a2"))
    assert _reason(by_a2, key=KEYS) is Reject.BAD_HMAC
    for offset in (wire.FIXED_LEN - 20, wire.FIXED_LEN - 1):  # run id, epoch: both authenticated
        tampered = bytearray(signed)
        tampered[offset] ^= 1
        assert _reason(bytes(tampered), key=KEYS) is Reject.BAD_HMAC
    tampered = bytearray(signed)
    tampered[-1] ^= 1
    assert _reason(bytes(tampered), key=KEYS) is Reject.BAD_HMAC


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
    assert data[:4] == b"PEUP" and data[4] == wire.VERSION == 2
    (round_idx,) = struct.unpack_from(">I", data, 8)
    assert round_idx == 3
    assert data[68:84] == RUN and struct.unpack_from(">I", data, 84) == (7,)
    assert wire.FIXED_LEN == 88


def test_version_1_messages_are_refused() -> None:
    _, data = _message()
    assert _reason(data[:4] + b"\x01" + data[5:]) is Reject.BAD_VERSION


def test_encode_refuses_a_bad_run_id_or_epoch() -> None:
    with pytest.raises(ValueError, match="run_id"):
        _message(run_id=b"short")
    with pytest.raises(ValueError, match="epoch"):
        _message(epoch=2**32)


def test_encode_refuses_long_strings() -> None:
    with pytest.raises(ValueError, match="branch_key"):
        _message(b"", branch_key="k" * 300)
