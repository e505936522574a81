"""The `byzantine` trial fault: an agent that sends scaled, sign-flipped or noisy parameters.

A transport wrapper, like edge.net.impaired: the agent trains honestly, but from round
`fault.round` on every branch it publishes is corrupted before encoding, so its neighbours
receive a well-formed, correctly hashed (and, with a key, signed) update of absurd values — the
issue 14 attack that no wire check can see. The simulator wraps its in-memory transport the same
way, so `parse-edge simulate` measures what such a neighbour costs each mixing rule.

The attacker's own mixing uses its true branch (its public copies are withheld): only what it
sends is hostile, and its own accuracy is not what the fault measures.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import numpy as np

from edge.config.schema import FaultConfig, FleetConfig
from edge.learning.gossip import Plan
from edge.learning.transport import Received, Transport

ByzantineMode = Literal["scale", "sign-flip", "noise"]
# Scale factors when the fault gives none: 5 x the parameters passes a norm gate of ratio 10
# (comm.max_norm_ratio) and still drags plain gossip away; sign-flip sends -x.
DEFAULT_SCALE = {"scale": 5.0, "sign-flip": 1.0, "noise": 1.0}


def corrupt(vector: np.ndarray, mode: ByzantineMode, scale: float, noise_std: float,
            rng: np.random.Generator) -> np.ndarray:
    """Corrupt a branch `vector` (flat float32, shape (n,)) as a byzantine agent sends it.

    Parameters
    ----------
    vector : numpy.ndarray
        The honest branch x.
    mode : str
        "scale": scale * x; "sign-flip": -scale * x; "noise": x + noise_std * rms(x) * N(0, 1)
        per coordinate (noise relative to the branch's own scale).
    scale, noise_std : float
        The attack's strength.
    rng : numpy.random.Generator
        Noise source (seeded per agent: a trial is repeatable).

    Returns
    -------
    numpy.ndarray
        float32, shape (n,); finite for finite inputs (clipped to the float32 range).
    """
    x = vector.astype(np.float64)
    if mode == "scale":
        out = scale * x
    elif mode == "sign-flip":
        out = -scale * x
    else:
        rms = float(np.sqrt(np.mean(x * x))) if x.size else 0.0
        out = x + noise_std * rms * rng.standard_normal(x.shape)
    limit = float(np.finfo(np.float32).max)
    return np.clip(out, -limit, limit).astype(np.float32)


class ByzantineTransport:
    """Wraps a transport: publishes corrupted branches from round `from_round` on.

    With `fault` None it is a pass-through (an honest agent).
    """

    def __init__(self, inner: Transport, fault: FaultConfig | None, seed: str) -> None:
        self.inner = inner
        self.fault = fault
        self.mode: ByzantineMode = fault.mode if fault else "scale"
        self.scale = (fault.scale if fault and fault.scale is not None
                      else DEFAULT_SCALE[self.mode])
        self.updates_corrupted = 0
        self._rng = np.random.default_rng(list(seed.encode()))

    @classmethod
    def for_agent(cls, inner: Transport, cfg: FleetConfig, agent_id: str) -> ByzantineTransport:
        """Wrap `inner` with the byzantine fault the config gives `agent_id` (the first), if any."""
        fault = next((f for f in cfg.faults if f.kind == "byzantine" and agent_id in f.agents),
                     None)
        return cls(inner, fault, f"{cfg.training.seed}/{agent_id}/byzantine")

    def active(self, round_idx: int) -> bool:
        """Whether the agent lies in round `round_idx`."""
        return self.fault is not None and round_idx >= self.fault.round

    def begin_round(self, round_idx: int) -> None:
        """Pass the round on, where the inner transport announces rounds (a networked agent)."""
        begin = getattr(self.inner, "begin_round", None)
        if begin is not None:
            begin(round_idx)

    def publish(self, round_idx: int, outbox: dict[str, np.ndarray]) -> None:
        """Corrupt every branch (once active), then publish through the inner transport."""
        if self.fault is not None and self.active(round_idx):
            outbox = {k: corrupt(v, self.mode, self.scale, self.fault.noise_std, self._rng)
                      for k, v in outbox.items()}
            self.updates_corrupted += len(outbox)
        self.inner.publish(round_idx, outbox)

    def collect(self, round_idx: int, plan: Plan, wait: bool) -> Received:
        """Unchanged: the attacker receives honestly."""
        return self.inner.collect(round_idx, plan, wait)

    def public_copies(self, keys: Iterable[str]) -> dict[str, np.ndarray]:
        """Withheld for an attacker: it mixes against its true branch, not the lie."""
        return {} if self.fault is not None else self.inner.public_copies(keys)

    def wire_bytes(self) -> tuple[int, int]:
        """Unchanged."""
        return self.inner.wire_bytes()
