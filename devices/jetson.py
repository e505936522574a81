"""NVIDIA Jetson on-module INA3221 power monitors, in both sysfs layouts L4T has shipped.

- JetPack 4 / L4T R32 (Nano, TX2, Xavier): NVIDIA's ``ina3221x`` IIO driver,
  ``/sys/bus/i2c/drivers/ina3221x/<bus>-<addr>/iio:device<N>/`` with ``rail_name_<i>`` and
  ``in_power<i>_input`` (mW), or ``in_voltage<i>_input`` (mV) x ``in_current<i>_input`` (mA).
  The Nano's rails are POM_5V_IN (module input), POM_5V_GPU, POM_5V_CPU.
- JetPack 5-6 / L4T R35-R36 (Orin, Xavier on JP5): the upstream ``ina3221`` hwmon driver,
  ``/sys/bus/i2c/drivers/ina3221/<bus>-<addr>/hwmon/hwmon<N>/`` (see devices.hwmon). Orin Nano/NX:
  VDD_IN, VDD_CPU_GPU_CV, VDD_SOC; AGX Orin: VDD_GPU_SOC, VDD_CPU_CV, VIN_SYS_5V0 at 1-0040 and
  NC, VDDQ_VDD2_1V8AO, NC at 1-0041 (no input rail: summed).

The hwmon backend sees the JP5+ chips too (through /sys/class/hwmon) and is tried first; this
backend is what measures a JetPack 4 board. Rail choice follows devices.hwmon.board_rails, the
same rule as jetson_stats (jtop/core/power.py): VDD_IN / POM_5V_IN when present, else the sum.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from devices.hwmon import Rail, RailSensor, hwmon_rails, open_rails
from devices.sensors import SensorError, read_int, read_text

_RAIL_NAME_RE = re.compile(r"rail_name_(\d+)")


def _iio_reader(device: Path, index: str) -> Callable[[], float] | None:
    power = device / f"in_power{index}_input"
    if power.exists():
        return lambda: read_int(power) / 1e3
    volt, curr = device / f"in_voltage{index}_input", device / f"in_current{index}_input"
    if volt.exists() and curr.exists():
        return lambda: read_int(volt) * read_int(curr) / 1e6
    return None


def iio_rails(device: Path) -> list[Rail]:
    """Rails of one JetPack 4 ``iio:device`` directory."""
    rails = []
    for name_file in sorted(device.glob("rail_name_*")):
        m = _RAIL_NAME_RE.fullmatch(name_file.name)
        if not m:
            continue
        reader = _iio_reader(device, m.group(1))
        if reader is None:
            continue
        try:
            label = read_text(name_file) or f"rail{m.group(1)}"
        except SensorError:
            continue
        rails.append(Rail("ina3221x", label, reader))
    return rails


class JetsonBackend:
    """Board power from a Jetson module's INA3221 (either layout) under `sys_root`."""

    name = "jetson"

    def __init__(self, sys_root: str | Path = "/sys") -> None:
        self.root = Path(sys_root) / "bus" / "i2c" / "drivers"

    def rails(self) -> list[Rail]:
        """Every rail found, JetPack 4 IIO first, then JetPack 5+ hwmon."""
        rails: list[Rail] = []
        for device in sorted(self.root.glob("ina3221x/*/iio:device*")):
            rails.extend(iio_rails(device))
        for directory in sorted(self.root.glob("ina3221/*/hwmon/hwmon*")):
            rails.extend(hwmon_rails(directory, "ina3221"))
        return rails

    def open(self) -> RailSensor:
        """Open the board-power sensor; SensorError says why there is none."""
        rails = self.rails()
        if not rails:
            raise SensorError(f"no Jetson INA3221 under {self.root}/ina3221x or {self.root}/ina3221")
        return open_rails(rails, str(self.root))
