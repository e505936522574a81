"""The sending side of branch updates: codec state per branch, framing into bounded messages.

Per branch the sender keeps the copy x̂ its receivers hold (CHOCO difference coding): a delta
carries codec(x - x̂) and both sides then add its decoded value to x̂, so whatever the codec
dropped stays in x - x̂ and goes out in later deltas (error feedback). A keyframe (full update)
goes out first, every `keyframe_every` messages, after a signature change, and on
`request_keyframe`. With `error_feedback` off (`,noef`), deltas are taken between true vectors.

Every message carries the sender's run id and epoch and, with keys, an HMAC made with the sender's
key (broker.keys). Messages are at most `chunk_bytes` long; `limit_chunk_bytes` lowers that to what
the broker accepts (its MQTT 5 Maximum Packet Size, see `MqttClient.max_payload_bytes`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from broker import codecs, topics, wire
from broker.chunking import MAX_MESSAGE_BYTES, split_payload
from broker.codec_spec import CodecSpec, parse_codec_spec
from broker.codecs import CodecId
from broker.keys import NO_RUN, KeyRing, as_keyring, check_epoch, check_run_id

MIN_CHUNK_BYTES = 1024


@dataclass
class BranchStats:
    """Bytes one sender put on the wire for one branch."""

    messages: int = 0
    keyframes: int = 0
    deltas: int = 0
    header_bytes: int = 0
    payload_bytes: int = 0


@dataclass
class _SenderBranch:
    signature: str
    n_elements: int
    reference: np.ndarray | None = None
    previous: np.ndarray | None = None  # last true vector, used only without error feedback
    reference_round: int = -1
    public: np.ndarray | None = None  # what receivers decoded from the last message, in full
    deltas_since_keyframe: int = 0
    keyframe_requested: bool = False


class UpdateSender:
    """Encodes branch updates of one agent; keeps codec state per branch.

    Parameters
    ----------
    fleet, sender : str
        Fleet and agent id (topic levels).
    codec_spec : str or CodecSpec
        The codec (`broker.codec_spec.parse_codec_spec` syntax).
    keyframe_every : int
        A keyframe every this many messages of a branch (0: only when needed).
    hmac_key : KeyRing, bytes or None
        The key ring, or the fleet key (the sender's key is derived from it); None: unsigned.
    chunk_bytes : int
        Largest message, header included (1024..262144 bytes).
    run_id : bytes
        16 bytes naming the run; receivers holding another run id reject the messages.
    epoch : int
        The sender's restart count; receivers reject older epochs than the newest they saw.

    Raises
    ------
    ValueError
        On a bad name, codec, size, run id or epoch.
    """

    def __init__(self, fleet: str, sender: str, codec_spec: str | CodecSpec = "fp32",
                 keyframe_every: int = 10, hmac_key: KeyRing | bytes | None = None,
                 chunk_bytes: int = MAX_MESSAGE_BYTES, run_id: bytes = NO_RUN,
                 epoch: int = 0) -> None:
        self.fleet = topics.check_name("fleet", fleet)
        self.sender = topics.check_name("sender", sender)
        self.spec = parse_codec_spec(codec_spec) if isinstance(codec_spec, str) else codec_spec
        if keyframe_every < 0:
            raise ValueError(f"keyframe_every: expected >= 0 (0 = only when needed), got {keyframe_every}")
        if not MIN_CHUNK_BYTES <= chunk_bytes <= MAX_MESSAGE_BYTES:
            raise ValueError(f"chunk_bytes: expected {MIN_CHUNK_BYTES}..{MAX_MESSAGE_BYTES}, "
                             f"got {chunk_bytes}")
        self.keyframe_every = keyframe_every
        self.hmac_key = as_keyring(fleet, hmac_key).key_for(sender)
        self.chunk_bytes = chunk_bytes
        self.run_id = check_run_id(run_id)
        self.epoch = check_epoch(epoch)
        self.stats: dict[str, BranchStats] = {}
        self._branches: dict[str, _SenderBranch] = {}
        self._lock = threading.Lock()

    def limit_chunk_bytes(self, max_bytes: int) -> int:
        """Keep messages within `max_bytes` (e.g. the broker's packet limit); return the size now used.

        Raises
        ------
        ValueError
            When `max_bytes` < 1024: updates would need absurdly many chunks.
        """
        if max_bytes < MIN_CHUNK_BYTES:
            raise ValueError(f"max_bytes: the broker accepts {max_bytes}-byte messages; updates need "
                             f"at least {MIN_CHUNK_BYTES}")
        with self._lock:
            self.chunk_bytes = min(self.chunk_bytes, max_bytes)
            return self.chunk_bytes

    def set_run(self, run_id: bytes) -> None:
        """Stamp messages with `run_id` from now on (a run id learnt after start-up)."""
        with self._lock:
            self.run_id = check_run_id(run_id)

    def request_keyframe(self, branch_key: str | None = None) -> None:
        """Make the next message of `branch_key` (or of every branch) a keyframe."""
        with self._lock:
            for key, state in self._branches.items():
                if branch_key is None or key == branch_key:
                    state.keyframe_requested = True

    def public_copy(self, branch_key: str) -> np.ndarray | None:
        """Return the branch as receivers now hold it (None before the first message).

        This is the copy a CHOCO-style mix must take differences against, so that a lossy codec's
        lag cancels (Koloskova, Stich and Jaggi 2019, "Decentralized stochastic optimization and
        gossip algorithms with compressed communication").
        """
        with self._lock:
            state = self._branches.get(branch_key)
            return None if state is None or state.public is None else state.public.copy()

    def encode(self, round_idx: int, branch_key: str, signature: str,
               vector: np.ndarray) -> list[tuple[str, bytes]]:
        """Messages (topic, payload) carrying this round's update of `branch_key`, in chunk order.

        Raises
        ------
        ValueError
            When `vector` holds NaN or inf, or `round_idx` is outside 0..2**31-1.
        """
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
            payload = codecs.encode(codec, flat - base, block_size=self.spec.block_size,
                                    k_fraction=self.spec.k_fraction)
            state.reference += codecs.decode(codec, payload, flat.size)
            ref_round = state.reference_round
            state.deltas_since_keyframe += 1
        else:
            codec = self.spec.keyframe_codec if self.spec.difference else self.spec.codec
            payload = codecs.encode(codec, flat, block_size=self.spec.block_size,
                                    k_fraction=self.spec.k_fraction)
            if self.spec.difference:
                state.reference = codecs.decode(codec, payload, flat.size)
            ref_round = -1
            state.deltas_since_keyframe = 0
            state.keyframe_requested = False
        if not self.spec.error_feedback:
            state.previous = flat.copy()
        state.public = (state.reference.copy() if state.reference is not None
                        else codecs.decode(codec, payload, flat.size))
        state.reference_round = round_idx
        return codec, ref_round, payload

    def _frame(self, topic: str, round_idx: int, branch_key: str, signature: str, codec: CodecId,
               ref_round: int, n_elements: int, payload: bytes) -> list[tuple[str, bytes]]:
        keep = self.spec.difference
        template = wire.Header(self.fleet, self.sender, round_idx, branch_key, signature, codec,
                               ref_round, n_elements, len(payload), 0, 1, 0, len(payload), b"",
                               self.run_id, self.epoch, keep)
        template = template._replace(sha256=wire.update_digest(template, payload))
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
