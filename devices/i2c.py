"""INA219 / INA260 read over I2C from user space, for boards where no kernel driver is bound.

The kernel's ina2xx driver (devices.hwmon) is the preferred path; this one serves a breakout board
wired to a Pi's I2C pins without a device-tree overlay. Bus access goes through smbus2 (optional
extra ``parse-edge[i2c]``): pure Python, no dependencies, typed, maintained, and it talks to
/dev/i2c-N directly. The Adafruit CircuitPython drivers would need Blinka, its board detection
and a GPIO library per board, for the same three register reads done here.

Registers are read, never written: the chips' power-on configuration converts continuously, and
leaving it alone cannot disturb another user of the chip. Each register is a big-endian 16-bit
word, read as a 2-byte I2C block so no byte swap is involved.

- INA219 (TI SBOS448): 0x00 configuration (bits 12-11: PGA range 40/80/160/320 mV), 0x01 shunt
  voltage (two's complement, 10 uV/LSB), 0x02 bus voltage (bits 15-3, 4 mV/LSB). Without a
  calibration write the current register is empty, so power = V_bus x V_shunt / R_shunt.
- INA260 (TI SBOSA69), 2 mOhm shunt inside: 0x01 current (two's complement, 1.25 mA/LSB), 0x02 bus
  voltage (1.25 mV/LSB), 0xFE manufacturer ID 0x5449 ("TI").
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from devices.sensors import SensorError, checked_power_w

ENV_VAR = "PARSE_EDGE_I2C_POWER"  # e.g. "ina260@1:0x40" or "ina219@1:0x41:0.1"
CHIPS = ("ina219", "ina260")
INA219_PGA_LIMIT_MV = (40, 80, 160, 320)  # configuration bits 12-11 (datasheet table 4)
INA260_MANUFACTURER_ID = 0x5449

_SPEC_RE = re.compile(r"(?P<chip>[a-z0-9]+)@(?P<bus>\d+):(?P<addr>0x[0-9a-fA-F]+|\d+)"
                      r"(?::(?P<shunt>[0-9.eE+-]+))?")


class I2cSpecError(ValueError):
    """An I2C sensor spec that does not parse; the message says what was expected."""


@dataclass(frozen=True)
class I2cSensorSpec:
    """Which chip sits where: `chip` on /dev/i2c-`bus` at `address`, with its shunt in ohms."""

    chip: str
    bus: int
    address: int
    shunt_ohm: float = 0.1  # the R100 on common INA219 breakouts; ignored for the INA260


def parse_i2c_spec(text: str) -> I2cSensorSpec:
    """Parse ``chip@bus:address[:shunt_ohm]``, e.g. "ina260@1:0x40" or "ina219@1:0x41:0.05".

    Raises
    ------
    I2cSpecError
        Unknown chip, an address outside 0x40-0x4F (both chips' range), or a shunt that is not
        a positive finite number of ohms.
    """
    m = _SPEC_RE.fullmatch(text.strip())
    expected = "expected chip@bus:address[:shunt_ohm] such as ina260@1:0x40"
    if m is None:
        raise I2cSpecError(f"i2c sensor {text!r}: {expected}")
    if m["chip"] not in CHIPS:
        raise I2cSpecError(f"i2c sensor {text!r}: chip: expected one of {', '.join(CHIPS)}")
    address = int(m["addr"], 0)
    if not 0x40 <= address <= 0x4F:
        raise I2cSpecError(f"i2c sensor {text!r}: address: expected 0x40..0x4f")
    shunt = 0.1
    if m["shunt"] is not None:
        try:
            shunt = float(m["shunt"])
        except ValueError:
            shunt = math.nan
        if not (math.isfinite(shunt) and 0 < shunt <= 10):
            raise I2cSpecError(f"i2c sensor {text!r}: shunt_ohm: expected 0 < ohms <= 10")
    return I2cSensorSpec(m["chip"], int(m["bus"]), address, shunt)


def i2c_spec_from_env() -> I2cSensorSpec | None:
    """Return the sensor named by the PARSE_EDGE_I2C_POWER environment variable, if set."""
    text = os.environ.get(ENV_VAR, "").strip()
    return parse_i2c_spec(text) if text else None


def word(data: Sequence[int]) -> int:
    """Assemble a 16-bit register value from its two bytes as they arrive (MSB first)."""
    if len(data) != 2 or not all(0 <= b <= 0xFF for b in data):
        raise SensorError(f"expected two register bytes, got {list(data)!r}")
    return data[0] << 8 | data[1]


def signed(value: int) -> int:
    """Interpret a 16-bit register value as two's complement."""
    return value - 0x10000 if value & 0x8000 else value


def ina219_power_w(config: int, shunt: int, bus: int, shunt_ohm: float) -> float:
    """INA219 power in watts from its configuration, shunt- and bus-voltage registers.

    Raises
    ------
    SensorError
        The shunt reading sits at the configured PGA limit (saturated: the true current is
        larger than what can be computed), or the result is implausible.
    """
    limit_mv = INA219_PGA_LIMIT_MV[(config >> 11) & 0b11]
    shunt_mv = signed(shunt) * 0.01  # 10 uV per LSB
    if abs(shunt_mv) >= limit_mv:
        raise SensorError(f"ina219: shunt voltage {shunt_mv:.2f} mV saturates the "
                          f"+/-{limit_mv} mV range")
    bus_v = (bus >> 3) * 0.004  # bits 15-3, 4 mV per LSB
    return checked_power_w(bus_v * shunt_mv / 1e3 / shunt_ohm, "ina219")


def ina260_power_w(current: int, bus: int) -> float:
    """INA260 power in watts from its current and bus-voltage registers."""
    return checked_power_w(signed(current) * 1.25e-3 * bus * 1.25e-3, "ina260")


class I2cBus(Protocol):
    """The slice of smbus2.SMBus used here."""

    def read_i2c_block_data(self, i2c_addr: int, register: int, length: int,
                            force: bool | None = None) -> list[int]:
        """Read `length` bytes starting at `register`."""
        ...


def open_smbus(bus: int) -> I2cBus:
    """/dev/i2c-`bus` through smbus2; SensorError when smbus2 or the device is missing."""
    try:
        from smbus2 import SMBus
    except ImportError:
        raise SensorError("smbus2 is not installed (pip install 'parse-edge[i2c]')") from None
    try:
        return SMBus(bus)
    except OSError as exc:
        raise SensorError(f"cannot open /dev/i2c-{bus}: {exc.strerror or exc} (enable I2C, "
                          "e.g. dtparam=i2c_arm=on on a Raspberry Pi)") from None


class I2cPowerSensor:
    """Instantaneous power of an INA219/INA260 read over I2C."""

    def __init__(self, spec: I2cSensorSpec, bus: I2cBus) -> None:
        self.spec = spec
        self.bus = bus
        self.label = f"{spec.chip}@{spec.bus}:0x{spec.address:02x}"

    def _register(self, register: int) -> int:
        try:
            return word(self.bus.read_i2c_block_data(self.spec.address, register, 2))
        except OSError as exc:
            raise SensorError(f"{self.label}: register 0x{register:02x}: "
                              f"{exc.strerror or exc}") from None

    def check_identity(self) -> None:
        """INA260 only: the manufacturer ID register must read 0x5449."""
        if self.spec.chip == "ina260" and self._register(0xFE) != INA260_MANUFACTURER_ID:
            raise SensorError(f"{self.label}: no INA260 there (manufacturer ID is not 0x5449)")

    def power_w(self) -> float:
        """Power now, in watts; raises SensorError."""
        if self.spec.chip == "ina260":
            return ina260_power_w(self._register(0x01), self._register(0x02))
        return ina219_power_w(self._register(0x00), self._register(0x01),
                              self._register(0x02), self.spec.shunt_ohm)


class I2cBackend:
    """An INA219/INA260 named by `spec` (default: the PARSE_EDGE_I2C_POWER variable)."""

    name = "i2c"

    def __init__(self, spec: I2cSensorSpec | None = None,
                 bus_factory: Callable[[int], I2cBus] = open_smbus) -> None:
        self.spec = spec
        self.bus_factory = bus_factory

    def open(self) -> I2cPowerSensor:
        """Open the sensor, check its identity, read it once; SensorError says why not."""
        if self.spec is None:
            raise SensorError(f"no I2C sensor configured (set {ENV_VAR}=ina260@1:0x40)")
        sensor = I2cPowerSensor(self.spec, self.bus_factory(self.spec.bus))
        sensor.check_identity()
        sensor.power_w()
        return sensor
