"""Intel/AMD RAPL energy counters under /sys/class/powercap (Documentation/power/powercap/powercap.rst).

RAPL covers the CPU package only -- cores, caches, uncore and an integrated GPU -- or, with the
``psys`` domain some laptops have, the SoC platform. It never covers the board: memory DIMMs
(outside ``dram``), disks, NICs, fans and power-supply losses are missing, so it under-reports
whole-machine energy. ``energy_uj`` is a microjoule counter that wraps at ``max_energy_range_uj``;
it has been root-only since Linux 5.10 (CVE-2020-8694).
"""

from __future__ import annotations

from pathlib import Path

from devices.sensors import SensorError, read_int, read_text


class RaplSensor:
    """Cumulative joules over the chosen domains since `open`, wrap-arounds included.

    A counter may wrap at most once between two reads; the sampler reads every second, and the
    smallest range seen in practice (2^32 uJ = 4295 J) takes over a minute at 60 W.
    """

    def __init__(self, domains: list[Path]) -> None:
        self.domains = domains
        self.label = ",".join(read_text(d / "name") for d in domains)
        self._range_uj = {d: read_int(d / "max_energy_range_uj") for d in domains}
        for d, span in self._range_uj.items():
            if span <= 0:
                raise SensorError(f"{d / 'max_energy_range_uj'}: expected a positive range")
        self._last_uj = self._read()
        self._total_uj = 0

    def _read(self) -> dict[Path, int]:
        readings = {d: read_int(d / "energy_uj") for d in self.domains}
        for d, value in readings.items():
            if not 0 <= value <= self._range_uj[d]:
                raise SensorError(f"{d / 'energy_uj'}: {value} outside 0..{self._range_uj[d]}")
        return readings

    def energy_j(self) -> float:
        """Joules since open; raises SensorError on an unreadable or out-of-range counter."""
        now = self._read()
        for d, value in now.items():
            delta = value - self._last_uj[d]
            if delta < 0:  # wrapped once: the counter restarted from zero
                delta += self._range_uj[d]
            self._total_uj += delta
        self._last_uj = now
        return self._total_uj / 1e6


class RaplBackend:
    """RAPL package (or psys) counters under `powercap_root`."""

    name = "rapl"
    scope = "CPU package only, not the board"

    def __init__(self, powercap_root: str | Path = "/sys/class/powercap") -> None:
        self.root = Path(powercap_root)

    def domains(self) -> list[Path]:
        """List the top-level domains to sum.

        ``psys`` alone when present (it contains the packages), else every ``package-N``;
        sub-domains (core, uncore, dram) are inside a package already.
        """
        if not self.root.is_dir():
            return []
        top = sorted(d for d in self.root.glob("intel-rapl:*") if d.name.count(":") == 1)
        names = {}
        for d in top:
            try:
                names[d] = read_text(d / "name")
            except SensorError:
                continue
        psys = [d for d, name in names.items() if name == "psys"]
        return psys or [d for d, name in names.items() if name.startswith("package")]

    def open(self) -> RaplSensor:
        """Open the counter sensor and read it once; SensorError says why there is none."""
        domains = self.domains()
        if not domains:
            raise SensorError(f"no RAPL package domain under {self.root}")
        try:
            return RaplSensor(domains)
        except SensorError as exc:
            if "Permission denied" in str(exc):
                raise SensorError(f"{exc} (root-only since Linux 5.10; grant read access to "
                                  "energy_uj to use it)") from None
            raise
