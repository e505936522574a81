"""The receiving side of branch updates: verify, reassemble, decode, apply deltas to references.

`UpdateReceiver.feed` returns a verified, decoded `Update` holding the sender's full parameter
vector (deltas already applied to the right reference), or None. It never raises: every rejected
message is counted by `Reject` reason and logged with the reason.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from broker import codecs, topics, wire
from broker.chunking import MAX_MESSAGE_BYTES, Reassembler
from broker.codecs import CodecError
from broker.rejects import Reject, RejectedError

log = logging.getLogger(__name__)

# Bound on an encoded update of n elements over every codec and block size (int8 with block 1
# is 5n+4; topk at k=n with block 1 is at most 10n+8), so a forged total_len cannot reserve memory.
_MAX_BYTES_PER_ELEMENT = 10
_RECENT_UPDATES = 4096
_LOG_EVERY_S = 10.0


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
        self._last_warned: dict[tuple[Reject, str], float] = {}
        self._clock = clock
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
        # Every chunk of a bad update is rejected on its own; warn once per reason and topic per
        # `_LOG_EVERY_S` so a misconfigured neighbour does not flood the log (counters see all).
        now_s = self._clock()
        key = (reason, where)
        quiet = reason is Reject.DUPLICATE or now_s - self._last_warned.get(key, -1e18) < _LOG_EVERY_S
        if not quiet:
            self._last_warned[key] = now_s
        log.log(logging.DEBUG if quiet else logging.WARNING, "update rejected (%s) on %s: %s",
                reason.value, where, detail)

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
        # Every identity field is part of the key: a chunk whose header disagrees with its
        # siblings lands in an entry of its own and the update never completes (then expires).
        update_key = _UpdateKey(header.sender, header.branch_key, header.round_idx, header.signature,
                                int(header.codec), header.ref_round, header.n_elements,
                                header.total_len, header.chunk_count, header.sha256)
        if update_key in self._delivered:  # before the stale check: a late QoS 1 redelivery
            raise RejectedError(Reject.DUPLICATE, f"round {header.round_idx} already delivered")
        last_round = self._last_round.get(ref_key)
        if last_round is not None and header.round_idx < last_round:
            raise RejectedError(Reject.STALE, f"round {header.round_idx} < accepted round {last_round}")
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
