"""Branch updates end to end: the sender's codec state and the receiver's verification and decode.

`UpdateSender` turns (round, branch, vector) into MQTT (topic, payload) messages. Per branch it keeps
the copy x̂ that its receivers hold (CHOCO difference coding): a delta carries codec(x - x̂) and both
sides then add its decoded value to x̂, so whatever the codec dropped stays in x - x̂ and goes out
in later deltas (error feedback). A keyframe (full update) goes out first, every `keyframe_every`
messages, after a signature change, and on `request_keyframe`.

`UpdateReceiver.feed` returns a verified, decoded `Update` holding the sender's full parameter
vector x̂ (deltas already applied to the right reference), or None. It never raises: every rejected
message is counted by `Reject` reason and logged.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from broker import codecs, topics, wire
from broker.chunking import MAX_MESSAGE_BYTES, Reassembler, split_payload
from broker.codecs import CodecError, CodecId, CodecSpec, parse_codec_spec
from broker.rejects import Reject, RejectedError

log = logging.getLogger(__name__)

# Bound on an encoded update of n elements over every codec and block size (int8 with block 1
# is 5n+4; topk at k=n with block 1 is at most 10n+8), so a forged total_len cannot reserve memory.
_MAX_BYTES_PER_ELEMENT = 10
_RECENT_UPDATES = 4096


class Update(NamedTuple):
    """A verified update: the sender's branch parameters as the receiver now holds them."""

    sender: str
    round_idx: int
    branch_key: str
    signature: str
    vector: np.ndarray  # float32, flat, owned by the caller
    bytes_on_wire: int  # MQTT payload bytes of all chunks
    codec: str  # codec name of this message
    keyframe: bool  # False when a delta was applied to the held reference


@dataclass
class BranchStats:
    """Bytes one sender put on the wire for one branch."""

    messages: int = 0
    keyframes: int = 0
    deltas: int = 0
    header_bytes: int = 0
    payload_bytes: int = 0


class _UpdateKey(NamedTuple):
    sender: str
    branch_key: str
    round_idx: int
    signature: str
    codec: int
    ref_round: int
    n_elements: int
    total_len: int
    chunk_count: int
    sha256: bytes


@dataclass
class _Reference:
    vector: np.ndarray
    round_idx: int


@dataclass
class _SenderBranch:
    signature: str
    n_elements: int
    reference: np.ndarray | None = None
    previous: np.ndarray | None = None  # last true vector, used only without error feedback
    reference_round: int = -1
    deltas_since_keyframe: int = 0
    keyframe_requested: bool = False


class UpdateSender:
    """Encodes branch updates of one agent; keeps codec state per branch."""

    def __init__(self, fleet: str, sender: str, codec_spec: str | CodecSpec = "fp32",
                 keyframe_every: int = 10, hmac_key: bytes | None = None,
                 chunk_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self.fleet = topics.check_name("fleet", fleet)
        self.sender = topics.check_name("sender", sender)
        self.spec = parse_codec_spec(codec_spec) if isinstance(codec_spec, str) else codec_spec
        if keyframe_every < 0:
            raise ValueError(f"keyframe_every: expected >= 0 (0 = only when needed), got {keyframe_every}")
        if not 1024 <= chunk_bytes <= MAX_MESSAGE_BYTES:
            raise ValueError(f"chunk_bytes: expected 1024..{MAX_MESSAGE_BYTES}, got {chunk_bytes}")
        self.keyframe_every = keyframe_every
        self.hmac_key = hmac_key or None
        self.chunk_bytes = chunk_bytes
        self.stats: dict[str, BranchStats] = {}
        self._branches: dict[str, _SenderBranch] = {}
        self._lock = threading.Lock()

    def request_keyframe(self, branch_key: str | None = None) -> None:
        """Make the next message of `branch_key` (or of every branch) a keyframe."""
        with self._lock:
            for key, state in self._branches.items():
                if branch_key is None or key == branch_key:
                    state.keyframe_requested = True

    def encode(self, round_idx: int, branch_key: str, signature: str,
               vector: np.ndarray) -> list[tuple[str, bytes]]:
        """Messages (topic, payload) carrying this round's update of `branch_key`, in chunk order."""
        flat = np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)
        if not np.isfinite(flat).all():
            raise ValueError(f"vector of {branch_key!r}: holds NaN or inf; not sending it")
        if round_idx < 0 or round_idx >= 1 << 31:
            raise ValueError(f"round_idx: expected 0..2**31-1, got {round_idx}")
        topic = topics.update_topic(self.fleet, self.sender, branch_key)
        with self._lock:
            state = self._branches.get(branch_key)
            if state is None or state.signature != signature or state.n_elements != flat.size:
                state = _SenderBranch(signature, flat.size)
                self._branches[branch_key] = state
            codec, ref_round, payload = self._encode_payload(state, round_idx, flat)
            messages = self._frame(topic, round_idx, branch_key, signature, codec, ref_round,
                                   flat.size, payload)
        return messages

    def _encode_payload(self, state: _SenderBranch, round_idx: int,
                        flat: np.ndarray) -> tuple[CodecId, int, bytes]:
        delta_allowed = (
            self.spec.difference and state.reference is not None and not state.keyframe_requested
            and (self.keyframe_every == 0 or state.deltas_since_keyframe + 1 < self.keyframe_every)
        )
        if delta_allowed:
            assert state.reference is not None
            codec = self.spec.codec
            # With error feedback the delta is taken against what receivers hold, so anything a
            # lossy codec dropped earlier is sent again; without it, against the last true vector.
            base = state.reference if self.spec.error_feedback else state.previous
            assert base is not None
            payload = codecs.encode(codec, flat - base, self.spec)
            state.reference += codecs.decode(codec, payload, flat.size)
            ref_round = state.reference_round
            state.deltas_since_keyframe += 1
        else:
            codec = self.spec.keyframe_codec if self.spec.difference else self.spec.codec
            payload = codecs.encode(codec, flat, self.spec)
            if self.spec.difference:
                state.reference = codecs.decode(codec, payload, flat.size)
            ref_round = -1
            state.deltas_since_keyframe = 0
            state.keyframe_requested = False
        if not self.spec.error_feedback:
            state.previous = flat.copy()
        state.reference_round = round_idx
        return codec, ref_round, payload

    def _frame(self, topic: str, round_idx: int, branch_key: str, signature: str, codec: CodecId,
               ref_round: int, n_elements: int, payload: bytes) -> list[tuple[str, bytes]]:
        keep = self.spec.difference
        digest = wire.update_digest(self.fleet, self.sender, round_idx, branch_key, signature, codec,
                                    ref_round, n_elements, payload, keep)
        template = wire.Header(self.fleet, self.sender, round_idx, branch_key, signature, codec,
                               ref_round, n_elements, len(payload), 0, 1, 0, len(payload), digest,
                               keep)
        header_bytes = wire.header_len(template, signed=self.hmac_key is not None)
        pieces = split_payload(payload, self.chunk_bytes - header_bytes)
        if len(pieces) > wire.MAX_CHUNKS:
            raise ValueError(f"update of {branch_key!r}: {len(payload)} bytes need more than "
                             f"{wire.MAX_CHUNKS} chunks")
        stats = self.stats.setdefault(branch_key, BranchStats())
        stats.keyframes += ref_round < 0
        stats.deltas += ref_round >= 0
        messages = []
        for index, (offset, piece) in enumerate(pieces):
            header = template._replace(chunk_index=index, chunk_count=len(pieces),
                                       chunk_offset=offset, payload_len=len(piece))
            messages.append((topic, wire.encode_message(header, piece, self.hmac_key)))
            stats.messages += 1
            stats.header_bytes += header_bytes
            stats.payload_bytes += len(piece)
        return messages


class UpdateReceiver:
    """Verifies, reassembles and decodes the updates one agent receives."""

    def __init__(self, fleet: str, expected: Callable[[str], tuple[str, int] | None],
                 hmac_key: bytes | None = None, reassembly_timeout_s: float = 30.0,
                 max_message_bytes: int = MAX_MESSAGE_BYTES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.fleet = topics.check_name("fleet", fleet)
        self.expected = expected
        self.hmac_key = hmac_key or None
        self.max_message_bytes = max_message_bytes
        self.rejections: Counter[Reject] = Counter()
        self.accepted = 0
        self._reassembler = Reassembler(timeout_s=reassembly_timeout_s, clock=clock)
        self._references: dict[tuple[str, str], _Reference] = {}
        self._last_round: dict[tuple[str, str], int] = {}
        self._delivered: OrderedDict[_UpdateKey, None] = OrderedDict()
        self._keyframe_wanted: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def feed(self, topic: str, payload: bytes) -> Update | None:
        """One MQTT message in; a complete verified update out, or None. Never raises."""
        with self._lock:
            try:
                self._count_expired(self._reassembler.expire())
                return self._feed(topic, payload)
            except RejectedError as exc:
                self._reject(exc.reason, exc.detail, topic)
            except Exception as exc:  # a bug must not kill the network thread
                log.exception("update on %s: internal error", topic)
                self._reject(Reject.MALFORMED, f"internal error {exc!r}", topic)
            return None

    def expire(self, now_s: float | None = None) -> int:
        """Drop incomplete updates older than the reassembly timeout; return how many."""
        with self._lock:
            return self._count_expired(self._reassembler.expire(now_s))

    def pop_keyframe_requests(self) -> list[tuple[str, str]]:
        """(sender, branch_key) pairs whose deltas could not be applied since the last call."""
        with self._lock:
            wanted = sorted(self._keyframe_wanted)
            self._keyframe_wanted.clear()
            return wanted

    def reference_round(self, sender: str, branch_key: str) -> int | None:
        """Round of the reference held for (sender, branch) for its deltas, or None."""
        ref = self._references.get((sender, branch_key))
        return None if ref is None else ref.round_idx

    def last_round(self, sender: str, branch_key: str) -> int | None:
        """Round of the last update accepted from (sender, branch), or None."""
        return self._last_round.get((sender, branch_key))

    def forget(self, sender: str) -> None:
        """Drop every reference held for `sender` (e.g. it went offline and will restart)."""
        with self._lock:
            for key in [k for k in self._references if k[0] == sender]:
                del self._references[key]
            for key in [k for k in self._last_round if k[0] == sender]:
                del self._last_round[key]

    @property
    def pending(self) -> int:
        """Updates waiting for more chunks."""
        return self._reassembler.pending

    def _count_expired(self, keys: list) -> int:
        for key in keys:
            self._reject(Reject.INCOMPLETE, f"round {key.round_idx} still incomplete after timeout",
                         f"{key.sender}/{key.branch_key}")
        return len(keys)

    def _reject(self, reason: Reject, detail: str, where: str) -> None:
        self.rejections[reason] += 1
        level = logging.DEBUG if reason is Reject.DUPLICATE else logging.WARNING
        log.log(level, "update rejected (%s) on %s: %s", reason.value, where, detail)

    def _feed(self, topic: str, data: bytes) -> Update | None:
        header, piece = wire.decode_message(data, self.hmac_key, self.max_message_bytes)
        if header.fleet != self.fleet:
            raise RejectedError(Reject.WRONG_FLEET, f"fleet {header.fleet!r}, ours is {self.fleet!r}")
        info = topics.parse_topic(topic)
        if (info is None or info.kind != "update" or info.fleet != header.fleet
                or info.agent != header.sender or info.branch_key != header.branch_key):
            raise RejectedError(Reject.TOPIC_MISMATCH,
                                f"header {header.sender}/{header.branch_key} on topic {topic!r}")
        expected = self.expected(header.branch_key)
        if expected is None:
            raise RejectedError(Reject.UNKNOWN_BRANCH, f"branch {header.branch_key!r} is not held here")
        signature, n_elements = expected
        if header.signature != signature:
            raise RejectedError(Reject.WRONG_SIGNATURE,
                                f"{header.branch_key}: signature {header.signature!r}, ours {signature!r}")
        if header.n_elements != n_elements:
            raise RejectedError(Reject.WRONG_SHAPE,
                                f"{header.branch_key}: {header.n_elements} elements, ours {n_elements}")
        if header.total_len > _MAX_BYTES_PER_ELEMENT * n_elements + 64:
            raise RejectedError(Reject.OVERSIZED,
                                f"update of {header.total_len} bytes for {n_elements} elements")
        ref_key = (header.sender, header.branch_key)
        last_round = self._last_round.get(ref_key)
        if last_round is not None and header.round_idx < last_round:
            raise RejectedError(Reject.STALE, f"round {header.round_idx} < accepted round {last_round}")
        # Every identity field is part of the key: a chunk whose header disagrees with its
        # siblings lands in an entry of its own and the update never completes (then expires).
        update_key = _UpdateKey(header.sender, header.branch_key, header.round_idx, header.signature,
                                int(header.codec), header.ref_round, header.n_elements,
                                header.total_len, header.chunk_count, header.sha256)
        if update_key in self._delivered:
            raise RejectedError(Reject.DUPLICATE, f"round {header.round_idx} already delivered")
        assembled = self._reassembler.add(update_key, header.chunk_index, header.chunk_count,
                                          header.chunk_offset, header.total_len, piece, len(data))
        if assembled is None:
            return None
        payload, bytes_on_wire = assembled
        digest = wire.update_digest(header.fleet, header.sender, header.round_idx, header.branch_key,
                                    header.signature, header.codec, header.ref_round,
                                    header.n_elements, payload, header.keep_reference)
        if digest != header.sha256:
            raise RejectedError(Reject.BAD_SHA256, f"round {header.round_idx}: digest mismatch")
        try:
            decoded = codecs.decode(header.codec, payload, n_elements)
        except (CodecError, ValueError) as exc:
            raise RejectedError(Reject.DECODE_FAILED, str(exc)) from None
        if not np.isfinite(decoded).all():
            raise RejectedError(Reject.NON_FINITE, f"round {header.round_idx}: NaN or inf values")
        held = self._references.get(ref_key)
        if header.is_delta:
            if held is None or held.round_idx != header.ref_round:
                self._keyframe_wanted.add(ref_key)
                have = "nothing" if held is None else f"round {held.round_idx}"
                raise RejectedError(Reject.NO_REFERENCE,
                                    f"delta against round {header.ref_round}, holding {have}")
            vector = held.vector + decoded
            if not np.isfinite(vector).all():
                raise RejectedError(Reject.NON_FINITE, "delta overflows the reference")
        else:
            vector = decoded
        if header.keep_reference:
            self._references[ref_key] = _Reference(vector, header.round_idx)
            vector = vector.copy()  # the caller may modify its copy; ours must stay intact
        else:  # the sender does not difference-code (any more): hold nothing for it
            self._references.pop(ref_key, None)
        self._last_round[ref_key] = header.round_idx
        self._keyframe_wanted.discard(ref_key)
        self._delivered[update_key] = None
        while len(self._delivered) > _RECENT_UPDATES:
            self._delivered.popitem(last=False)
        self.accepted += 1
        return Update(header.sender, header.round_idx, header.branch_key, header.signature,
                      vector, bytes_on_wire, header.codec.name.lower(), not header.is_delta)


class KeyframeRequest(NamedTuple):
    """Ask `target` to send its next update of `branch_key` as a keyframe."""

    requester: str
    target: str
    branch_key: str


def encode_keyframe_request(request: KeyframeRequest) -> bytes:
    """JSON for the fleet control topic."""
    return json.dumps({"type": "keyframe_request", **request._asdict()}).encode()


def parse_keyframe_request(payload: bytes) -> KeyframeRequest | None:
    """The request in a control message, or None if it is something else or malformed."""
    try:
        doc = json.loads(payload)
        if not isinstance(doc, dict) or doc.get("type") != "keyframe_request":
            return None
        fields = (doc["requester"], doc["target"], doc["branch_key"])
    except (ValueError, KeyError, TypeError):
        return None
    if not all(isinstance(f, str) and f for f in fields):
        return None
    return KeyframeRequest(*fields)
