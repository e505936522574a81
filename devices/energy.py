"""EnergyMeter: a run's energy, measured where a sensor exists, else estimated, always broken down.

Usage on the edge side::

    meter = EnergyMeter("rpi5", mode="auto").start()
    if checkpoint_totals:                      # what a previous process stored
        meter.resume_from(checkpoint_totals)
    ...
    b = meter.read(usage, bytes_sent=sent, bytes_received=received)   # each round
    row.update(energy_j=b.energy_j, idle_j=b.idle_j, attributable_j=b.attributable_j,
               energy_source=b.source)
    checkpoint["energy"] = b.to_dict()         # carried across a restart
    meter.close()

`read` takes this process's counters since `start()` (CPU seconds from the caller's
ResourceMeter, or this process's own CPU time when `usage` is None; bytes from the transport);
totals passed to `resume_from` are added to every figure it returns.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Any

from devices.backends import SAMPLE_INTERVAL_S, detect_backends, make_backends
from devices.estimate import EnergyBreakdown, estimate_parts, join_sources
from devices.i2c import I2cSensorSpec
from devices.meters import ResourceUsage
from devices.probe import host_profile as detect_host_profile
from devices.profiles import DEFAULT_PROFILE, DeviceProfile, get_profile
from devices.sampler import EnergySampler
from devices.sensors import Backend, CommandRunner, Sensor, SensorError, run_command

log = logging.getLogger(__name__)


class EnergyMode(str, Enum):
    """How an EnergyMeter picks its source."""

    AUTO = "auto"  # a sensor when one reads, else the estimate
    MEASURED = "measured"  # a sensor is required (EnergyUnavailable otherwise)
    ESTIMATED = "estimated"  # always the estimate (e.g. many simulated boards on one host)


class EnergyUnavailable(ValueError):
    """Mode "measured" on a machine where no backend can measure; one line naming each reason."""


class EnergyMeter:
    """Energy of a run on one board: measured by the first backend that reads, else estimated.

    Parameters
    ----------
    profile : str or DeviceProfile
        The board this agent is (or simulates).
    mode : EnergyMode or str
        auto, measured or estimated.
    host_profile : str, DeviceProfile or None
        The machine whose CPU seconds are counted, for scaling to the board. Default: the probe's
        answer for this machine (recognised board, x86 reference on x86-64), else the board.
    backends : list, optional
        Backends to try, in order (default: devices.backends.make_backends(sys_root, ...)).
    sys_root, runner, i2c
        Passed to make_backends when `backends` is not given.
    sample_interval_s : float, optional
        Sampler period (default per backend, devices.backends.SAMPLE_INTERVAL_S).
    max_failures : int
        Consecutive failed sensor reads after which the sensor counts as lost.
    clock, cpu_clock : callable
        Monotonic wall seconds and this process's CPU seconds (injectable for tests).

    Raises
    ------
    EnergyUnavailable
        Mode "measured" and no backend opens.
    """

    def __init__(self, profile: DeviceProfile | str = DEFAULT_PROFILE, *,
                 mode: EnergyMode | str = EnergyMode.AUTO,
                 host_profile: DeviceProfile | str | None = None,
                 backends: list[Backend] | None = None, sys_root: str | Path = "/sys",
                 runner: CommandRunner = run_command, i2c: I2cSensorSpec | None = None,
                 sample_interval_s: float | None = None, max_failures: int = 3,
                 clock: Callable[[], float] = time.monotonic,
                 cpu_clock: Callable[[], float] = time.process_time) -> None:
        self.profile = profile if isinstance(profile, DeviceProfile) else get_profile(profile)
        self.mode = EnergyMode(mode)
        if isinstance(host_profile, str):
            host_profile = get_profile(host_profile)
        self.host = host_profile or detect_host_profile() or self.profile
        self.clock = clock
        self.cpu_clock = cpu_clock
        self.backend_name: str | None = None
        self._sensor: Sensor | None = None
        self._interval_s = sample_interval_s
        self._max_failures = max_failures
        if self.mode is not EnergyMode.ESTIMATED:
            tried = backends if backends is not None else make_backends(sys_root, runner=runner,
                                                                        i2c=i2c)
            self._open_first(tried)
        self._prior: EnergyBreakdown | None = None
        self._sampler: EnergySampler | None = None
        self._t0 = self._cpu0 = 0.0
        self._last_measured_j = self._last_estimate_j = 0.0
        self._fallback: tuple[float, float, str] | None = None
        self._started = self._running = False

    def _open_first(self, backends: list[Backend]) -> None:
        for backend in backends:
            try:
                self._sensor = backend.open()
            except SensorError:
                continue
            self.backend_name = backend.name
            return
        if self.mode is EnergyMode.MEASURED:
            reasons = "; ".join(f"{s.name}: {s.detail}" for s in detect_backends(backends))
            raise EnergyUnavailable(f"--energy measured: no power sensor can be read here "
                                    f"({reasons})")

    @property
    def measured_source(self) -> str | None:
        """``measured:<backend>:<sensor>`` of the sensor in use, or None."""
        if self._sensor is None or self.backend_name is None:
            return None
        return f"measured:{self.backend_name}:{self._sensor.label}"

    @property
    def estimated_source(self) -> str:
        """``estimated:<profile>``."""
        return f"estimated:{self.profile.name}"

    @property
    def source(self) -> str:
        """Where the current energy figure comes from (see EnergyBreakdown.source)."""
        measured = self.measured_source
        if measured is None:
            now = self.estimated_source
        elif self._fallback is not None:
            now = join_sources(measured, self.estimated_source)
        else:
            now = measured
        return join_sources(self._prior.source, now) if self._prior else now

    def start(self) -> EnergyMeter:
        """Begin the interval now (a sensor that fails its first reading falls back at once)."""
        self.close()
        self._t0, self._cpu0 = self.clock(), self.cpu_clock()
        self._last_measured_j = self._last_estimate_j = 0.0
        self._fallback = None
        self._started = self._running = True
        if self._sensor is not None and self.backend_name is not None:
            interval = self._interval_s or SAMPLE_INTERVAL_S.get(self.backend_name, 1.0)
            sampler = EnergySampler(self._sensor, interval, clock=self.clock,
                                    max_failures=self._max_failures)
            try:
                self._sampler = sampler.start(self._t0)
            except SensorError as exc:
                self._fall_back(str(exc))
        return self

    def resume_from(self, totals: Mapping[str, Any]) -> EnergyMeter:
        """Carry the totals a previous process stored (`EnergyBreakdown.to_dict()`) into this run.

        Every later figure includes them, and the restart count goes up by one.

        Raises
        ------
        devices.estimate.EnergyTotalsError
            `totals` is not a valid breakdown (the message names the field).
        """
        prior = EnergyBreakdown.from_dict(totals)
        self._prior = replace(prior, restarts=prior.restarts + 1)
        return self

    def _fall_back(self, reason: str) -> None:
        elapsed_s = self.clock() - self._t0
        self._fallback = (self._last_measured_j, self._last_estimate_j, reason)
        log.warning("energy: %s lost after %.1f s (%s); the %s estimate continues from the "
                    "last reading", self.measured_source, elapsed_s, reason, self.profile.name)
        if self._sampler is not None:
            self._sampler.close()
            self._sampler = None

    def read(self, usage: ResourceUsage | None = None, bytes_sent: int = 0,
             bytes_received: int = 0) -> EnergyBreakdown:
        """Energy since `start()` (plus resumed totals); repeatable, the meter keeps running.

        Parameters
        ----------
        usage : ResourceUsage, optional
            This process's usage since start (its `cpu_s` is used); None: this process's CPU
            time since `start()`.
        bytes_sent, bytes_received : int
            Bytes on the wire since start.

        Raises
        ------
        ValueError
            Negative or non-finite counters.
        RuntimeError
            Called before `start()`, or after `close()` on a measuring meter.
        """
        if not self._started or (not self._running and self._sensor is not None):
            raise RuntimeError("EnergyMeter.read: call start() first (or again after close())")
        measured_j, lost = self._sampler.energy_j() if self._sampler is not None else (0.0, None)
        wall_s = self.clock() - self._t0  # after the sensor read: the wall spans it
        cpu_s = usage.cpu_s if usage is not None else self.cpu_clock() - self._cpu0
        parts = estimate_parts(self.profile, self.host, wall_s=max(wall_s, 0.0),
                               cpu_s=max(cpu_s, 0.0), bytes_sent=bytes_sent,
                               bytes_received=bytes_received)
        if self._sampler is not None:
            if lost is None:
                self._last_measured_j, self._last_estimate_j = measured_j, parts.total_j
            else:
                self._fall_back(lost)
        if self._fallback is not None:
            measured_j, estimate_at_loss_j, _ = self._fallback
            energy_j = measured_j + max(parts.total_j - estimate_at_loss_j, 0.0)
        elif self._sampler is not None:
            energy_j = self._last_measured_j
        else:
            energy_j = parts.total_j
        now = EnergyBreakdown(
            energy_j=energy_j, idle_j=parts.idle_j, compute_j=parts.compute_j,
            radio_j=parts.radio_j, source=self.source, breakdown_source=self.estimated_source,
            wall_s=wall_s, cpu_s=cpu_s, board_cpu_s=parts.board_cpu_s, bytes_sent=bytes_sent,
            bytes_received=bytes_received, host_profile=self.host.name,
            fallback_reason=self._fallback[2] if self._fallback else None)
        return _add(self._prior, now) if self._prior else now

    def stop(self, usage: ResourceUsage | None = None, bytes_sent: int = 0,
             bytes_received: int = 0) -> EnergyBreakdown:
        """Read, as `read` does (the meter keeps running until `close`)."""
        return self.read(usage, bytes_sent, bytes_received)

    def close(self) -> None:
        """Stop background sampling; only an estimating meter can still be read afterwards."""
        self._running = False
        if self._sampler is not None:
            self._sampler.close()
            self._sampler = None


def _add(prior: EnergyBreakdown, now: EnergyBreakdown) -> EnergyBreakdown:
    """`now` on top of the totals of earlier runs."""
    return EnergyBreakdown(
        energy_j=prior.energy_j + now.energy_j, idle_j=prior.idle_j + now.idle_j,
        compute_j=prior.compute_j + now.compute_j, radio_j=prior.radio_j + now.radio_j,
        source=now.source, breakdown_source=join_sources(prior.breakdown_source,
                                                         now.breakdown_source),
        wall_s=prior.wall_s + now.wall_s, cpu_s=prior.cpu_s + now.cpu_s,
        board_cpu_s=prior.board_cpu_s + now.board_cpu_s,
        bytes_sent=prior.bytes_sent + now.bytes_sent,
        bytes_received=prior.bytes_received + now.bytes_received,
        host_profile=join_sources(prior.host_profile, now.host_profile),
        restarts=prior.restarts, fallback_reason=now.fallback_reason or prior.fallback_reason)
