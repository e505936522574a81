"""A background thread that turns a sensor into a running energy integral.

Power sensors are integrated with the trapezoid rule on a monotonic clock; energy-counter sensors
(RAPL) are polled so that a counter wraps at most once between two reads. A read that fails is
bridged by the next good one (the trapezoid spans the gap); `max_failures` failures in a row mean
the sensor is lost: the sampler stops and says why, and the meter falls back to the estimate.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from devices.sensors import EnergySensor, PowerSensor, Sensor, SensorError


class EnergySampler:
    """Running energy of `sensor` in joules since `start()`.

    Parameters
    ----------
    sensor : PowerSensor or EnergySensor
        What to read.
    interval_s : float
        Seconds between background reads.
    clock : callable
        Monotonic seconds (tests pass a controlled clock and call `sample()` themselves).
    max_failures : int
        Consecutive failed reads after which the sensor counts as lost.
    """

    def __init__(self, sensor: Sensor, interval_s: float = 0.5,
                 clock: Callable[[], float] = time.monotonic, max_failures: int = 3) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s: expected a positive number, got {interval_s!r}")
        self.sensor = sensor
        self.interval_s = interval_s
        self.clock = clock
        self.max_failures = max_failures
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._energy_j = 0.0
        self._last_t = 0.0
        self._last_w = 0.0
        self._counter0_j = 0.0
        self._failures = 0
        self.lost_reason: str | None = None

    def start(self, t0: float | None = None) -> EnergySampler:
        """Take the first reading now (raises SensorError) and begin background sampling.

        `t0` is the clock time the integral starts from (default: now); a meter passes its own
        start so that measured energy and its wall time cover the same span.
        """
        with self._lock:
            self._last_t = self.clock() if t0 is None else t0
            if isinstance(self.sensor, PowerSensor):
                self._last_w = self.sensor.power_w()
            else:
                self._counter0_j = self.sensor.energy_j()
            self._energy_j = 0.0
        self._thread = threading.Thread(target=self._run, name="energy-sampler", daemon=True)
        self._thread.start()
        return self

    def _read_locked(self) -> None:
        now = self.clock()
        if isinstance(self.sensor, PowerSensor):
            watts = self.sensor.power_w()
            self._energy_j += (now - self._last_t) * (self._last_w + watts) / 2
            self._last_w = watts
        else:
            counter: EnergySensor = self.sensor
            self._energy_j = counter.energy_j() - self._counter0_j
        self._last_t = now

    def sample(self) -> None:
        """One reading now; counts a failure, or marks the sensor lost after too many."""
        with self._lock:
            if self.lost_reason is not None:
                return
            try:
                self._read_locked()
                self._failures = 0
            except SensorError as exc:
                self._failures += 1
                if self._failures >= self.max_failures:
                    self.lost_reason = str(exc)
                    self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def energy_j(self) -> tuple[float, str | None]:
        """(joules up to a reading taken now, reason the sensor was lost or None).

        Once lost, the joules stop at the last good reading.
        """
        self.sample()
        with self._lock:
            return self._energy_j, self.lost_reason

    def close(self) -> None:
        """Stop the background thread (idempotent)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
