"""The energy estimate as a breakdown, and the breakdown record every energy figure travels in.

The estimate of a board's energy over an interval (profile figures from devices.profiles):

- idle_j    = idle_w x wall_s: what the board draws doing nothing, for as long as the run lasts;
- compute_j = core_w x board_cpu_s, where board_cpu_s = cpu_s x host.cpu_speed_mips /
  board.cpu_speed_mips: the process's CPU seconds on the host that ran it, scaled to the board's
  slower (or faster) core, each busy core-second costing active_extra_w / cpu_cores;
- radio_j   = bytes_sent x J/B sent + bytes_received x J/B received.

``attributable_j = compute_j + radio_j`` is what the learning itself cost. It depends on CPU
seconds and bytes only, which other load on the host barely changes (a process's CPU time is
not stretched by waiting for a core), whereas idle_j grows with wall time and so with load and
run length. Compare runs on attributable_j.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from devices.profiles import DeviceProfile, cpu_scale


class EnergyTotalsError(ValueError):
    """Stored energy totals (from a checkpoint) that are not a valid breakdown."""


@dataclass(frozen=True)
class EstimateParts:
    """The three estimated terms, in joules, and the CPU seconds scaled to the board."""

    idle_j: float
    compute_j: float
    radio_j: float
    board_cpu_s: float

    @property
    def total_j(self) -> float:
        """Idle + compute + radio."""
        return self.idle_j + self.compute_j + self.radio_j


def estimate_parts(board: DeviceProfile, host: DeviceProfile, *, wall_s: float, cpu_s: float,
                   bytes_sent: int = 0, bytes_received: int = 0) -> EstimateParts:
    """Compute the estimate's terms for one interval (formulas in the module docstring).

    Parameters
    ----------
    board : DeviceProfile
        The board whose energy is estimated.
    host : DeviceProfile
        The machine whose CPU seconds `cpu_s` are (the board itself when running on it).
    wall_s, cpu_s : float
        Interval length and the process's CPU seconds (user + system) in it.
    bytes_sent, bytes_received : int
        Bytes on the wire in the interval.

    Raises
    ------
    ValueError
        A negative or non-finite quantity.
    """
    for name, value in (("wall_s", wall_s), ("cpu_s", cpu_s), ("bytes_sent", bytes_sent),
                        ("bytes_received", bytes_received)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name}: expected a non-negative finite number, got {value!r}")
    board_cpu_s = cpu_s * cpu_scale(host, board)
    return EstimateParts(
        idle_j=board.idle_w * wall_s,
        compute_j=board.core_w * board_cpu_s,
        radio_j=(bytes_sent * board.radio_j_per_byte_sent
                 + bytes_received * board.radio_j_per_byte_received),
        board_cpu_s=board_cpu_s,
    )


@dataclass(frozen=True)
class EnergyBreakdown:
    """Energy of a run so far, with its parts and where each figure comes from.

    Attributes
    ----------
    energy_j : float
        Board energy: measured by `source`'s sensor, or the estimate's idle + compute + radio.
        When a sensor was lost mid-run, measured up to the last reading before the loss and
        estimated after it (`source` then names both, `fallback_reason` says why).
    idle_j, compute_j, radio_j : float
        The estimate's terms (always from the profile, see `breakdown_source`); they add up to
        `energy_j` only when `source` is the estimate.
    source : str
        ``measured:<backend>:<sensor>``, ``estimated:<profile>``, or several joined by "+" when a
        run changed source (sensor lost, or resumed on another source).
    breakdown_source : str
        ``estimated:<profile>``: where idle/compute/radio come from.
    wall_s, cpu_s, board_cpu_s : float
        Wall seconds (monotonic clock), the process's CPU seconds on the host, and those CPU
        seconds scaled to the board.
    bytes_sent, bytes_received : int
        Bytes on the wire counted into radio_j.
    host_profile : str
        The profile the CPU seconds were taken on (the host reference for scaling).
    restarts : int
        How many times the totals were carried across a process restart.
    fallback_reason : str or None
        Why a measuring sensor was abandoned, if it was.
    """

    energy_j: float
    idle_j: float
    compute_j: float
    radio_j: float
    source: str
    breakdown_source: str
    wall_s: float
    cpu_s: float
    board_cpu_s: float
    bytes_sent: int
    bytes_received: int
    host_profile: str
    restarts: int = 0
    fallback_reason: str | None = None

    @property
    def attributable_j(self) -> float:
        """Compute + radio: the energy the learning itself cost, in joules."""
        return self.compute_j + self.radio_j

    @property
    def avg_power_w(self) -> float:
        """Mean board power over the run, in watts (0 for an empty interval)."""
        return self.energy_j / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, `attributable_j` included; `from_dict` reads it back."""
        return {**asdict(self), "attributable_j": self.attributable_j}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EnergyBreakdown:
        """Rebuild a breakdown from `to_dict` output (e.g. stored in a checkpoint).

        Raises
        ------
        EnergyTotalsError
            A missing field, a number that is negative or not finite, or a string field that
            is not a string; the message names the field.
        """
        if not isinstance(data, Mapping):
            raise EnergyTotalsError("energy totals: expected a mapping")
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                if f.name in {"restarts", "fallback_reason"}:
                    continue
                raise EnergyTotalsError(f"energy totals: {f.name}: missing")
            value = data[f.name]
            if f.name in {"source", "breakdown_source", "host_profile"}:
                ok = isinstance(value, str) and value != ""
                expected = "a non-empty string"
            elif f.name == "fallback_reason":
                ok = value is None or isinstance(value, str)
                expected = "a string or null"
            elif f.name in {"bytes_sent", "bytes_received", "restarts"}:
                ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
                expected = "a non-negative integer"
            else:
                ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
                      and math.isfinite(value) and value >= 0)
                expected = "a non-negative finite number"
            if not ok:
                raise EnergyTotalsError(f"energy totals: {f.name}: expected {expected}, "
                                        f"got {value!r}")
            values[f.name] = float(value) if expected.endswith("finite number") else value
        return cls(**values)


def join_sources(*sources: str) -> str:
    """Join sources with "+" in order of appearance, each once."""
    parts: list[str] = []
    for source in sources:
        for part in source.split("+"):
            if part and part not in parts:
                parts.append(part)
    return "+".join(parts)
