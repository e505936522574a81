"""What every energy backend shares: the sensor interface, its errors, and guarded sysfs reads.

A backend finds a sensor (`open()`), or says why it cannot (`status()`). A sensor is read either as
instantaneous power in watts (`PowerSensor`) or as a cumulative energy in joules (`EnergySensor`,
e.g. RAPL counters, whose wrap-around the sensor itself handles). A read that fails, is not a
number, or is physically implausible raises `SensorError`: never a silently wrong figure.
"""

from __future__ import annotations

import math
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

# A board draws well under this; anything above is a misread register or a unit mix-up (the
# largest sbc-reviews machine, a Thelio Astra server, peaks at 440 W).
MAX_PLAUSIBLE_W = 1000.0

_INT_RE = re.compile(r"[+-]?\d+")

# Runs argv, returns its standard output; raises OSError (command missing or failed).
CommandRunner = Callable[[Sequence[str]], str]


class SensorError(Exception):
    """A sensor could not be read, or returned something that is not a plausible reading."""


@dataclass(frozen=True)
class BackendStatus:
    """Whether an energy backend can measure on this machine, and why not.

    Attributes
    ----------
    name : str
        Backend name: hwmon, jetson, pmic, i2c or rapl.
    available : bool
        True when a sensor was found and read once.
    detail : str
        The sensor used (when available) or the reason it cannot be used.
    """

    name: str
    available: bool
    detail: str


@runtime_checkable
class PowerSensor(Protocol):
    """A sensor read as instantaneous power."""

    label: str  # what was read, for the source string: "ina3221:VDD_IN"

    def power_w(self) -> float:
        """Board power now, in watts; raises SensorError."""
        ...


@runtime_checkable
class EnergySensor(Protocol):
    """A sensor read as a cumulative energy counter."""

    label: str

    def energy_j(self) -> float:
        """Joules since the sensor was opened (wrap-arounds accounted); raises SensorError."""
        ...


Sensor = PowerSensor | EnergySensor


class Backend(Protocol):
    """An energy backend: finds a sensor on this machine."""

    name: str

    def open(self) -> Sensor:
        """Open the sensor and read it once; raises SensorError saying why there is none."""
        ...


def backend_status(backend: Backend) -> BackendStatus:
    """`backend.open()` turned into a status (never raises).

    An available backend's detail is its sensor label, followed by the backend's `scope` note
    when it has one (what the figure leaves out, e.g. RAPL's "CPU package only").
    """
    try:
        sensor = backend.open()
    except SensorError as exc:
        return BackendStatus(backend.name, False, str(exc))
    scope = getattr(backend, "scope", "")
    return BackendStatus(backend.name, True, f"{sensor.label} ({scope})" if scope else sensor.label)


def read_text(path: Path) -> str:
    """Read a sysfs/procfs file's text, stripped (device-tree strings lose their trailing NUL).

    Raises
    ------
    SensorError
        The file is missing or unreadable (permission, -ENODATA from a disabled channel, ...).
    """
    try:
        return path.read_text(errors="replace").strip().rstrip("\x00")
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise SensorError(f"cannot read {path}: {reason}") from None


def read_int(path: Path) -> int:
    """Read a sysfs file holding one integer (hwmon, powercap, thermal, cpufreq attributes).

    Raises
    ------
    SensorError
        Unreadable, or anything but one decimal integer (garbage, "nan", empty).
    """
    text = read_text(path)
    if not _INT_RE.fullmatch(text):
        raise SensorError(f"{path}: expected an integer, got {text[:40]!r}")
    return int(text)


def checked_power_w(value_w: float, what: str) -> float:
    """`value_w` if it is a plausible board power, else SensorError naming `what`."""
    if not math.isfinite(value_w) or value_w < 0 or value_w > MAX_PLAUSIBLE_W:
        raise SensorError(f"{what}: implausible power {value_w!r} W")
    return value_w


def run_command(argv: Sequence[str], timeout_s: float = 5.0) -> str:
    """Run a command and return its standard output.

    Raises
    ------
    OSError
        The command is missing, timed out or exited non-zero (the message says which).
    """
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s,
                              check=False)
    except subprocess.TimeoutExpired:
        raise OSError(f"{argv[0]}: no answer within {timeout_s:g} s") from None
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip().splitlines()
        raise OSError(f"{' '.join(argv)}: exit {done.returncode}"
                      + (f": {message[0][:120]}" if message else ""))
    return done.stdout
