"""Raspberry Pi 5 PMIC rails read through the firmware: ``vcgencmd pmic_read_adc``.

The Pi 5's PMIC (Renesas DA9091) measures each output rail; the firmware prints one line per ADC
channel, current rails first, e.g.::

      VDD_CORE_A current(7)=0.56259000A
      VDD_CORE_V volt(15)=0.76798460V
         EXT5V_V volt(24)=5.14158000V

Board power here is the sum of current x voltage over the rails that have both (EXT5V and BATT
have a voltage only). That is what the PMIC delivers to the SoC, RAM, Wi-Fi, HDMI and 3V3/1V8
rails: it excludes the PMIC's own conversion losses and whatever USB devices draw from the 5 V
input, so it reads below a wall meter. Boards without the PMIC ADC answer
``error=1 error_msg="Command not registered"``.
"""

from __future__ import annotations

import re

from devices.sensors import CommandRunner, SensorError, checked_power_w, run_command

PMIC_COMMAND = ("vcgencmd", "pmic_read_adc")

_LINE_RE = re.compile(
    r"\s*(?P<rail>[A-Za-z0-9_]+)_(?P<suffix>[AV])\s+(?P<kind>current|volt)\(\d+\)="
    r"(?P<value>\d+(?:\.\d+)?)(?P<unit>[AV])\s*"
)


def parse_pmic_read_adc(text: str) -> dict[str, tuple[float, float]]:
    """Rails with both readings: name -> (amperes, volts).

    Raises
    ------
    SensorError
        An ``error=`` answer, any line not in the format above (a unit that does not match its
        kind included), a rail reported twice, or no rail with both current and voltage.
    """
    if text.lstrip().startswith("error="):
        raise SensorError(f"vcgencmd pmic_read_adc: {text.strip()[:120]} (no PMIC ADC here)")
    amps: dict[str, float] = {}
    volts: dict[str, float] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        m = _LINE_RE.fullmatch(line)
        kind_ok = m is not None and (
            (m["kind"], m["suffix"], m["unit"]) in {("current", "A", "A"), ("volt", "V", "V")})
        if m is None or not kind_ok:
            raise SensorError(f"vcgencmd pmic_read_adc: unexpected line {line.strip()[:80]!r}")
        table = amps if m["kind"] == "current" else volts
        if m["rail"] in table:
            raise SensorError(f"vcgencmd pmic_read_adc: rail {m['rail']} reported twice")
        table[m["rail"]] = float(m["value"])
    rails = {name: (amps[name], volts[name]) for name in amps if name in volts}
    if not rails:
        raise SensorError("vcgencmd pmic_read_adc: no rail with both current and voltage "
                          f"({len(amps)} currents, {len(volts)} voltages)")
    return rails


def pmic_power_w(text: str) -> float:
    """Sum rail power in watts from one ``pmic_read_adc`` answer; raises SensorError."""
    return checked_power_w(sum(a * v for a, v in parse_pmic_read_adc(text).values()),
                           "vcgencmd pmic_read_adc")


class PmicSensor:
    """Instantaneous PMIC rail power; each read runs the command once (~0.1 s on a Pi 5)."""

    label = "pmic_read_adc"

    def __init__(self, runner: CommandRunner) -> None:
        self.runner = runner

    def power_w(self) -> float:
        """Read the summed rail power now, in watts; raises SensorError."""
        try:
            text = self.runner(PMIC_COMMAND)
        except FileNotFoundError:
            raise SensorError("vcgencmd not found (Raspberry Pi OS tool)") from None
        except OSError as exc:
            raise SensorError(f"{' '.join(PMIC_COMMAND)}: {exc}") from None
        return pmic_power_w(text)


class PmicBackend:
    """The Pi 5 PMIC through `runner` (default: run vcgencmd; tests pass recorded output)."""

    name = "pmic"
    scope = "PMIC output rails: no conversion losses, no USB devices"
    sample_interval_s = 1.0  # a process per read: keep it to one a second

    def __init__(self, runner: CommandRunner = run_command) -> None:
        self.runner = runner

    def open(self) -> PmicSensor:
        """Open the sensor and read it once; SensorError says why there is none."""
        sensor = PmicSensor(self.runner)
        sensor.power_w()
        return sensor

