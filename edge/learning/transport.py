"""How branches travel between agents: the `Transport` protocol, codec set-up, in-memory transport.

The round loop talks to a `Transport`; every transport shares the codec set-up; the simulator
uses the in-memory one.

The networked agent's transport (MQTT) lives in edge.net.mqtt_transport; trial impairments
(delay, loss) wrap either in edge.net.impaired. Whatever the transport, an update passes through the
same `UpdateSender` (broker.sender), so what a neighbour mixes is our branch *as it decodes it*:
the simulator predicts the networked accuracy for every codec.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import numpy as np

from broker.codec_spec import codec_spec
from broker.keys import NO_RUN, KeyRing
from broker.sender import UpdateSender
from edge.config.schema import FleetConfig
from edge.learning.gossip import Plan

# branch key -> {neighbour: its public copy, flat float32}
Received = dict[str, dict[str, np.ndarray]]


class Transport(Protocol):
    """What the round loop (edge.learning.rounds) needs from whatever carries branch updates."""

    def begin_round(self, round_idx: int) -> None:
        """Enter round `round_idx` (a networked agent announces it in its status)."""

    def collect(self, round_idx: int, plan: Plan, wait: bool) -> Received:
        """Neighbours' updates of `round_idx` for every planned branch.

        With `wait`, wait (up to the transport's deadline) for neighbours that are expected to
        send; late or absent ones are simply missing from the result.
        """

    def publish(self, round_idx: int, outbox: dict[str, np.ndarray]) -> None:
        """Send this round's branches (branch key -> flat float32 vector) to the neighbours."""

    def public_copies(self, keys: Iterable[str]) -> dict[str, np.ndarray]:
        """Our branches as the neighbours decoded them (absent before our first publish)."""

    def wire_bytes(self) -> tuple[int, int]:
        """(sent, received) bytes so far: running totals of this agent."""


def update_sender(cfg: FleetConfig, agent_id: str, keys: KeyRing | None = None,
                  run_id: bytes = NO_RUN, epoch: int = 0) -> UpdateSender:
    """Build an agent's encoder for its branch updates, as the config's `comm` section says.

    `keys` (edge.config.secrets.fleet_keys) sign every message; `run_id` and `epoch` go in
    every header (broker.wire). The simulator passes none of them.
    """
    comm = cfg.comm
    spec = codec_spec(comm.codec, comm.topk_fraction, comm.difference_coding, comm.error_feedback,
                      keyframe_codec=comm.keyframe_codec)
    return UpdateSender(cfg.fleet, agent_id, spec, keyframe_every=comm.keyframe_every,
                        hmac_key=keys, chunk_bytes=comm.chunk_kib * 1024, run_id=run_id,
                        epoch=epoch)


class InMemoryBus:
    """Every update published in a simulation: (round, sender) -> branch key -> (copy, bytes)."""

    def __init__(self) -> None:
        self.published: dict[tuple[int, str], dict[str, tuple[np.ndarray, int]]] = {}

    def post(self, round_idx: int, sender: str, key: str, public_copy: np.ndarray,
             encoded_bytes: int) -> None:
        """Store what `sender` published for `key` in round `round_idx`."""
        self.published.setdefault((round_idx, sender), {})[key] = (public_copy, encoded_bytes)

    def copies(self, round_idx: int, sender: str) -> dict[str, np.ndarray]:
        """Return what `sender` published in round `round_idx` (branch key -> public copy)."""
        return {k: v for k, (v, _) in self.published.get((round_idx, sender), {}).items()}

    def forget_before(self, round_idx: int) -> None:
        """Drop rounds nobody will collect again (memory stays one round deep)."""
        for key in [k for k in self.published if k[0] < round_idx]:
            del self.published[key]


class InMemoryTransport:
    """One agent's view of an `InMemoryBus`.

    Publishing encodes through the agent's real codec state and posts the public copy; collecting
    never waits (agents step in lock-step).
    """

    def __init__(self, bus: InMemoryBus, sender: UpdateSender, signatures: dict[str, str]) -> None:
        self.bus = bus
        self.sender = sender
        self.signatures = signatures  # branch key -> signature, as announced to neighbours
        self.bytes_sent = 0
        self.bytes_received = 0

    def begin_round(self, round_idx: int) -> None:
        """Nothing to announce: the simulator steps every agent in lock-step."""

    def collect(self, round_idx: int, plan: Plan, wait: bool) -> Received:
        """Every planned neighbour's update of `round_idx` that was published."""
        received: Received = {}
        for key, weights in plan.items():
            got = received.setdefault(key, {})
            for j in weights:
                entry = self.bus.published.get((round_idx, j), {}).get(key)
                if j != self.sender.sender and entry is not None:
                    got[j] = entry[0]
                    self.bytes_received += entry[1]
        return received

    def publish(self, round_idx: int, outbox: dict[str, np.ndarray]) -> None:
        """Encode every branch (codec state advances as on the wire) and post its public copy."""
        for key, vector in outbox.items():
            messages = self.sender.encode(round_idx, key, self.signatures[key], vector)
            size = sum(len(payload) for _, payload in messages)
            self.bytes_sent += size
            copy = self.sender.public_copy(key)
            assert copy is not None  # encode() always leaves a public copy
            self.bus.post(round_idx, self.sender.sender, key, copy, size)

    def public_copies(self, keys: Iterable[str]) -> dict[str, np.ndarray]:
        """Our branches as the neighbours decoded them."""
        copies = {key: self.sender.public_copy(key) for key in keys}
        return {key: copy for key, copy in copies.items() if copy is not None}

    def wire_bytes(self) -> tuple[int, int]:
        """(sent, received) encoded update bytes (our wire format, header included)."""
        return self.bytes_sent, self.bytes_received
