"""Trial impairments applied by the agent itself: a transport wrapper that delays and drops.

It delays and drops outgoing updates (the `delay` and `loss` faults of a fleet config).

These are application-level stand-ins: the update never reaches the network. The virtual field
(real namespaces, `tc` and `nftables`) impairs the link instead.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable

import numpy as np

from edge.config.schema import FleetConfig
from edge.learning.gossip import Plan
from edge.learning.transport import Received, Transport


class ImpairedTransport:
    """Wraps a transport: publishes wait `delay_ms`, branch updates drop at `loss_percent`.

    Each branch update is dropped with probability `loss_percent` / 100 (seeded, so a trial is
    repeatable).
    """

    def __init__(self, inner: Transport, delay_ms: float, loss_percent: float, seed: str) -> None:
        self.inner = inner
        self.delay_ms = delay_ms
        self.loss_percent = loss_percent
        self.updates_dropped = 0
        self._rng = random.Random(seed)

    @classmethod
    def for_agent(cls, inner: Transport, cfg: FleetConfig, agent_id: str) -> ImpairedTransport:
        """Build the impairments the config's faults give `agent_id` (none: a pass-through)."""
        delay_ms = sum(f.delay_ms for f in cfg.faults if f.kind == "delay" and agent_id in f.agents)
        loss = max([f.loss_percent for f in cfg.faults if f.kind == "loss" and agent_id in f.agents],
                   default=0.0)
        return cls(inner, delay_ms, loss, f"{cfg.training.seed}/{agent_id}/loss")

    def begin_round(self, round_idx: int) -> None:
        """Unimpaired."""
        self.inner.begin_round(round_idx)

    def publish(self, round_idx: int, outbox: dict[str, np.ndarray]) -> None:
        """Delay, drop some branches, pass the rest on."""
        if self.delay_ms:
            time.sleep(self.delay_ms / 1000)
        kept = {}
        for key, vector in outbox.items():
            if self.loss_percent and self._rng.random() * 100 < self.loss_percent:
                self.updates_dropped += 1
            else:
                kept[key] = vector
        self.inner.publish(round_idx, kept)

    def collect(self, round_idx: int, plan: Plan, wait: bool) -> Received:
        """Unimpaired: faults act on what this agent sends."""
        return self.inner.collect(round_idx, plan, wait)

    def public_copies(self, keys: Iterable[str]) -> dict[str, np.ndarray]:
        """Unimpaired."""
        return self.inner.public_copies(keys)

    def wire_bytes(self) -> tuple[int, int]:
        """Unimpaired."""
        return self.inner.wire_bytes()
