"""Chunking of encoded updates into bounded messages, and reassembly that tolerates QoS 1 reality.

Reassembly accepts duplicates (ignored), any arrival order and interleaved updates (each update has
its own key), and drops updates still incomplete after `timeout_s`, counting them.

Hostile input is bounded (issue 14, kind 2: 14,000 forged first chunks once left 5,556 updates
pending, +238 MiB, and every message scanned all of them): pending updates are capped per sender
and in total, their buffers by a byte budget, and the oldest is evicted (and reported) to make room.
Pending updates are kept in arrival order, so expiry looks only at the oldest ones: O(1) per
message amortised, whatever is pending.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from broker.rejects import Reject, RejectedError

MAX_MESSAGE_BYTES = 256 * 1024
K = TypeVar("K", bound=Hashable)


def split_payload(payload: bytes, max_chunk_bytes: int) -> list[tuple[int, memoryview]]:
    """(offset, piece) pairs covering `payload`, each piece at most `max_chunk_bytes` long.

    Pieces are views into `payload` (no copy). An empty payload still yields one (empty) chunk so
    that every update is at least one message.

    Raises
    ------
    ValueError
        When `max_chunk_bytes` < 1.
    """
    if max_chunk_bytes < 1:
        raise ValueError(f"max_chunk_bytes: expected >= 1, got {max_chunk_bytes}")
    view = memoryview(payload)
    if not payload:
        return [(0, view)]
    return [(offset, view[offset:offset + max_chunk_bytes])
            for offset in range(0, len(payload), max_chunk_bytes)]


@dataclass(frozen=True)
class ReassemblyLimits:
    """Bounds on incomplete updates held by one receiver.

    Parameters
    ----------
    timeout_s : float
        An update still incomplete this long after its first chunk is dropped (`incomplete`).
    max_pending_bytes : int
        Budget for the buffers of all pending updates (each reserves its whole length).
    max_pending_per_sender : int
        Pending updates one sender may have; its oldest is evicted beyond that.
    max_pending_total : int
        Pending updates of all senders together; the oldest is evicted beyond that.
    """

    timeout_s: float = 30.0
    max_pending_bytes: int = 128 * 1024 * 1024
    max_pending_per_sender: int = 16
    max_pending_total: int = 64

    def __post_init__(self) -> None:
        """Raise ValueError naming the first limit that is not positive."""
        if not self.timeout_s > 0:  # also refuses NaN
            raise ValueError(f"timeout_s: expected > 0, got {self.timeout_s}")
        for name in ("max_pending_bytes", "max_pending_per_sender", "max_pending_total"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")


@dataclass
class _Pending:
    owner: Hashable
    chunk_count: int
    total_len: int
    first_seen_s: float
    buffer: bytearray
    spans: dict[int, tuple[int, int]] = field(default_factory=dict)  # index -> (offset, length)
    wire_bytes: int = 0


class Reassembler(Generic[K]):
    """Collects chunks per update key until complete, within `ReassemblyLimits`.

    Updates evicted to make room are reported through `take_evicted()`, expired ones by
    `expire()`, so that the caller can count them by reason.
    """

    def __init__(self, limits: ReassemblyLimits | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits or ReassemblyLimits()
        self.clock = clock
        self.expired_count = 0
        self.evicted_count = 0
        self._pending: OrderedDict[K, _Pending] = OrderedDict()  # oldest first
        self._by_owner: dict[Hashable, OrderedDict[K, None]] = {}
        self._held_bytes = 0
        self._evicted: list[K] = []

    @property
    def pending(self) -> int:
        """Updates with some but not all chunks."""
        return len(self._pending)

    @property
    def held_bytes(self) -> int:
        """Bytes reserved by the buffers of pending updates."""
        return self._held_bytes

    def add(self, key: K, chunk_index: int, chunk_count: int, chunk_offset: int,
            total_len: int, piece: bytes | memoryview, wire_bytes: int,
            owner: Hashable = None) -> tuple[bytes | memoryview | bytearray, int] | None:
        """Add one chunk; return (whole payload, wire bytes of all its chunks) when complete.

        Chunks are copied into one buffer as they arrive, so the completed payload is a writable
        bytearray that decoders can use in place. A new update may evict the oldest pending one
        (of `owner`, the sender, or of anyone) to stay within the limits.

        Raises
        ------
        RejectedError
            `malformed` when the chunk contradicts earlier chunks of the same update, `oversized`
            when the update alone exceeds the byte budget.
        """
        if chunk_offset + len(piece) > total_len:
            raise RejectedError(Reject.MALFORMED, "chunk extends beyond its update")
        if chunk_count == 1:
            if chunk_offset != 0 or len(piece) != total_len:
                raise RejectedError(Reject.MALFORMED, "single chunk does not cover its update")
            return piece, wire_bytes
        entry = self._pending.get(key)
        if entry is None:
            entry = self._open(key, owner, chunk_count, total_len)
        elif entry.chunk_count != chunk_count or entry.total_len != total_len:
            raise RejectedError(Reject.MALFORMED,
                                f"chunk says {chunk_count} chunks/{total_len} bytes, earlier "
                                f"chunks said {entry.chunk_count}/{entry.total_len}")
        if chunk_index in entry.spans:
            return None  # QoS 1 duplicate
        entry.buffer[chunk_offset:chunk_offset + len(piece)] = piece
        entry.spans[chunk_index] = (chunk_offset, len(piece))
        entry.wire_bytes += wire_bytes
        if len(entry.spans) < entry.chunk_count:
            return None
        self._drop(key)
        expected_offset = 0
        for index in range(entry.chunk_count):
            offset, length = entry.spans[index]
            if offset != expected_offset:
                raise RejectedError(Reject.MALFORMED, f"chunk at offset {offset}, expected {expected_offset}")
            expected_offset += length
        if expected_offset != entry.total_len:
            raise RejectedError(Reject.MALFORMED, f"chunks hold {expected_offset} of {entry.total_len} bytes")
        return entry.buffer, entry.wire_bytes

    def _open(self, key: K, owner: Hashable, chunk_count: int, total_len: int) -> _Pending:
        limits = self.limits
        if total_len > limits.max_pending_bytes:
            raise RejectedError(Reject.OVERSIZED, f"update of {total_len} bytes > reassembly budget "
                                                  f"{limits.max_pending_bytes}")
        mine = self._by_owner.get(owner)
        if mine is not None and len(mine) >= limits.max_pending_per_sender:
            self._evict(next(iter(mine)))
        while (len(self._pending) >= limits.max_pending_total
               or self._held_bytes + total_len > limits.max_pending_bytes):
            self._evict(next(iter(self._pending)))
        # The buffer is reserved whole: chunks are written in place, and the budget above is
        # what bounds the memory forged first chunks can claim.
        entry = _Pending(owner, chunk_count, total_len, self.clock(), bytearray(total_len))
        self._pending[key] = entry
        self._by_owner.setdefault(owner, OrderedDict())[key] = None
        self._held_bytes += total_len
        return entry

    def expire(self, now_s: float | None = None) -> list[K]:
        """Drop updates older than the timeout; return their keys (counted in `expired_count`).

        Only the oldest entries are looked at: arrival order is first-seen order.
        """
        now_s = self.clock() if now_s is None else now_s
        stale = []
        while self._pending:
            key, entry = next(iter(self._pending.items()))
            if now_s - entry.first_seen_s < self.limits.timeout_s:
                break
            self._drop(key)
            stale.append(key)
        self.expired_count += len(stale)
        return stale

    def take_evicted(self) -> list[K]:
        """Keys of updates evicted since the last call (to make room for newer ones)."""
        evicted, self._evicted = self._evicted, []
        return evicted

    def _evict(self, key: K) -> None:
        self._drop(key)
        self.evicted_count += 1
        self._evicted.append(key)

    def _drop(self, key: K) -> None:
        entry = self._pending.pop(key)
        mine = self._by_owner[entry.owner]
        del mine[key]
        if not mine:
            del self._by_owner[entry.owner]
        self._held_bytes -= entry.total_len
