"""Board telemetry, one flat dict per sample: temperature, throttling, CPU clock, NIC counters, Wi-Fi.

Sources, all under a root directory so tests read recorded trees; a missing or unreadable source
leaves its fields out, it never raises:

- thermal zones, ``sys/class/thermal/thermal_zone*/{type,temp,trip_point_*_{temp,type}}``,
  millidegrees Celsius (Documentation/driver-api/thermal/sysfs-api.rst);
- cpufreq, ``sys/devices/system/cpu/cpu*/cpufreq/{scaling_cur_freq,scaling_max_freq,
  cpuinfo_max_freq}``, kHz (Documentation/cpu-freq/cpufreq-stats / user-guide);
- ``vcgencmd get_throttled`` on a Raspberry Pi: ``throttled=0x50005``, bits per the Raspberry Pi
  documentation ("vcgencmd" section): 0 under-voltage now, 1 ARM frequency capped now, 2 throttled
  now, 3 soft temperature limit now; bits 16-19 the same "has occurred since boot";
- ``proc/net/dev``: per-interface byte counters as the kernel counts them (IP-layer wire bytes,
  headers included, beside the MQTT-layer counters the transport keeps);
- ``proc/net/wireless``: link quality, signal and noise level (dBm) per Wi-Fi interface.
"""

from __future__ import annotations

import datetime
import logging
import re
import time
from pathlib import Path

from devices.sensors import CommandRunner, SensorError, read_int, read_text, run_command

log = logging.getLogger(__name__)

Telemetry = dict[str, float | int | str | bool]

# Zones that are not the SoC: the Jetson Nano's PMIC zone reads a fixed 100 C placeholder and
# thermal-fan-est is an estimate for fan control, not a sensor.
_NOT_SOC_RE = re.compile(r"pmic|fan", re.IGNORECASE)
_PLAUSIBLE_C = (-40.0, 150.0)  # unused Jetson zones read -256 C
THROTTLE_BITS = {0: "under_voltage", 1: "freq_capped", 2: "throttled", 3: "soft_temp_limit"}
_THROTTLED_RE = re.compile(r"throttled=0x([0-9a-fA-F]{1,8})")


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _zone_temps(root: Path) -> list[tuple[str, float, list[tuple[float, str]]]]:
    """(type, °C, [(trip °C, trip type)]) per readable zone with a plausible temperature."""
    zones = []
    for zone in sorted(root.glob("sys/class/thermal/thermal_zone*")):
        try:
            kind = read_text(zone / "type")
            temp_c = read_int(zone / "temp") / 1000
        except SensorError:
            continue
        if not _PLAUSIBLE_C[0] <= temp_c <= _PLAUSIBLE_C[1]:
            continue
        trips = []
        for trip in sorted(zone.glob("trip_point_*_temp")):
            try:
                trip_c = read_int(trip) / 1000
                trip_type = read_text(trip.with_name(trip.name.replace("_temp", "_type")))
            except SensorError:
                continue
            trips.append((trip_c, trip_type))
        zones.append((kind, temp_c, trips))
    return zones


def thermal_fields(root: Path) -> Telemetry:
    """Per-zone temperatures, the SoC temperature and whether any zone passed a trip point."""
    out: Telemetry = {}
    zones = _zone_temps(root)
    for kind, temp_c, _ in zones:
        out[f"temp_{_key(kind)}_c"] = temp_c
    soc = [z for z in zones if not _NOT_SOC_RE.search(z[0])]
    if not soc:
        return out
    kind, temp_c, trips = max(soc, key=lambda z: z[1])
    out["soc_temp_c"] = temp_c
    out["soc_zone"] = kind
    # The first trip the kernel acts on: passive (throttling) before hot/critical.
    ranked = sorted(trips, key=lambda t: (t[1] != "passive", t[0]))
    if ranked:
        out["soc_trip_c"], out["soc_trip_type"] = ranked[0]
    exceeded = any(temp >= trip_c for _, temp, zone_trips in soc for trip_c, trip_type in zone_trips
                   if trip_type in {"passive", "hot", "critical"})
    out["thermal_trip_exceeded"] = exceeded
    return out


def cpufreq_fields(root: Path) -> Telemetry:
    """Mean current CPU clock, the policy limit and the hardware maximum, in MHz."""
    current: list[float] = []
    limits: list[float] = []
    hw_max: list[float] = []
    for cpu in sorted(root.glob("sys/devices/system/cpu/cpu[0-9]*/cpufreq")):
        for name, bucket in (("scaling_cur_freq", current), ("scaling_max_freq", limits),
                             ("cpuinfo_max_freq", hw_max)):
            try:
                value = read_int(cpu / name)
            except SensorError:
                continue
            if value > 0:
                bucket.append(value / 1000)
    out: Telemetry = {}
    if current:
        out["cpu_freq_mhz"] = sum(current) / len(current)
    if limits:
        out["cpu_freq_limit_mhz"] = min(limits)
    if hw_max:
        out["cpu_freq_hw_max_mhz"] = max(hw_max)
    if limits and hw_max:
        out["cpu_freq_capped"] = min(limits) < max(hw_max)
    return out


def parse_get_throttled(text: str) -> Telemetry:
    """Decode ``vcgencmd get_throttled`` output; {} for anything but ``throttled=0x<hex>``."""
    m = _THROTTLED_RE.fullmatch(text.strip())
    if m is None:
        return {}
    value = int(m.group(1), 16)
    out: Telemetry = {"pi_throttled_raw": value}
    for bit, name in THROTTLE_BITS.items():
        out[f"pi_{name}_now"] = bool(value >> bit & 1)
        out[f"pi_{name}_since_boot"] = bool(value >> (bit + 16) & 1)
    return out


def parse_net_dev(text: str) -> Telemetry:
    """``net_<iface>_{rx,tx}_bytes`` from /proc/net/dev text (rx bytes is field 1, tx field 9)."""
    out: Telemetry = {}
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        fields = rest.split()
        if not sep or len(fields) < 16 or not all(f.isdigit() for f in fields):
            continue
        iface = _key(name.strip())
        out[f"net_{iface}_rx_bytes"] = int(fields[0])
        out[f"net_{iface}_tx_bytes"] = int(fields[8])
    return out


def parse_net_wireless(text: str) -> Telemetry:
    """``wifi_<iface>_{link,level_dbm,noise_dbm}`` from /proc/net/wireless text.

    A trailing "." on a value marks it updated since the last read; a level or noise outside
    -120..0 dBm (a driver reporting a relative scale, 0 or the placeholder -256: not reported)
    is left out.
    """
    out: Telemetry = {}
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        fields = rest.split()
        if not sep or len(fields) < 4:
            continue
        iface = _key(name.strip())
        try:
            link, level, noise = (float(f.rstrip(".")) for f in fields[1:4])
        except ValueError:
            continue
        out[f"wifi_{iface}_link"] = link
        if -120 <= level < 0:
            out[f"wifi_{iface}_level_dbm"] = level
        if -120 <= noise < 0:
            out[f"wifi_{iface}_noise_dbm"] = noise
    return out


class TelemetryReader:
    """Reads one telemetry sample at a time from `root` (remembers an absent vcgencmd).

    Parameters
    ----------
    root : path
        "/" for this machine; tests pass a recorded tree with sys/ and proc/ inside.
    runner : callable
        Runs ``vcgencmd get_throttled`` (tests return recorded output).
    """

    def __init__(self, root: str | Path = "/", runner: CommandRunner = run_command) -> None:
        self.root = Path(root)
        self.runner = runner
        self._vcgencmd = True

    def _throttled(self) -> Telemetry:
        if not self._vcgencmd:
            return {}
        try:
            text = self.runner(("vcgencmd", "get_throttled"))
        except FileNotFoundError:
            self._vcgencmd = False  # not a Raspberry Pi: stop asking
            return {}
        except OSError as exc:
            log.debug("vcgencmd get_throttled: %s", exc)
            return {}
        fields = parse_get_throttled(text)
        if not fields:
            log.debug("vcgencmd get_throttled: unexpected output %r", text[:80])
        return fields

    def _proc(self, name: str) -> str:
        try:
            return read_text(self.root / "proc" / "net" / name)
        except SensorError:
            return ""

    def sample(self) -> Telemetry:
        """One flat sample: ``time_utc`` (ISO 8601) and ``monotonic_s`` plus whatever exists."""
        out: Telemetry = {
            "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="milliseconds"),
            "monotonic_s": time.monotonic(),
        }
        out.update(thermal_fields(self.root))
        out.update(cpufreq_fields(self.root))
        out.update(self._throttled())
        out.update(parse_net_dev(self._proc("dev")))
        out.update(parse_net_wireless(self._proc("wireless")))
        return out


def read_telemetry(root: str | Path = "/", runner: CommandRunner = run_command) -> Telemetry:
    """Take one telemetry sample of the machine at `root` (see TelemetryReader)."""
    return TelemetryReader(root, runner).sample()
