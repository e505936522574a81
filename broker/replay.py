"""Anti-replay windows over (epoch, sequence number), one per sender and message stream.

A sender numbers the messages of each stream (status, metrics, control, probe) 0, 1, 2, ... and
bumps its epoch at every restart (sequence numbers start again at 0). A receiver accepts a message
whose epoch is newer than any seen, or whose sequence number in the current epoch is new and at most
`size` behind the highest seen: the sliding-window check of IPsec (RFC 4303, section 3.4.3), which
lets a few messages arrive out of order (an MQTT last will is signed before the messages that
overtake it) while an old message, or one seen before, is rejected as `replayed`.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from broker.rejects import Reject

DEFAULT_WINDOW = 64


@dataclass
class _State:
    epoch: int
    highest: int
    seen: int  # bit i set: sequence number highest - i was accepted


class ReplayWindows:
    """Sliding anti-replay windows keyed by (sender, stream); bounded by `max_streams`.

    Parameters
    ----------
    size : int
        How far behind the highest sequence number a late message may be (1..1024).
    max_streams : int
        Windows kept; beyond that the least recently created is forgotten (an attacker cannot
        grow memory by inventing senders; a forgotten sender's next message starts a new window).
    """

    def __init__(self, size: int = DEFAULT_WINDOW, max_streams: int = 4096) -> None:
        if not 1 <= size <= 1024:
            raise ValueError(f"size: expected 1..1024, got {size}")
        self.size = size
        self.max_streams = max_streams
        self._states: dict[Hashable, _State] = {}

    def admit(self, stream: Hashable, epoch: int, seq: int) -> Reject | None:
        """Record (epoch, seq) of an authenticated message; None if new, else `Reject.REPLAYED`."""
        state = self._states.get(stream)
        if state is None or epoch > state.epoch:
            if state is None and len(self._states) >= self.max_streams:
                del self._states[next(iter(self._states))]
            self._states[stream] = _State(epoch, seq, 1)
            return None
        if epoch < state.epoch:
            return Reject.REPLAYED
        if seq > state.highest:
            shift = seq - state.highest
            state.seen = ((state.seen << shift) | 1) & ((1 << self.size) - 1) if shift < self.size else 1
            state.highest = seq
            return None
        behind = state.highest - seq
        if behind >= self.size or state.seen >> behind & 1:
            return Reject.REPLAYED
        state.seen |= 1 << behind
        return None

    def epoch(self, stream: Hashable) -> int | None:
        """Newest epoch seen on `stream`, or None."""
        state = self._states.get(stream)
        return None if state is None else state.epoch
