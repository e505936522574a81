"""What machine is this: board model, L4T release, CPU, memory, matching profile, energy backends.

Sources, all under a root directory so tests read recorded trees: ``proc/device-tree/model``
(ARM boards; NUL-terminated), ``etc/nv_tegra_release`` (Jetson, first line like "# R35 (release),
REVISION: 4.1, GCID: ..., BOARD: t186ref, ..."), ``proc/cpuinfo`` and ``proc/meminfo``. Missing
files are absent fields, never errors.
"""

from __future__ import annotations

import platform
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from devices.backends import detect_backends, make_backends
from devices.profiles import HOST_REFERENCE_X86, PROFILES, DeviceProfile, profile_for_model
from devices.sensors import BackendStatus, CommandRunner, SensorError, read_text, run_command

# ARM "CPU part" codes (Arm Technical Reference Manuals, MIDR_EL1.PartNum) of the boards served.
ARM_PARTS = {"0xd03": "Cortex-A53", "0xd07": "Cortex-A57", "0xd08": "Cortex-A72",
             "0xd0b": "Cortex-A76", "0xd42": "Cortex-A78AE", "0xd41": "Cortex-A78"}

_TEGRA_RE = re.compile(r"#\s*R(?P<major>\d+)\s*\(release\),\s*REVISION:\s*(?P<rev>[\d.]+)")


@dataclass(frozen=True)
class MachineInfo:
    """One machine as the probe saw it (None: the source was absent or unreadable).

    Attributes
    ----------
    model : str or None
        Device-tree model, e.g. "Raspberry Pi 5 Model B Rev 1.0".
    l4t_release : str or None
        Jetson Linux release, e.g. "R35.4.1".
    arch : str
        Machine architecture (``platform.machine()`` unless given).
    cpu_model : str or None
        x86 "model name", or the ARM core name from its part number.
    cpu_cores : int or None
        Logical CPUs listed in cpuinfo.
    memory_mb : int or None
        MemTotal in MiB.
    profile : str or None
        The device profile the board was recognised as.
    backends : list of BackendStatus
        Every energy backend, available or why not.
    """

    model: str | None
    l4t_release: str | None
    arch: str
    cpu_model: str | None
    cpu_cores: int | None
    memory_mb: int | None
    profile: str | None
    backends: list[BackendStatus] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def _optional_text(path: Path) -> str | None:
    try:
        return read_text(path) or None
    except SensorError:
        return None


def parse_tegra_release(text: str) -> str | None:
    """"R35.4.1" from the first line of /etc/nv_tegra_release, or None if it is not that format."""
    m = _TEGRA_RE.search(text.splitlines()[0] if text else "")
    return f"R{m['major']}.{m['rev']}" if m else None


def parse_cpuinfo(text: str) -> tuple[str | None, int | None, str | None]:
    """Return (CPU model, logical CPU count, architecture) from /proc/cpuinfo text.

    The architecture is "aarch64" when the text lists ARMv8 "CPU architecture: 8" entries,
    "x86_64" when it lists x86 "vendor_id" entries, else None.
    """
    model = arch = None
    parts: list[str] = []
    cores = 0
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "processor":
            cores += 1
        elif key == "model name" and model is None:
            model = value
        elif key == "CPU part":
            parts.append(value.lower())
        elif key == "CPU architecture" and value == "8":
            arch = "aarch64"
        elif key == "vendor_id":
            arch = "x86_64"
    if model is None and parts:
        names = sorted({ARM_PARTS.get(p, f"ARM part {p}") for p in parts})
        model = " + ".join(names)
    return model, (cores or None), arch


def parse_meminfo_mb(text: str) -> int | None:
    """MemTotal in MiB from /proc/meminfo text (reported in kB), or None."""
    m = re.search(r"^MemTotal:\s+(\d+)\s*kB", text, re.MULTILINE)
    return int(m.group(1)) // 1024 if m else None


def recognise(model: str | None) -> DeviceProfile | None:
    """Recognise a board's profile from its device-tree model.

    The L4T release alone says "some Jetson", not enough to tell a Nano from an Orin.
    """
    return profile_for_model(model) if model else None


def probe_machine(root: str | Path = "/", *, arch: str | None = None,
                  runner: CommandRunner = run_command, with_backends: bool = True) -> MachineInfo:
    """Probe the machine whose filesystem is mounted at `root` (never raises for absent files).

    Parameters
    ----------
    root : path
        "/" for this machine; tests pass a recorded tree with proc/, sys/ and etc/ inside.
    arch : str, optional
        Architecture to report (default: from cpuinfo, else this machine's).
    runner : callable
        Runs commands for command-based backends (vcgencmd).
    with_backends : bool
        Also open every energy backend (reads sensors once).
    """
    base = Path(root)
    model = _optional_text(base / "proc" / "device-tree" / "model")
    tegra = _optional_text(base / "etc" / "nv_tegra_release")
    cpu_model, cores, cpu_arch = parse_cpuinfo(_optional_text(base / "proc" / "cpuinfo") or "")
    memory_mb = parse_meminfo_mb(_optional_text(base / "proc" / "meminfo") or "")
    l4t = parse_tegra_release(tegra) if tegra else None
    profile = recognise(model)
    statuses = (detect_backends(make_backends(base / "sys", runner=runner))
                if with_backends else [])
    return MachineInfo(model=model, l4t_release=l4t, arch=arch or cpu_arch or platform.machine(),
                       cpu_model=cpu_model, cpu_cores=cores, memory_mb=memory_mb,
                       profile=profile.name if profile else None, backends=statuses)


def host_profile(root: str | Path = "/", arch: str | None = None) -> DeviceProfile | None:
    """Return the profile standing for this host's CPU.

    The recognised board, else the x86 reference on an x86-64 machine, else None (an unknown
    board: its CPU seconds cannot be scaled).
    """
    return reference_profile(probe_machine(root, arch=arch, with_backends=False))


def reference_profile(info: MachineInfo) -> DeviceProfile | None:
    """Return the profile standing for the CPU of a probed machine (see `host_profile`)."""
    if info.profile is not None:
        return PROFILES[info.profile]
    if info.arch in {"x86_64", "AMD64", "amd64"}:
        return PROFILES[HOST_REFERENCE_X86]
    return None
