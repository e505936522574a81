"""Chunking of encoded updates into bounded messages, and reassembly that tolerates QoS 1 reality.

Reassembly accepts duplicates (ignored), any arrival order and interleaved updates (each update has
its own key), and drops updates still incomplete after `timeout_s`, counting them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from broker.rejects import Reject, RejectedError

MAX_MESSAGE_BYTES = 256 * 1024


def split_payload(payload: bytes, max_chunk_bytes: int) -> list[tuple[int, memoryview]]:
    """(offset, piece) pairs covering `payload`, each piece at most `max_chunk_bytes` long.

    Pieces are views into `payload` (no copy). An empty payload still yields one (empty) chunk so
    that every update is at least one message.
    """
    if max_chunk_bytes < 1:
        raise ValueError(f"max_chunk_bytes: expected >= 1, got {max_chunk_bytes}")
    view = memoryview(payload)
    if not payload:
        return [(0, view)]
    return [(offset, view[offset:offset + max_chunk_bytes])
            for offset in range(0, len(payload), max_chunk_bytes)]


@dataclass
class _Pending:
    chunk_count: int
    total_len: int
    first_seen_s: float
    buffer: bytearray
    spans: dict[int, tuple[int, int]] = field(default_factory=dict)  # index -> (offset, length)
    wire_bytes: int = 0


class Reassembler:
    """Collects chunks per update key until complete."""

    def __init__(self, timeout_s: float = 30.0, max_pending_bytes: int = 512 * 1024 * 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout_s = timeout_s
        self.max_pending_bytes = max_pending_bytes
        self.clock = clock
        self.expired_count = 0
        self._pending: dict[Hashable, _Pending] = {}
        self._held_bytes = 0

    @property
    def pending(self) -> int:
        """Updates with some but not all chunks."""
        return len(self._pending)

    def add(self, key: Hashable, chunk_index: int, chunk_count: int, chunk_offset: int,
            total_len: int, piece: bytes | memoryview,
            wire_bytes: int) -> tuple[bytes | memoryview | bytearray, int] | None:
        """Add one chunk; return (whole payload, wire bytes of all its chunks) when complete.

        Chunks are copied into one buffer as they arrive, so the completed payload is a writable
        bytearray that decoders can use in place. Raises RejectedError when the chunk contradicts
        earlier chunks of the same update or the pending-bytes budget is exhausted.
        """
        if chunk_offset + len(piece) > total_len:
            raise RejectedError(Reject.MALFORMED, "chunk extends beyond its update")
        if chunk_count == 1:
            if chunk_offset != 0 or len(piece) != total_len:
                raise RejectedError(Reject.MALFORMED, "single chunk does not cover its update")
            return piece, wire_bytes
        entry = self._pending.get(key)
        if entry is None:
            if self._held_bytes + total_len > self.max_pending_bytes:
                raise RejectedError(Reject.OVERSIZED,
                                    f"reassembly buffer full ({self._held_bytes} bytes pending)")
            entry = _Pending(chunk_count, total_len, self.clock(), bytearray(total_len))
            self._pending[key] = entry
            self._held_bytes += total_len
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

    def expire(self, now_s: float | None = None) -> list[Hashable]:
        """Drop updates older than the timeout; return their keys (counted in `expired_count`)."""
        now_s = self.clock() if now_s is None else now_s
        stale = [k for k, e in self._pending.items() if now_s - e.first_seen_s >= self.timeout_s]
        for key in stale:
            self._drop(key)
        self.expired_count += len(stale)
        return stale

    def _drop(self, key: Hashable) -> None:
        entry = self._pending.pop(key)
        self._held_bytes -= entry.total_len
