"""Energy: measured from RAPL or INA3221 rails where the board exposes them, else estimated."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path

from devices.meters import ResourceUsage
from devices.profiles import DEFAULT_PROFILE, DeviceProfile, get_profile

BYTES_PER_MB = 1_000_000  # network energy is quoted per decimal MB on the wire


class EnergyMode(str, Enum):
    """How an EnergyMeter picks its source."""

    AUTO = "auto"  # measured when a readable backend exists, else estimated
    MEASURED = "measured"  # a readable backend is required
    ESTIMATED = "estimated"  # always the profile estimate (e.g. many simulated boards on one host)


@dataclass(frozen=True)
class EnergyResult:
    """Energy over an interval and where the number comes from."""

    energy_j: float
    source: str  # "measured:rapl", "measured:ina3221" or "estimated:<profile>"
    wall_s: float

    @property
    def avg_power_w(self) -> float:
        """Mean power over the interval."""
        return self.energy_j / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict[str, float | str]:
        """JSON-ready form."""
        return asdict(self)


@dataclass(frozen=True)
class BackendStatus:
    """Whether a measuring backend can be used here, and why not."""

    name: str
    available: bool
    reason: str


def estimate_energy_j(profile: DeviceProfile, *, wall_s: float, cpu_s: float,
                      bytes_on_wire: int = 0) -> float:
    """Board energy from its profile: idle draw over the wall time, the busy extra in proportion
    to CPU seconds per core (capped at every core busy), and radio/NIC energy per MB moved."""
    if wall_s < 0 or cpu_s < 0 or bytes_on_wire < 0:
        raise ValueError("wall_s, cpu_s and bytes_on_wire must be non-negative")
    busy_s = min(cpu_s / profile.cpu_cores, wall_s)
    return (profile.idle_w * wall_s + profile.active_extra_w * busy_s
            + profile.net_j_per_mb * bytes_on_wire / BYTES_PER_MB)


def integrate_power_j(samples: Sequence[tuple[float, float]]) -> float:
    """Trapezoidal integral of (time_s, power_w) samples."""
    return sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in itertools.pairwise(samples))


def _read_int(path: Path) -> int:
    return int(path.read_text().strip())


class RaplReader:
    """Intel/AMD RAPL package energy counters under /sys/class/powercap (microjoules)."""

    name = "rapl"

    def __init__(self, root: str | Path = "/sys/class/powercap") -> None:
        self.root = Path(root)

    def domains(self) -> list[Path]:
        """Top-level domains to sum: `psys` alone when present (it covers the packages),
        else every package; sub-domains (core, dram, uncore) are inside a package already."""
        if not self.root.is_dir():
            return []
        top = sorted(d for d in self.root.glob("intel-rapl:*") if d.name.count(":") == 1)
        names = {d: (d / "name").read_text().strip() if (d / "name").exists() else "" for d in top}
        psys = [d for d in top if names[d] == "psys"]
        return psys or [d for d in top if names[d].startswith("package")]

    def status(self) -> BackendStatus:
        """Available only if every chosen domain's counter is readable."""
        domains = self.domains()
        if not domains:
            return BackendStatus(self.name, False, f"no RAPL package domain under {self.root}")
        for d in domains:
            counter = d / "energy_uj"
            try:
                _read_int(counter)
            except PermissionError:
                return BackendStatus(self.name, False, f"permission denied reading {counter} "
                                     "(root-only since Linux 5.10; grant read access to use it)")
            except (OSError, ValueError) as exc:
                return BackendStatus(self.name, False, f"cannot read {counter}: {exc}")
        return BackendStatus(self.name, True, f"{len(domains)} domain(s) under {self.root}")

    def read_uj(self) -> dict[str, int]:
        """Current counter of each chosen domain."""
        return {d.name: _read_int(d / "energy_uj") for d in self.domains()}

    def delta_j(self, start: dict[str, int], end: dict[str, int]) -> float:
        """Joules between two readings; a counter that wrapped adds its range once."""
        total_uj = 0
        for name, e0 in start.items():
            e1 = end[name]
            if e1 < e0:
                e1 += _read_int(self.root / name / "max_energy_range_uj")
            total_uj += e1 - e0
        return total_uj / 1e6


class Ina3221Reader:
    """Jetson INA3221 power monitor rails, via the L4T iio driver or hwmon (instantaneous watts).

    Uses the board input rail (VDD_IN / POM_5V_IN) when there is one — the other rails are
    parts of it — else the sum of all rails."""

    name = "ina3221"

    def __init__(self, root: str | Path = "/sys") -> None:
        self.root = Path(root)

    def _rails(self) -> dict[str, tuple[str, Path, Path | None]]:
        """rail label -> ("mw", power file, None) or ("mv*ma", voltage file, current file)."""
        rails: dict[str, tuple[str, Path, Path | None]] = {}
        for dev in sorted(self.root.glob("bus/i2c/drivers/ina3221x/*/iio:device*")):
            for power in sorted(dev.glob("in_power*_input")):
                idx = power.name[len("in_power"):-len("_input")]
                label_file = dev / f"rail_name_{idx}"
                label = label_file.read_text().strip() if label_file.exists() else power.name
                rails[f"{dev.parent.name}:{label}"] = ("mw", power, None)
        hwmons = [*self.root.glob("bus/i2c/drivers/ina3221/*/hwmon/hwmon*"),
                  *self.root.glob("class/hwmon/hwmon*")]
        seen: set[Path] = set()
        for hw in sorted(hwmons):
            key = hw.resolve()
            name_file = hw / "name"
            if key in seen or not name_file.exists() or name_file.read_text().strip() != "ina3221":
                continue
            seen.add(key)
            for volt in sorted(hw.glob("in[0-9]*_input")):
                idx = volt.name[2:-len("_input")]
                curr = hw / f"curr{idx}_input"
                if not curr.exists():
                    continue
                label_file = hw / f"in{idx}_label"
                label = label_file.read_text().strip() if label_file.exists() else f"in{idx}"
                rails[f"{hw.name}:{label}"] = ("mv*ma", volt, curr)
        inputs = {k: v for k, v in rails.items() if k.split(":", 1)[1].upper().endswith("_IN")}
        return inputs or rails

    def status(self) -> BackendStatus:
        """Available when at least one rail can be read."""
        rails = self._rails()
        if not rails:
            return BackendStatus(self.name, False, f"no INA3221 rails under {self.root}")
        try:
            self.read_power_w()
        except PermissionError as exc:
            return BackendStatus(self.name, False, f"permission denied reading {exc.filename}")
        except (OSError, ValueError) as exc:
            return BackendStatus(self.name, False, f"cannot read INA3221 rails: {exc}")
        return BackendStatus(self.name, True, f"rails {', '.join(rails)}")

    def read_power_w(self) -> float:
        """Current board power in watts."""
        total_w = 0.0
        for unit, first, second in self._rails().values():
            if unit == "mw":
                total_w += _read_int(first) / 1e3
            else:
                total_w += _read_int(first) * _read_int(second) / 1e6  # type: ignore[arg-type]
        return total_w


class _PowerIntegrator(threading.Thread):
    """Samples an instantaneous power reader in the background and keeps a running integral."""

    def __init__(self, reader: Ina3221Reader, interval_s: float) -> None:
        super().__init__(name="ina3221-sampler", daemon=True)
        self.reader = reader
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._last = (time.perf_counter(), reader.read_power_w())
        self._energy_j = 0.0
        self._stop_event = threading.Event()

    def _sample(self) -> float:
        now = (time.perf_counter(), self.reader.read_power_w())
        with self._lock:
            self._energy_j += integrate_power_j([self._last, now])
            self._last = now
            return self._energy_j

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            try:
                self._sample()
            except (OSError, ValueError):
                continue  # a transient sysfs read error: the next sample bridges the gap

    def energy_j(self) -> float:
        """Joules since the first sample, up to a sample taken now."""
        return self._sample()

    def close(self) -> None:
        self._stop_event.set()
        self.join()


def detect_backends(powercap_root: str | Path = "/sys/class/powercap",
                    sys_root: str | Path = "/sys") -> list[BackendStatus]:
    """The status of every measuring backend on this machine (never raises)."""
    return [_status(r) for r in (Ina3221Reader(sys_root), RaplReader(powercap_root))]


def _status(reader: RaplReader | Ina3221Reader) -> BackendStatus:
    try:
        return reader.status()
    except (OSError, ValueError) as exc:
        return BackendStatus(reader.name, False, f"cannot probe: {exc}")


class EnergyMeter:
    """Energy of an interval: `start()`, then `stop(usage, bytes_on_wire)`.

    Measured backends report whole-board (INA3221) or CPU-package (RAPL) energy, so they are
    right for one agent per board; use mode "estimated" when several agents share a host."""

    def __init__(self, profile: DeviceProfile | str = DEFAULT_PROFILE, *,
                 mode: EnergyMode | str = EnergyMode.AUTO,
                 powercap_root: str | Path = "/sys/class/powercap", sys_root: str | Path = "/sys",
                 sample_interval_s: float = 0.1) -> None:
        self.profile = profile if isinstance(profile, DeviceProfile) else get_profile(profile)
        self.mode = EnergyMode(mode)
        self.sample_interval_s = sample_interval_s
        self.backend: RaplReader | Ina3221Reader | None = None
        if self.mode is not EnergyMode.ESTIMATED:
            for reader in (Ina3221Reader(sys_root), RaplReader(powercap_root)):
                if _status(reader).available:
                    self.backend = reader
                    break
            if self.backend is None and self.mode is EnergyMode.MEASURED:
                reasons = "; ".join(s.reason for s in detect_backends(powercap_root, sys_root))
                raise RuntimeError(f"energy mode 'measured': no readable backend ({reasons})")
        self._rapl_last: dict[str, int] = {}
        self._rapl_j = 0.0
        self._integrator: _PowerIntegrator | None = None
        self._t0 = 0.0

    @property
    def source(self) -> str:
        """`measured:<backend>` or `estimated:<profile>`."""
        if self.backend is not None:
            return f"measured:{self.backend.name}"
        return f"estimated:{self.profile.name}"

    def start(self) -> EnergyMeter:
        """Begin the interval now."""
        self._t0 = time.perf_counter()
        if isinstance(self.backend, RaplReader):
            self._rapl_last = self.backend.read_uj()
            self._rapl_j = 0.0
        elif isinstance(self.backend, Ina3221Reader):
            self._integrator = _PowerIntegrator(self.backend, self.sample_interval_s)
            self._integrator.start()
        return self

    def read(self, usage: ResourceUsage | None = None, bytes_on_wire: int = 0) -> EnergyResult:
        """Energy since `start()`; the meter keeps running, so call it as often as needed (a
        RAPL counter that wraps between two reads is accounted for). The estimate needs `usage`
        (the interval's CPU seconds) and the bytes moved."""
        if isinstance(self.backend, RaplReader):
            now = self.backend.read_uj()
            self._rapl_j += self.backend.delta_j(self._rapl_last, now)
            self._rapl_last = now
            energy_j, wall_s = self._rapl_j, time.perf_counter() - self._t0
        elif isinstance(self.backend, Ina3221Reader) and self._integrator is not None:
            energy_j = self._integrator.energy_j()
            wall_s = time.perf_counter() - self._t0  # after the last sample: spans it
        else:
            if usage is None:
                raise ValueError("an estimated energy needs the interval's ResourceUsage")
            wall_s = usage.wall_s
            energy_j = estimate_energy_j(self.profile, wall_s=usage.wall_s, cpu_s=usage.cpu_s,
                                         bytes_on_wire=bytes_on_wire)
        return EnergyResult(energy_j=energy_j, source=self.source, wall_s=wall_s)

    def stop(self, usage: ResourceUsage | None = None, bytes_on_wire: int = 0) -> EnergyResult:
        """Same as `read` (repeatable: each call is energy since `start()`)."""
        return self.read(usage, bytes_on_wire)

    def close(self) -> None:
        """End background sampling (INA3221); `read` afterwards still works for RAPL/estimates."""
        if self._integrator is not None:
            self._integrator.close()
