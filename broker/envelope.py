"""Signed envelopes for status, metrics, control and probe messages (updates have their own header).

Layout (big-endian), version 1:

    magic "PESG" | version u8 | kind u8 | flags u8 | reserved u8 (0)
    run_id 16 bytes | epoch u32 | seq u64 | body_len u32
    fleet, sender: each u8 length + utf-8
    hmac 32 bytes (when flags & HMAC): HMAC-SHA256 with the sender's key over everything else
    body (body_len bytes; JSON for status, metrics and control)

`Signer` numbers each kind's messages (a stream) 0, 1, 2, ... within the sender's epoch; `Verifier`
checks the HMAC, the fleet, the run id, that the envelope's kind and sender belong on the topic it
came on, the retain flag, and replays (`broker.replay`), counting every rejection by reason.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import struct
import threading
from collections import Counter
from enum import IntEnum
from typing import NamedTuple

from broker import topics
from broker.chunking import MAX_MESSAGE_BYTES
from broker.keys import NO_RUN, KeyRing, as_keyring, check_epoch, check_run_id, verify_mac
from broker.rejects import Reject, RejectedError
from broker.replay import DEFAULT_WINDOW, ReplayWindows

log = logging.getLogger(__name__)

MAGIC = b"PESG"
VERSION = 1
HMAC_FLAG = 1
HMAC_LEN = 32
_FIXED = struct.Struct(">4sBBBB16sIQI")
FIXED_LEN = _FIXED.size
MAX_BODY_BYTES = MAX_MESSAGE_BYTES  # a probe is as long as the largest update chunk
WILL_SEQ_GAP = 1 << 20  # a will is numbered this far ahead of its stream (Signer.seal_will)


class Kind(IntEnum):
    """What an envelope carries; each kind has its own topic and sequence numbers."""

    STATUS = 1
    METRICS = 2
    CONTROL = 3
    PROBE = 4


_TOPIC_KIND = {"status": Kind.STATUS, "metrics": Kind.METRICS, "control": Kind.CONTROL,
               "probe": Kind.PROBE}
# Status (presence) and the run announcement on the control topic are retained on purpose.
_RETAIN_OK = frozenset({Kind.STATUS, Kind.CONTROL})


class Envelope(NamedTuple):
    """An opened (or to-be-sealed) envelope."""

    kind: Kind
    fleet: str
    sender: str
    run_id: bytes
    epoch: int
    seq: int
    body: bytes


def _pack_str(field: str, value: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > 255:
        raise ValueError(f"{field}: {len(raw)} bytes, at most 255 fit in the envelope")
    return bytes([len(raw)]) + raw


def envelope_overhead(signer: Signer) -> int:
    """Bytes an envelope of `signer` adds to its body (header, strings, HMAC when signing)."""
    strings = 2 + len(signer.fleet.encode("utf-8")) + len(signer.sender.encode("utf-8"))
    return FIXED_LEN + strings + (HMAC_LEN if signer.signing else 0)


def seal(envelope: Envelope, key: bytes | None) -> bytes:
    """Serialise `envelope`, signed with `key` (the sender's) when given.

    Raises
    ------
    ValueError
        On a bad run id, epoch, sequence number, kind or an over-long string or body.
    """
    check_run_id(envelope.run_id)
    check_epoch(envelope.epoch)
    if not 0 <= envelope.seq < 2**64:
        raise ValueError(f"seq: expected 0..2**64-1, got {envelope.seq}")
    if len(envelope.body) > MAX_BODY_BYTES:
        raise ValueError(f"body: {len(envelope.body)} bytes > {MAX_BODY_BYTES}")
    prefix = _FIXED.pack(MAGIC, VERSION, int(Kind(envelope.kind)), HMAC_FLAG if key else 0, 0,
                         envelope.run_id, envelope.epoch, envelope.seq, len(envelope.body))
    prefix += _pack_str("fleet", envelope.fleet) + _pack_str("sender", envelope.sender)
    if not key:
        return prefix + envelope.body
    mac = hmac.new(key, prefix, hashlib.sha256)
    mac.update(envelope.body)
    return b"".join((prefix, mac.digest(), envelope.body))


def _read_str(data: bytes, offset: int, field: str) -> tuple[str, int]:
    if offset >= len(data) or offset + 1 + data[offset] > len(data):
        raise RejectedError(Reject.TRUNCATED, f"envelope ends inside {field}")
    end = offset + 1 + data[offset]
    try:
        return data[offset + 1:end].decode("utf-8"), end
    except UnicodeDecodeError:
        raise RejectedError(Reject.MALFORMED, f"{field} is not utf-8") from None


def open_envelope(data: bytes, keys: KeyRing | None) -> Envelope:
    """Parse `data` and, when `keys` sign, authenticate it with its sender's key.

    Raises
    ------
    RejectedError
        truncated, oversized, bad_magic, bad_version, malformed, unsigned or bad_hmac.
    """
    if len(data) > FIXED_LEN + 2 * 256 + HMAC_LEN + MAX_BODY_BYTES:
        raise RejectedError(Reject.OVERSIZED, f"{len(data)} bytes")
    if len(data) < FIXED_LEN:
        damaged = bytes(data[:4]) != MAGIC[:min(4, len(data))]
        raise RejectedError(Reject.BAD_MAGIC if damaged else Reject.TRUNCATED,
                            f"{len(data)} bytes, not a parse-edge envelope")
    magic, version, kind, flags, reserved, run_id, epoch, seq, body_len = _FIXED.unpack_from(data)
    if magic != MAGIC:
        raise RejectedError(Reject.BAD_MAGIC, f"magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise RejectedError(Reject.BAD_VERSION, f"envelope version {version}, this build speaks {VERSION}")
    if flags & ~HMAC_FLAG or reserved or kind not in Kind._value2member_map_:
        raise RejectedError(Reject.MALFORMED, f"kind {kind}, flags {flags:#x}, reserved {reserved}")
    fleet, offset = _read_str(data, FIXED_LEN, "fleet")
    sender, offset = _read_str(data, offset, "sender")
    signed_end = offset
    if flags & HMAC_FLAG:
        offset += HMAC_LEN
    if len(data) != offset + body_len:
        reason = Reject.TRUNCATED if len(data) < offset + body_len else Reject.MALFORMED
        raise RejectedError(reason, f"{len(data)} bytes, header says {offset + body_len}")
    body = bytes(data[offset:])
    verify_mac(keys, sender, bool(flags & HMAC_FLAG), memoryview(data)[:signed_end], body,
               data[signed_end:signed_end + HMAC_LEN])
    return Envelope(Kind(kind), fleet, sender, run_id, epoch, seq, body)


class Signer:
    """Seals one sender's envelopes: its key, run id, epoch and a sequence number per kind.

    Parameters
    ----------
    fleet, sender : str
        Fleet and agent id (topic levels).
    keys : KeyRing, bytes or None
        The key ring, or the fleet key; None sends unsigned envelopes.
    run_id : bytes
        16 bytes naming the run (`broker.keys.new_run_id`); `set_run` changes it later.
    epoch : int
        The sender's restart count (0..2**32-1), kept by the caller across restarts.
    """

    def __init__(self, fleet: str, sender: str, keys: KeyRing | bytes | None = None,
                 run_id: bytes = NO_RUN, epoch: int = 0) -> None:
        self.fleet = topics.check_name("fleet", fleet)
        self.sender = topics.check_name("sender", sender)
        self.keys = as_keyring(fleet, keys)
        self.run_id = check_run_id(run_id)
        self.epoch = check_epoch(epoch)
        self._key = self.keys.key_for(sender)
        self._seq: Counter[Kind] = Counter()
        self._will_seq: dict[Kind, int] = {}
        self._lock = threading.Lock()

    @property
    def signing(self) -> bool:
        """Whether envelopes carry an HMAC."""
        return self._key is not None

    def set_run(self, run_id: bytes) -> None:
        """Sign for another run from now on (a run id learnt from the control topic)."""
        with self._lock:
            self.run_id = check_run_id(run_id)

    def seal(self, kind: Kind, body: bytes) -> bytes:
        """Seal `body` (the caller's JSON or bytes) as the next envelope of `kind`."""
        with self._lock:
            seq = self._seq[kind]
            self._seq[kind] += 1
            run_id = self.run_id
        return seal(Envelope(kind, self.fleet, self.sender, run_id, self.epoch, seq, body), self._key)

    def seal_will(self, kind: Kind, body: bytes, gap: int = WILL_SEQ_GAP) -> bytes:
        """Seal an MQTT last will: numbered `gap` ahead of the stream, which continues beyond it.

        A will is sealed at connect time but published (by the broker) only if the sender
        vanishes, perhaps after hundreds of messages of its stream: numbered like them it would
        fall behind the receivers' replay window and be rejected. Numbered ahead it stays new;
        the next `seal_will` (at a reconnect, after which the will may have been published)
        moves the stream past it, so later messages stay new too.
        """
        with self._lock:
            previous = self._will_seq.get(kind)
            if previous is not None:
                self._seq[kind] = max(self._seq[kind], previous + 1)
            seq = self._will_seq[kind] = self._seq[kind] + gap
            run_id = self.run_id
        return seal(Envelope(kind, self.fleet, self.sender, run_id, self.epoch, seq, body), self._key)


class Verifier:
    """Opens the envelopes one receiver gets, counting each rejection by reason (thread-safe).

    Parameters
    ----------
    fleet : str
        Our fleet; envelopes of another are rejected (`wrong_fleet`).
    keys : KeyRing, bytes or None
        Verification keys (or the fleet key); with keys, unsigned envelopes are rejected.
    run_id : bytes or None
        The run we belong to; None accepts any run (until `set_run`).
    window : int
        Anti-replay window per sender and kind (`broker.replay`).
    """

    def __init__(self, fleet: str, keys: KeyRing | bytes | None = None,
                 run_id: bytes | None = None, window: int = DEFAULT_WINDOW) -> None:
        self.fleet = topics.check_name("fleet", fleet)
        self.keys = as_keyring(fleet, keys)
        self.run_id = None if run_id is None else check_run_id(run_id)
        self.rejections: Counter[Reject] = Counter()
        self.accepted = 0
        self._windows = ReplayWindows(window)
        self._lock = threading.Lock()

    def set_run(self, run_id: bytes | None) -> None:
        """Accept only envelopes of `run_id` from now on (None: any run)."""
        with self._lock:
            self.run_id = None if run_id is None else check_run_id(run_id)

    def open(self, topic: str, payload: bytes, retained: bool = False) -> Envelope | None:
        """Open one MQTT message: the verified envelope, or None with the reason counted; never raises."""
        try:
            envelope = self._open(topic, payload, retained)
        except RejectedError as exc:
            with self._lock:
                self.rejections[exc.reason] += 1
            log.debug("envelope rejected (%s) on %s: %s", exc.reason.value, topic, exc.detail)
            return None
        return envelope

    def _open(self, topic: str, payload: bytes, retained: bool) -> Envelope:
        info = topics.parse_topic(topic)
        expected_kind = None if info is None else _TOPIC_KIND.get(info.kind)
        if info is None or expected_kind is None:
            raise RejectedError(Reject.TOPIC_MISMATCH, f"{topic!r} carries no envelopes")
        if retained and expected_kind not in _RETAIN_OK:
            raise RejectedError(Reject.RETAINED, f"retained message on {topic}")
        envelope = open_envelope(payload, self.keys)
        if envelope.fleet != self.fleet or info.fleet != self.fleet:
            raise RejectedError(Reject.WRONG_FLEET, f"fleet {envelope.fleet!r}, ours is {self.fleet!r}")
        if envelope.kind is not expected_kind:
            raise RejectedError(Reject.WRONG_KIND, f"{envelope.kind.name.lower()} on {topic}")
        if info.agent is not None and envelope.sender != info.agent:
            raise RejectedError(Reject.TOPIC_MISMATCH, f"sender {envelope.sender!r} on {topic}")
        with self._lock:
            if self.run_id is not None and envelope.run_id != self.run_id:
                raise RejectedError(Reject.OTHER_RUN, f"run {envelope.run_id.hex()}, ours "
                                                      f"{self.run_id.hex()}")
            stream = (envelope.run_id, envelope.sender, envelope.kind)
            replay = self._windows.admit(stream, envelope.epoch, envelope.seq)
            if replay is not None:
                raise RejectedError(replay, f"{envelope.sender} epoch {envelope.epoch} seq {envelope.seq}")
            self.accepted += 1
        return envelope
