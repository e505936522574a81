"""The receiving side of branch updates: verify, reassemble, decode, apply deltas to references.

`UpdateReceiver.feed` returns a verified, decoded `Update` holding the sender's full parameter
vector (deltas already applied to the right reference), or None. It never raises: every rejected
message is counted by `Reject` reason and logged with the reason.

Beyond integrity (digest, HMAC with the sender's key) it refuses what is valid but unwanted:
retained messages (an update is live or nothing: a retained one is a leftover or a replay), other
runs, epochs older than the sender's newest (replays from before a restart), rounds older than the
last accepted from the sender in its epoch (`stale`), and rounds further ahead of our own round
than `round_window` (one forged round 4,000,000,000 would otherwise make every later genuine update
stale). Incomplete updates are bounded per sender and in total (broker.chunking).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np

from broker import codecs, topics, wire
from broker.chunking import MAX_MESSAGE_BYTES, Reassembler, ReassemblyLimits
from broker.codecs import CodecError
from broker.keys import KeyRing, as_keyring, check_run_id
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
    run_id: bytes
    epoch: int
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
    """Verifies, reassembles and decodes the updates one agent receives.

    Parameters
    ----------
    fleet : str
        Our fleet; updates of another are rejected.
    expected : callable
        branch key -> (signature, n_elements) of the branch as we hold it, or None.
    hmac_key : KeyRing, bytes or None
        Verification keys, or the fleet key they derive from; with keys, unsigned updates are
        rejected.
    reassembly_timeout_s : float
        How long an incomplete update may wait for its missing chunks.
    max_message_bytes : int
        Longest message accepted.
    clock : callable
        Monotonic seconds (tests pass a fake clock).
    run_id : bytes or None
        Accept only updates of this run (None: any run, until `set_run`).
    round_window : int or None
        Reject rounds more than this many ahead of our own round (`set_round`); None: no bound.
    limits : ReassemblyLimits or None
        Bounds on pending reassemblies (its `timeout_s` is replaced by `reassembly_timeout_s`).
    """

    def __init__(self, fleet: str, expected: Callable[[str], tuple[str, int] | None],
                 hmac_key: KeyRing | bytes | None = None, reassembly_timeout_s: float = 30.0,
                 max_message_bytes: int = MAX_MESSAGE_BYTES,
                 clock: Callable[[], float] = time.monotonic, *, run_id: bytes | None = None,
                 round_window: int | None = None, limits: ReassemblyLimits | None = None) -> None:
        self.fleet = topics.check_name("fleet", fleet)
        self.expected = expected
        self.keys = as_keyring(fleet, hmac_key)
        self.max_message_bytes = max_message_bytes
        if round_window is not None and round_window < 0:
            raise ValueError(f"round_window: expected >= 0 rounds, got {round_window}")
        self.round_window = round_window
        self.run_id = None if run_id is None else check_run_id(run_id)
        self.rejections: Counter[Reject] = Counter()
        self.accepted = 0
        self.internal_errors = 0  # bugs caught on the network thread (counted as malformed too)
        limits = replace(limits or ReassemblyLimits(), timeout_s=reassembly_timeout_s)
        self._reassembler: Reassembler[_UpdateKey] = Reassembler(limits, clock=clock)
        self._own_round = 0
        self._epochs: dict[str, int] = {}  # newest epoch accepted from each sender
        self._references: dict[tuple[str, str], _Reference] = {}
        self._last_round: dict[tuple[str, str], int] = {}
        self._delivered: OrderedDict[_UpdateKey, None] = OrderedDict()
        self._keyframe_wanted: set[tuple[str, str]] = set()
        self._last_warned: dict[tuple[Reject, str], float] = {}
        self._clock = clock
        self._lock = threading.Lock()

    def feed(self, topic: str, payload: bytes, retained: bool = False) -> Update | None:
        """One MQTT message in (with its retain flag); a complete verified update out, or None.

        Never raises: a rejected message is counted in `rejections` by reason.
        """
        with self._lock:
            try:
                self._count_expired(self._reassembler.expire())
                return self._feed(topic, payload, retained)
            except RejectedError as exc:
                self._reject(exc.reason, exc.detail, topic)
            except Exception as exc:  # a bug must not kill the network thread
                log.exception("update on %s: internal error", topic)
                self.internal_errors += 1
                self._reject(Reject.MALFORMED, f"internal error {exc!r}", topic)
            finally:
                for key in self._reassembler.take_evicted():
                    self._reject(Reject.EVICTED, f"round {key.round_idx} incomplete, evicted for a "
                                                 "newer update", f"{key.sender}/{key.branch_key}")
            return None

    def set_round(self, round_idx: int) -> None:
        """Our own round: updates more than `round_window` rounds ahead of it are rejected."""
        with self._lock:
            self._own_round = round_idx

    def set_run(self, run_id: bytes | None) -> None:
        """Accept only updates of `run_id` from now on (None: any run)."""
        with self._lock:
            self.run_id = None if run_id is None else check_run_id(run_id)

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

    def epoch(self, sender: str) -> int | None:
        """Newest epoch accepted from `sender`, or None."""
        return self._epochs.get(sender)

    def forget(self, sender: str) -> None:
        """Drop every reference held for `sender` (e.g. it went offline and will restart).

        Its newest epoch is kept: updates from before its restart stay rejected.
        """
        with self._lock:
            self._forget(sender)

    def _forget(self, sender: str) -> None:
        for key in [k for k in self._references if k[0] == sender]:
            del self._references[key]
        for key in [k for k in self._last_round if k[0] == sender]:
            del self._last_round[key]

    @property
    def pending(self) -> int:
        """Updates waiting for more chunks."""
        return self._reassembler.pending

    @property
    def pending_bytes(self) -> int:
        """Bytes reserved for updates waiting for more chunks."""
        return self._reassembler.held_bytes

    def _count_expired(self, keys: list[_UpdateKey]) -> int:
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
            if len(self._last_warned) >= _RECENT_UPDATES:  # bounded under a flood of topics
                self._last_warned.clear()
            self._last_warned[key] = now_s
        log.log(logging.DEBUG if quiet else logging.WARNING, "update rejected (%s) on %s: %s",
                reason.value, where, detail)

    def _check_header(self, topic: str, info: topics.TopicInfo | None, header: wire.Header) -> int:
        """Everything decidable from one chunk's header; returns our element count."""
        if header.fleet != self.fleet:
            raise RejectedError(Reject.WRONG_FLEET, f"fleet {header.fleet!r}, ours is {self.fleet!r}")
        if self.run_id is not None and header.run_id != self.run_id:
            raise RejectedError(Reject.OTHER_RUN, f"run {header.run_id.hex()}, ours {self.run_id.hex()}")
        if (info is None or info.kind != "update" or info.fleet != header.fleet
                or info.agent != header.sender or info.branch_key != header.branch_key):
            raise RejectedError(Reject.TOPIC_MISMATCH,
                                f"header {header.sender}/{header.branch_key} on topic {topic!r}")
        newest_epoch = self._epochs.get(header.sender)
        if newest_epoch is not None and header.epoch < newest_epoch:
            raise RejectedError(Reject.REPLAYED, f"epoch {header.epoch} < {header.sender}'s newest "
                                                 f"{newest_epoch} (from before a restart)")
        if self.round_window is not None and header.round_idx > self._own_round + self.round_window:
            raise RejectedError(Reject.OUT_OF_WINDOW,
                                f"round {header.round_idx} > our round {self._own_round} + window "
                                f"{self.round_window}")
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
        same_epoch = newest_epoch is None or header.epoch == newest_epoch
        last_round = self._last_round.get((header.sender, header.branch_key))
        if same_epoch and last_round is not None and header.round_idx < last_round:
            raise RejectedError(Reject.STALE, f"round {header.round_idx} < accepted round {last_round}")
        return n_elements

    def _feed(self, topic: str, data: bytes, retained: bool) -> Update | None:
        info = topics.parse_topic(topic)
        if info is not None and info.kind == "probe":
            return None  # an agent's publish probe (broker.probe), not an update: nothing to count
        if retained:
            raise RejectedError(Reject.RETAINED, "retained message on an update topic")
        header, piece = wire.decode_message(data, self.keys, self.max_message_bytes)
        # Every identity field is part of the key: a chunk whose header disagrees with its
        # siblings lands in an entry of its own and the update never completes (then expires).
        update_key = _UpdateKey(header.run_id, header.epoch, header.sender, header.branch_key,
                                header.round_idx, header.signature, int(header.codec),
                                header.ref_round, header.n_elements, header.total_len,
                                header.chunk_count, header.sha256)
        if update_key in self._delivered:  # before the stale check: a late QoS 1 redelivery
            raise RejectedError(Reject.DUPLICATE, f"round {header.round_idx} already delivered")
        n_elements = self._check_header(topic, info, header)
        assembled = self._reassembler.add(update_key, header.chunk_index, header.chunk_count,
                                          header.chunk_offset, header.total_len, piece, len(data),
                                          owner=header.sender)
        if assembled is None:
            return None
        payload, bytes_on_wire = assembled
        if wire.update_digest(header, payload) != header.sha256:
            raise RejectedError(Reject.BAD_SHA256, f"round {header.round_idx}: digest mismatch")
        try:
            decoded = codecs.decode(header.codec, payload, n_elements)
        except (CodecError, ValueError) as exc:
            raise RejectedError(Reject.DECODE_FAILED, str(exc)) from None
        if not np.isfinite(decoded).all():
            raise RejectedError(Reject.NON_FINITE, f"round {header.round_idx}: NaN or inf values")
        ref_key = (header.sender, header.branch_key)
        if header.epoch != self._epochs.get(header.sender, header.epoch):
            # The sender restarted (perhaps from an older checkpoint): nothing it sent before
            # applies any more, and its rounds may start again lower.
            self._forget(header.sender)
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
        self._epochs[header.sender] = header.epoch
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
