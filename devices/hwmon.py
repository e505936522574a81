"""Linux hwmon power monitors: the kernel's own INA2xx / INA238 / INA3221 drivers and ACPI meters.

Units follow Documentation/hwmon/sysfs-interface.rst: ``power*_input`` / ``power*_average`` in
microwatts, ``curr*_input`` in milliamperes, ``in*_input`` in millivolts. Channel layouts:

- ina2xx (INA219/220/226/230/231/260; Documentation/hwmon/ina2xx.rst): ``in0`` is the shunt drop,
  ``in1`` the bus voltage, ``curr1`` the current and ``power1`` their product -- read ``power1``.
- ina3221 (Documentation/hwmon/ina3221.rst): channels 1-3 give ``inN_input`` (bus mV) and
  ``currN_input`` (mA), labelled ``inN_label``; ``in4-6`` are shunt voltages in uV, ``in7`` and
  ``curr4`` sums -- never paired. A channel with ``inN_enable`` = 0 reads -ENODATA; it is skipped,
  as are channels labelled "NC" (not connected, Jetson AGX Orin).

When a rail is labelled as the board input (VDD_IN, POM_5V_IN: ends in "_IN") it alone is the
board power (the other rails are parts of it); otherwise the rails are summed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from devices.sensors import SensorError, checked_power_w, read_int, read_text

# hwmon `name` of chips that monitor a board's supply. ina2xx driver chips, ina238 driver chips,
# ina3221, and the ACPI 4.0 power meter (drivers/hwmon/acpi_power_meter.c, whole-system power).
BOARD_MONITORS = frozenset({
    "ina209", "ina219", "ina220", "ina226", "ina230", "ina231", "ina260", "sy24655",
    "ina237", "ina238", "ina3221", "power_meter",
})

# A rail may read a few mW below zero from the shunt amplifier's offset; more is a wrong reading.
_NEGATIVE_TOLERANCE_W = 0.05

_POWER_RE = re.compile(r"power(\d+)_(input|average)")
_CURR_RE = re.compile(r"curr(\d+)_input")


@dataclass(frozen=True)
class Rail:
    """One measured supply rail: its label and a reader returning watts (may raise SensorError)."""

    chip: str
    label: str
    read_w: Callable[[], float]

    def power_w(self) -> float:
        """Read the rail's power now, in watts (a small negative offset reads as zero)."""
        value = self.read_w()
        if value < 0 and value > -_NEGATIVE_TOLERANCE_W:
            return 0.0
        return checked_power_w(value, f"{self.chip}:{self.label}")


def _microwatts(path: Path) -> Callable[[], float]:
    return lambda: read_int(path) / 1e6


def _millivolt_milliamps(volt: Path, curr: Path) -> Callable[[], float]:
    return lambda: read_int(volt) * read_int(curr) / 1e6


def _label(directory: Path, stem: str, default: str) -> str:
    path = directory / f"{stem}_label"
    if not path.exists():
        return default
    try:
        return read_text(path) or default
    except SensorError:
        return default


def _enabled(directory: Path, index: str) -> bool:
    flag = directory / f"in{index}_enable"
    if not flag.exists():
        return True
    try:
        return read_int(flag) != 0
    except SensorError:
        return False


def hwmon_rails(directory: Path, chip: str) -> list[Rail]:
    """List the power rails of one hwmon chip directory (layouts in the module docstring)."""
    names = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
    power: dict[str, Path] = {}
    for name in names:
        m = _POWER_RE.fullmatch(name)
        if m and (m.group(2) == "input" or m.group(1) not in power):
            power[m.group(1)] = directory / name
    rails: list[Rail] = []
    if power:
        for index, path in sorted(power.items()):
            rails.append(Rail(chip, _label(directory, f"power{index}", f"power{index}"),
                              _microwatts(path)))
        return rails
    for name in names:
        m = _CURR_RE.fullmatch(name)
        if not m:
            continue
        index = m.group(1)
        volt = directory / f"in{index}_input"
        if chip == "ina3221" and index not in {"1", "2", "3"}:
            continue  # curr4 is the sum of channels; in4.. are shunt voltages
        if not volt.exists() or not _enabled(directory, index):
            continue
        label = _label(directory, f"in{index}", f"in{index}")
        if label.upper() == "NC":
            continue
        rails.append(Rail(chip, label, _millivolt_milliamps(volt, directory / name)))
    return rails


def board_rails(rails: Sequence[Rail]) -> list[Rail]:
    """Pick the rails that make up board power: the labelled input rail(s), else all."""
    inputs = [r for r in rails if r.label.upper().endswith("_IN")]
    return inputs or list(rails)


def rails_label(rails: Sequence[Rail]) -> str:
    """Name rails compactly: "ina3221:VDD_IN" or "ina3221:VDD_GPU_SOC,VDD_CPU_CV".

    Commas, because "+" joins whole sources (devices.estimate.join_sources).
    """
    chips = {r.chip for r in rails}
    if len(chips) == 1:
        return f"{rails[0].chip}:" + ",".join(r.label for r in rails)
    return ",".join(f"{r.chip}:{r.label}" for r in rails)


class RailSensor:
    """A power sensor summing rails; every read checks each rail."""

    def __init__(self, rails: Sequence[Rail]) -> None:
        if not rails:
            raise SensorError("no rails")
        self.rails = list(rails)
        self.label = rails_label(self.rails)

    def power_w(self) -> float:
        """Sum of the rails now, in watts; raises SensorError if any rail fails."""
        return checked_power_w(sum(r.power_w() for r in self.rails), self.label)


def open_rails(rails: Sequence[Rail], where: str) -> RailSensor:
    """Open a RailSensor over the board rails and read it once; SensorError when none reads."""
    chosen = board_rails(rails)
    if not chosen:
        raise SensorError(f"no power rails under {where}")
    sensor = RailSensor(chosen)
    sensor.power_w()
    return sensor


class HwmonBackend:
    """Board power from ``<sys_root>/class/hwmon/hwmon*`` chips listed in `chips`.

    Parameters
    ----------
    sys_root : path
        The sysfs mount (tests pass a recorded tree).
    chips : iterable of str
        hwmon names accepted as board power monitors; others (GPU, VR rails) are listed by
        `candidates()` but never summed into board power.
    """

    name = "hwmon"

    def __init__(self, sys_root: str | Path = "/sys", chips: Iterable[str] = BOARD_MONITORS) -> None:
        self.root = Path(sys_root) / "class" / "hwmon"
        self.chips = frozenset(chips)

    def _chips(self) -> list[tuple[Path, str]]:
        found = []
        for directory in sorted(self.root.glob("hwmon*")):
            try:
                found.append((directory, read_text(directory / "name")))
            except SensorError:
                continue
        return found

    def candidates(self) -> list[str]:
        """List every chip with a power reading, for `parse-edge devices`.

        E.g. ["ina219 (hwmon2)", "amdgpu (hwmon4, not a board monitor)"].
        """
        out = []
        for directory, chip in self._chips():
            if hwmon_rails(directory, chip):
                note = "" if chip in self.chips else ", not a board monitor"
                out.append(f"{chip} ({directory.name}{note})")
        return out

    def open(self) -> RailSensor:
        """Open the board-power sensor; SensorError says why there is none."""
        if not self.root.is_dir():
            raise SensorError(f"no {self.root}")
        rails = [rail for directory, chip in self._chips() if chip in self.chips
                 for rail in hwmon_rails(directory, chip)]
        if not rails:
            others = self.candidates()
            hint = f" (other power readings: {', '.join(others)})" if others else ""
            raise SensorError(f"no board power monitor under {self.root}{hint}")
        return open_rails(rails, str(self.root))
