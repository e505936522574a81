"""The update wire format: a versioned binary header plus payload, as pure encode/decode functions.

Layout (big-endian), version 2:

    magic "PEUP" | version u8 | flags u8 | codec u8 | reserved u8 (0)
    round_idx u32 | ref_round i32 (-1 = keyframe) | n_elements u32 | total_len u32
    chunk_index u16 | chunk_count u16 | chunk_offset u32 | payload_len u32 | sha256 32 bytes
    run_id 16 bytes | epoch u32
    fleet, sender, branch_key, signature: each u8 length + utf-8
    hmac 32 bytes (when flags & HMAC)
    payload (payload_len bytes: this chunk of the encoded update)

`sha256` covers the identity of the update (version, delta/keep flags, codec, rounds, sizes, run id,
epoch, the four strings) and its whole encoded payload, so a flipped header bit or a spliced chunk
fails the digest. The HMAC (SHA-256 with the *sender's* key, see broker.keys) covers every byte of
the message except the HMAC itself, so the run id and the epoch are authenticated with the rest.
Version 2 added `run_id` and `epoch` (version 1 messages are rejected as `bad_version`).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from enum import IntFlag
from typing import NamedTuple

from broker.codecs import CodecId
from broker.keys import KeyRing, check_epoch, check_run_id, verify_mac
from broker.rejects import Reject, RejectedError

MAGIC = b"PEUP"
VERSION = 2
_FIXED = struct.Struct(">4sBBBBIiIIHHII32s16sI")
FIXED_LEN = _FIXED.size
HMAC_LEN = 32
MAX_STRING_BYTES = 255
MAX_CHUNKS = 65535
_IDENTITY = struct.Struct(">BBBIiII16sI")


class Flags(IntFlag):
    """Header flag bits."""

    HMAC = 1
    DELTA = 2
    KEEP = 4  # receivers keep the result as the reference for the sender's next delta


_KNOWN_FLAGS = int(Flags.HMAC | Flags.DELTA | Flags.KEEP)


class Header(NamedTuple):
    """Every header field except magic/version/flags (derived) and the HMAC.

    `run_id` (16 bytes) names the trial run and `epoch` counts the sender's restarts; both are
    signed with the rest, so a receiver can reject other runs and replays from before a restart.
    """

    fleet: str
    sender: str
    round_idx: int
    branch_key: str
    signature: str
    codec: CodecId
    ref_round: int  # -1 for a keyframe, else the round of the reference the delta applies to
    n_elements: int
    total_len: int
    chunk_index: int
    chunk_count: int
    chunk_offset: int
    payload_len: int
    sha256: bytes
    run_id: bytes
    epoch: int
    keep_reference: bool = False  # the sender difference-codes: hold this for its next delta

    @property
    def is_delta(self) -> bool:
        """Whether the payload is a difference against the reference of `ref_round`."""
        return self.ref_round >= 0


def _pack_str(field: str, value: str) -> bytes:
    # u8 length + utf-8; the limit is the u8 length field's
    raw = value.encode("utf-8")
    if len(raw) > MAX_STRING_BYTES:
        raise ValueError(f"{field}: {len(raw)} bytes, at most {MAX_STRING_BYTES} fit in the header")
    return bytes([len(raw)]) + raw


def update_digest(header: Header, payload: bytes | bytearray | memoryview) -> bytes:
    """sha256 over the update's identity and its whole encoded `payload`.

    The identity is every field of `header` except the chunk fields, `total_len` (the payload's
    length is hashed instead) and the digest itself.
    """
    digest = hashlib.sha256()
    kind = (Flags.DELTA if header.ref_round >= 0 else 0) | (Flags.KEEP if header.keep_reference else 0)
    digest.update(_IDENTITY.pack(VERSION, int(kind), int(header.codec), header.round_idx,
                                 header.ref_round, header.n_elements, len(payload), header.run_id,
                                 header.epoch))
    for field, value in (("fleet", header.fleet), ("sender", header.sender),
                         ("branch_key", header.branch_key), ("signature", header.signature)):
        digest.update(_pack_str(field, value))
    digest.update(payload)
    return digest.digest()


def strings_len(header: Header) -> int:
    """Bytes the four strings take in the header (each with its u8 length)."""
    return sum(1 + len(s.encode("utf-8"))
               for s in (header.fleet, header.sender, header.branch_key, header.signature))


def header_len(header: Header, signed: bool) -> int:
    """Total header bytes of a message (payload excluded)."""
    return FIXED_LEN + strings_len(header) + (HMAC_LEN if signed else 0)


def encode_message(header: Header, payload: bytes | memoryview,
                   hmac_key: bytes | None = None) -> bytes:
    """One message: header + payload, signed when `hmac_key` (the sender's key) is given.

    Raises
    ------
    ValueError
        When the payload length disagrees with the header, a string is too long for its u8
        length field, or a delta does not keep its result as the next reference.
    """
    if len(payload) != header.payload_len:
        raise ValueError(f"payload: {len(payload)} bytes, header says {header.payload_len}")
    if header.is_delta and not header.keep_reference:
        raise ValueError("header: a delta must keep its result as the next reference")
    check_run_id(header.run_id)  # struct's "16s" would pad or cut a wrong length silently
    check_epoch(header.epoch)
    flags = ((Flags.HMAC if hmac_key else 0) | (Flags.DELTA if header.is_delta else 0)
             | (Flags.KEEP if header.keep_reference else 0))
    prefix = _FIXED.pack(
        MAGIC, VERSION, int(flags), int(header.codec), 0, header.round_idx, header.ref_round,
        header.n_elements, header.total_len, header.chunk_index, header.chunk_count,
        header.chunk_offset, header.payload_len, header.sha256, header.run_id, header.epoch,
    ) + b"".join(_pack_str(f, v) for f, v in (
        ("fleet", header.fleet), ("sender", header.sender), ("branch_key", header.branch_key),
        ("signature", header.signature)))
    if not hmac_key:
        return b"".join((prefix, payload))
    mac = hmac.new(hmac_key, prefix, hashlib.sha256)
    mac.update(payload)
    return b"".join((prefix, mac.digest(), payload))


def _read_str(data: bytes, offset: int, field: str) -> tuple[str, int]:
    if offset >= len(data):
        raise RejectedError(Reject.TRUNCATED, f"header ends before {field}")
    length = data[offset]
    end = offset + 1 + length
    if end > len(data):
        raise RejectedError(Reject.TRUNCATED, f"header ends inside {field}")
    try:
        return data[offset + 1:end].decode("utf-8"), end
    except UnicodeDecodeError:
        raise RejectedError(Reject.MALFORMED, f"{field} is not utf-8") from None


def decode_message(data: bytes, keys: KeyRing | None = None,
                   max_message_bytes: int | None = None) -> tuple[Header, memoryview]:
    """Parse one message and, when `keys` sign, authenticate it with its sender's key.

    Parameters
    ----------
    data : bytes
        The MQTT payload.
    keys : KeyRing or None
        Keys to verify with; None or a ring without keys accepts unsigned messages.
    max_message_bytes : int or None
        Messages longer than this are rejected before parsing.

    Returns
    -------
    (Header, memoryview)
        The header and a view of this chunk's payload bytes.

    Raises
    ------
    RejectedError
        With the reason: truncated, oversized, bad magic/version/codec, malformed, unsigned
        (keys set, no HMAC), bad_hmac.
    """
    if max_message_bytes is not None and len(data) > max_message_bytes:
        raise RejectedError(Reject.OVERSIZED, f"{len(data)} bytes > limit {max_message_bytes}")
    if len(data) < 4:
        reason = Reject.TRUNCATED if MAGIC.startswith(bytes(data)) else Reject.BAD_MAGIC
        raise RejectedError(reason, f"{len(data)} bytes, not a parse-edge update header")
    if data[:4] != MAGIC:
        raise RejectedError(Reject.BAD_MAGIC, f"magic {bytes(data[:4])!r}, expected {MAGIC!r}")
    if len(data) < 5:
        raise RejectedError(Reject.TRUNCATED, "no version byte")
    if data[4] != VERSION:
        raise RejectedError(Reject.BAD_VERSION, f"format version {data[4]}, this build speaks {VERSION}")
    if len(data) < FIXED_LEN:
        raise RejectedError(Reject.TRUNCATED, f"{len(data)} bytes < fixed header {FIXED_LEN}")
    (_, _, flags, codec_id, reserved, round_idx, ref_round, n_elements, total_len, chunk_index,
     chunk_count, chunk_offset, payload_len, sha256, run_id, epoch) = _FIXED.unpack_from(data)
    if flags & ~_KNOWN_FLAGS or reserved != 0:
        raise RejectedError(Reject.MALFORMED, f"unknown flags {flags:#x} / reserved {reserved}")
    if bool(flags & Flags.DELTA) != (ref_round >= 0):
        raise RejectedError(Reject.MALFORMED, f"delta flag disagrees with ref_round {ref_round}")
    if flags & Flags.DELTA and not flags & Flags.KEEP:
        raise RejectedError(Reject.MALFORMED, "delta without the keep-reference flag")
    try:
        codec = CodecId(codec_id)
    except ValueError:
        raise RejectedError(Reject.BAD_CODEC, f"unknown codec id {codec_id}") from None
    if chunk_count == 0 or chunk_index >= chunk_count:
        raise RejectedError(Reject.MALFORMED, f"chunk {chunk_index} of {chunk_count}")
    if chunk_offset + payload_len > total_len:
        raise RejectedError(Reject.MALFORMED,
                            f"chunk bytes {chunk_offset}+{payload_len} beyond update length {total_len}")
    offset = FIXED_LEN
    fleet, offset = _read_str(data, offset, "fleet")
    sender, offset = _read_str(data, offset, "sender")
    branch_key, offset = _read_str(data, offset, "branch_key")
    signature, offset = _read_str(data, offset, "signature")
    signed_end = offset
    mac = b""
    if flags & Flags.HMAC:
        mac = bytes(data[offset:offset + HMAC_LEN])
        offset += HMAC_LEN
    expected_len = offset + payload_len
    if len(data) < expected_len:
        raise RejectedError(Reject.TRUNCATED, f"{len(data)} bytes, header says {expected_len}")
    if len(data) > expected_len:
        raise RejectedError(Reject.MALFORMED, f"{len(data) - expected_len} trailing bytes")
    payload = memoryview(data)[offset:]  # a view: chunks are copied once, when joined
    verify_mac(keys, sender, bool(flags & Flags.HMAC), memoryview(data)[:signed_end], payload, mac)
    header = Header(fleet, sender, round_idx, branch_key, signature, codec, ref_round, n_elements,
                    total_len, chunk_index, chunk_count, chunk_offset, payload_len, sha256,
                    run_id, epoch, bool(flags & Flags.KEEP))
    return header, payload
