"""Device profiles: the boards parse-edge targets and the power figures used to estimate energy."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceProfile:
    """One board class; power figures are typical whole-board draws, not guarantees."""

    name: str
    description: str
    arch: str
    cpu_cores: int
    ram_mb: int
    idle_w: float
    # Extra draw with every core busy; energy estimates scale it by CPU utilisation.
    active_extra_w: float
    # Extra draw while the radio/NIC moves data, per MB on the wire.
    net_j_per_mb: float


PROFILES: dict[str, DeviceProfile] = {
    p.name: p
    for p in (
        DeviceProfile("rpi4", "Raspberry Pi 4 Model B (4x Cortex-A72)", "aarch64", 4, 4096,
                      2.7, 3.7, 0.05),
        DeviceProfile("rpi5", "Raspberry Pi 5 (4x Cortex-A76)", "aarch64", 4, 8192,
                      3.0, 5.0, 0.05),
        DeviceProfile("jetson-nano", "Jetson Nano 4GB (4x Cortex-A57), 10 W mode", "aarch64", 4,
                      4096, 1.9, 5.1, 0.05),
        DeviceProfile("jetson-orin-nano", "Jetson Orin Nano 8GB (6x Cortex-A78AE), 15 W mode",
                      "aarch64", 6, 8192, 4.0, 9.0, 0.05),
        DeviceProfile("x86", "Generic x86-64 host (laptop/desktop class)", "x86_64", 2, 8192,
                      8.0, 25.0, 0.02),
    )
}

DEFAULT_PROFILE = "x86"


def get_profile(name: str) -> DeviceProfile:
    """Return the profile called `name`; KeyError lists the known names."""
    try:
        return PROFILES[name]
    except KeyError:
        raise KeyError(f"unknown device profile {name!r}; known: {', '.join(PROFILES)}") from None
