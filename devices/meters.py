"""Resource meters: CPU seconds, wall seconds and peak memory (RSS; USS and PSS on request).

On request the meter also reads a process's unique and proportional set sizes (USS, PSS).

RSS counts every page mapped into the process, including library pages shared with other
processes (e.g. agents forked from one server that imported torch once); USS counts only the
pages this process alone holds (what it would give back by exiting), PSS shares each shared page
out among its users (Linux /proc/<pid>/smaps_rollup, read through psutil). Memory is in MiB.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

MB = 1024 * 1024


@dataclass(frozen=True)
class ResourceUsage:
    """What a process used over a metered interval (peak RSS is the process lifetime peak)."""

    wall_s: float
    cpu_user_s: float
    cpu_sys_s: float
    peak_rss_mb: float
    # With `ResourceMeter(memory_detail=True)` (0 otherwise): highest USS and PSS seen in samples.
    peak_uss_mib: float = 0.0
    peak_pss_mib: float = 0.0

    @property
    def cpu_s(self) -> float:
        """User plus system CPU seconds."""
        return self.cpu_user_s + self.cpu_sys_s

    def to_dict(self) -> dict[str, float]:
        """JSON-ready form, `cpu_s` included."""
        return {**asdict(self), "cpu_s": self.cpu_s}


def kernel_peak_rss_mb(pid: int, proc_root: str | Path = "/proc") -> float | None:
    """Read the kernel's high-water mark of resident memory (VmHWM) for `pid`, MiB.

    None where the kernel does not expose it.
    """
    try:
        for line in (Path(proc_root) / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / MB  # reported in kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def self_peak_rss_mb() -> float:
    """Lifetime peak RSS of the current process via getrusage (kB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MB if sys.platform == "darwin" else peak * 1024 / MB


def unique_memory_mib(proc: psutil.Process) -> tuple[float, float]:
    """(USS, PSS) of a process in MiB; (0, 0) where the platform does not report them.

    Raises
    ------
    psutil.NoSuchProcess
        When the process is gone.
    """
    try:
        info = proc.memory_full_info()
    except psutil.AccessDenied:
        return 0.0, 0.0
    return float(getattr(info, "uss", 0.0)) / MB, float(getattr(info, "pss", 0.0)) / MB


class ResourceMeter:
    """Meter one process (default: this one) from `start()`.

    `sample()` is cheap (a /proc read) and only needed for the RSS peak where the kernel does not
    keep one; with `memory_detail` it also reads USS and PSS (a walk of smaps_rollup).
    """

    def __init__(self, pid: int | None = None, *, include_children: bool = False,
                 memory_detail: bool = False) -> None:
        self.pid = pid if pid is not None else os.getpid()
        self.include_children = include_children
        # USS/PSS need a walk of the process's mappings (smaps_rollup): a few ms, so on request.
        self.memory_detail = memory_detail
        self._peak_uss_mib = 0.0
        self._peak_pss_mib = 0.0
        self._proc = psutil.Process(self.pid)
        self._t0 = 0.0
        self._cpu0 = (0.0, 0.0)
        self._sampled_peak_mb = 0.0
        self._last: ResourceUsage | None = None

    def _cpu(self) -> tuple[float, float]:
        t = self._proc.cpu_times()
        if self.include_children:
            return t.user + t.children_user, t.system + t.children_system
        return t.user, t.system

    def start(self) -> ResourceMeter:
        """Begin the interval now."""
        self._t0 = time.perf_counter()
        self._cpu0 = self._cpu()
        self._sampled_peak_mb = self._proc.memory_info().rss / MB
        return self

    def sample(self) -> ResourceUsage:
        """Usage so far; the last successful sample survives the process exiting."""
        try:
            user, system = self._cpu()
            rss_mb = self._proc.memory_info().rss / MB
        except psutil.NoSuchProcess:
            if self._last is None:
                raise
            return self._last
        self._sampled_peak_mb = max(self._sampled_peak_mb, rss_mb)
        if self.memory_detail:
            uss, pss = unique_memory_mib(self._proc)
            self._peak_uss_mib = max(self._peak_uss_mib, uss)
            self._peak_pss_mib = max(self._peak_pss_mib, pss)
        peak = kernel_peak_rss_mb(self.pid)
        if peak is None and self.pid == os.getpid():
            peak = self_peak_rss_mb()
        self._last = ResourceUsage(
            wall_s=time.perf_counter() - self._t0,
            cpu_user_s=max(0.0, user - self._cpu0[0]),
            cpu_sys_s=max(0.0, system - self._cpu0[1]),
            peak_rss_mb=max(peak or 0.0, self._sampled_peak_mb),
            peak_uss_mib=self._peak_uss_mib,
            peak_pss_mib=self._peak_pss_mib,
        )
        return self._last

    def stop(self) -> ResourceUsage:
        """Usage over the whole interval."""
        return self.sample()

    def __enter__(self) -> ResourceMeter:
        """Start metering."""
        return self.start()

    def __exit__(self, *exc: object) -> None:
        """Take the interval's last sample."""
        self.stop()

    @property
    def usage(self) -> ResourceUsage | None:
        """The last sample taken (after the `with` block: the whole interval)."""
        return self._last
