"""Where a trial ran: the host's name, system, processor, and which device profile it is.

So that a report can say when the boards of the config were *emulated* on another machine.
"""

from __future__ import annotations

import os
import platform
import socket
import sys
from pathlib import Path
from typing import Any

# Substrings of the device-tree model (Linux /proc/device-tree/model on ARM boards) -> profile.
BOARD_MODELS = (("Raspberry Pi 5", "rpi5"), ("Raspberry Pi 4", "rpi4"),
                ("Orin Nano", "jetson-orin-nano"), ("Jetson Nano", "jetson-nano"))


def board_model(root: str | Path = "/") -> str | None:
    """Read the device-tree model string of this board (None on machines without one, e.g. x86)."""
    try:
        text = (Path(root) / "proc" / "device-tree" / "model").read_bytes()
    except OSError:
        return None
    return text.rstrip(b"\x00\n").decode("utf-8", "replace") or None


def host_profile(model: str | None, machine: str) -> str | None:
    """Name the device profile this host is.

    A known board by its model, `x86` on an x86-64 machine, else None (an ARM board parse-edge has
    no profile for).
    """
    for needle, profile in BOARD_MODELS:
        if model and needle in model:
            return profile
    return "x86" if machine in ("x86_64", "AMD64") else None


def host_facts(root: str | Path = "/") -> dict[str, Any]:
    """Host name, OS, machine, board model, matching profile, CPU count and Python version."""
    model = board_model(root)
    machine = platform.machine()
    return {
        "hostname": socket.gethostname(),
        "system": f"{platform.system()} {platform.release()}",
        "machine": machine,
        "board_model": model,
        "profile": host_profile(model, machine),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
    }


def emulated_devices(devices: list[str], host: dict[str, Any]) -> list[str]:
    """List the device profiles of `devices` this host is not: they were emulated.

    Their energy is an estimate from the profile, their speed is this host's.
    """
    return sorted({d for d in devices if d != host.get("profile")})
