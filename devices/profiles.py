"""Device profiles: the boards parse-edge targets and the public figures its energy estimate uses.

Every number below carries its public source in a comment. Three sources cover most of them:

- [SBCR] Jeff Geerling's SBC review data, github.com/geerlingguy/sbc-reviews, file
  web/data/results.yml (one issue per board): whole-board power at the wall, idle and under
  `stress-ng` on every core, measured with a USB/AC power meter.
- [SBCB] Thomas Kaiser's sbc-bench results, github.com/ThomasKaiser/sbc-bench, Results.md and
  results/<id>.txt: the 7-zip single-threaded MIPS score per board, one benchmark and one
  methodology for all the boards here (x86 included), which is why it is the CPU speed scale.
- [HUANG12] J. Huang et al., "A Close Examination of Performance and Power Characteristics of
  4G LTE Networks", ACM MobiSys 2012, Table 3: the Wi-Fi power model P = a_u*t_u + a_d*t_d + b
  with a_u = 283.17 mW/Mbps (uplink) and a_d = 137.01 mW/Mbps (downlink), i.e. energy per bit
  on top of the radio's idle draw. Measured on a smartphone's 802.11 radio; used for every board
  as the only per-byte radio figure from a controlled measurement we know of.

The 7-zip score is a proxy for the CPU-bound part of training (small torch models on one core):
integer-heavy, so it understates the A76 (Pi 5) lead over older cores on float/SIMD work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

# [HUANG12] Wi-Fi: 283.17 mW per Mbit/s uplink -> 0.28317 J per Mbit -> x 8 bit/B / 1e6 bit/Mbit.
WIFI_J_PER_BYTE_SENT = 0.28317 * 8 / 1e6  # 2.27e-6 J/B
# [HUANG12] Wi-Fi: 137.01 mW per Mbit/s downlink.
WIFI_J_PER_BYTE_RECEIVED = 0.13701 * 8 / 1e6  # 1.10e-6 J/B


@dataclass(frozen=True)
class DeviceProfile:
    """One board class and the figures its energy estimate uses.

    Attributes
    ----------
    name, description, arch : str
        Profile name (what agents declare), human description, machine architecture.
    cpu_cores : int
        Cores the busy figure was measured with (all of them busy).
    ram_mb : int
        Memory of the variant described.
    idle_w : float
        Whole-board draw at idle, in watts.
    active_extra_w : float
        Extra draw with every core busy, in watts; one busy core adds ``active_extra_w /
        cpu_cores`` (linear in busy cores, a first-order model).
    cpu_speed_mips : float
        Single-core speed: 7-zip single-threaded MIPS from [SBCB]. CPU seconds measured on a host
        become board CPU seconds by the ratio host.cpu_speed_mips / board.cpu_speed_mips.
    radio_j_per_byte_sent, radio_j_per_byte_received : float
        Radio/NIC energy per byte on the wire, in joules, on top of the idle draw.
    model_markers : tuple of str
        Substrings of the device-tree model (``/proc/device-tree/model``) that identify the board.
    onnx_providers : tuple of str
        onnxruntime execution providers this board class can have, best first
        (:mod:`devices.providers` chooses among those the installed build offers).

    Raises
    ------
    ValueError
        A figure that is not a positive finite number.
    """

    name: str
    description: str
    arch: str
    cpu_cores: int
    ram_mb: int
    idle_w: float
    active_extra_w: float
    cpu_speed_mips: float
    radio_j_per_byte_sent: float = WIFI_J_PER_BYTE_SENT
    radio_j_per_byte_received: float = WIFI_J_PER_BYTE_RECEIVED
    model_markers: tuple[str, ...] = ()
    onnx_providers: tuple[str, ...] = ("CPUExecutionProvider",)

    def __post_init__(self) -> None:
        """Reject figures that are not positive finite numbers."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (int, float)) and not (math.isfinite(value) and value > 0):
                raise ValueError(f"device profile {self.name}: {f.name}: expected a positive "
                                 f"finite number, got {value!r}")

    @property
    def busy_w(self) -> float:
        """Whole-board draw with every core busy, in watts."""
        return self.idle_w + self.active_extra_w

    @property
    def core_w(self) -> float:
        """Extra draw of one busy core, in watts (joules per busy core-second)."""
        return self.active_extra_w / self.cpu_cores


# Jetsons (and an x86 host with an NVIDIA GPU) can serve with TensorRT or CUDA; Pis with XNNPACK
# where the onnxruntime build has it (https://onnxruntime.ai/docs/execution-providers/).
_ARM_CPU = ("XnnpackExecutionProvider", "CPUExecutionProvider")
_NVIDIA = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")

PROFILES: dict[str, DeviceProfile] = {
    p.name: p
    for p in (
        DeviceProfile(
            "rpi4", "Raspberry Pi 4 Model B (4x Cortex-A72 @ 1.8 GHz)", "aarch64", 4, 4096,
            # [SBCR] "Raspberry Pi 4 model B" (sbc-reviews issue #4): idle 1.6 W, stress 5.0 W.
            idle_w=1.6, active_extra_w=5.0 - 1.6,
            # [SBCB] "Raspberry Pi 4 B (BCM2711)", 1800 MHz, Bullseye arm64 (results/3OBF.txt).
            cpu_speed_mips=1769,
            model_markers=("Raspberry Pi 4 Model B", "Raspberry Pi 400", "Compute Module 4"),
            onnx_providers=_ARM_CPU,
        ),
        DeviceProfile(
            "rpi5", "Raspberry Pi 5 (4x Cortex-A76 @ 2.4 GHz)", "aarch64", 4, 8192,
            # [SBCR] "Raspberry Pi 5 model B" (sbc-reviews issue #21): idle 2.8 W, stress 9.7 W.
            idle_w=2.8, active_extra_w=9.7 - 2.8,
            # [SBCB] "Raspberry Pi 5 B (BCM2712)", 2400 MHz, kernel 6.6 (results/8-NK.txt).
            cpu_speed_mips=3305,
            model_markers=("Raspberry Pi 5", "Raspberry Pi 500", "Compute Module 5"),
            onnx_providers=_ARM_CPU,
        ),
        DeviceProfile(
            "jetson-nano", "Jetson Nano 4GB (4x Cortex-A57 @ 1.48 GHz), 10 W (MAXN) mode",
            "aarch64", 4, 4096,
            # Idle: module input rail POM_5V_IN at 1388 mW with every core at 102 MHz, a recorded
            # JetPack 4 `tegrastats` line kept as test data by jetson_prometheus_exporter
            # (tests/test_tegrastats.py); carrier board and USB devices not included.
            idle_w=1.4,
            # Busy: the 10 W MAXN module power budget (NVIDIA L4T Developer Guide, Jetson Nano
            # "Supported Modes and Power Efficiency") -- an upper bound for a CPU-only load.
            active_extra_w=10.0 - 1.4,
            # [SBCB] "Jetson Nano", 1480 MHz (results/4rLX.txt).
            cpu_speed_mips=1578,
            model_markers=("Jetson Nano",),
            onnx_providers=_NVIDIA,
        ),
        DeviceProfile(
            "jetson-orin-nano", "Jetson Orin Nano 8GB (6x Cortex-A78AE @ 1.5 GHz), 15 W mode",
            "aarch64", 6, 8192,
            # [SBCB] results/4vy7.txt (Orin Nano Developer Kit, L4T 35): lm-sensors shows the
            # module's INA3221 VDD_IN at 4.90 V x 1.05 A = 5.1 W before the benchmarks start.
            idle_w=5.1,
            # Busy: the 15 W power mode budget of the Orin Nano 8GB (NVIDIA Jetson Linux r35
            # Developer Guide, "Platform Power and Performance") -- an upper bound.
            active_extra_w=15.0 - 5.1,
            # [SBCB] "Jetson Orin Nano", 1510 MHz (results/4vy7.txt).
            cpu_speed_mips=2153,
            model_markers=("Orin Nano",),
            onnx_providers=_NVIDIA,
        ),
        DeviceProfile(
            "x86", "x86-64 host, reference: Intel N100 mini PC (4x Gracemont @ 3.4 GHz)",
            "x86_64", 4, 8192,
            # [SBCR] "Radxa X4" (N100, sbc-reviews issue #48): idle 9.1 W, stress 18.5 W.
            idle_w=9.1, active_extra_w=18.5 - 9.1,
            # [SBCB] "Intel N100", 3400 MHz (results/uHzXI7.txt).
            cpu_speed_mips=3910,
            onnx_providers=_NVIDIA,
        ),
    )
}

DEFAULT_PROFILE = "x86"

# The profile that stands for an x86-64 machine the probe does not recognise: CPU seconds measured
# there are taken to be seconds of this reference core when they are scaled to a board.
HOST_REFERENCE_X86 = "x86"


def get_profile(name: str) -> DeviceProfile:
    """Return the profile called `name`.

    Raises
    ------
    KeyError
        Unknown name; the message lists the known ones.
    """
    try:
        return PROFILES[name]
    except KeyError:
        raise KeyError(f"unknown device profile {name!r}; known: {', '.join(PROFILES)}") from None


def profile_for_model(model: str) -> DeviceProfile | None:
    """Find the profile whose device-tree markers occur in `model`, or None.

    `model` is the text of ``/proc/device-tree/model``, e.g. "Raspberry Pi 5 Model B Rev 1.0" or
    "NVIDIA Jetson Orin Nano Developer Kit" (which does not contain "Jetson Nano").
    """
    for profile in PROFILES.values():
        if any(marker in model for marker in profile.model_markers):
            return profile
    return None


def cpu_scale(host: DeviceProfile, board: DeviceProfile) -> float:
    """Return board CPU seconds per host CPU second.

    How much longer the board's core takes for the same work, from the two single-core scores:
    host.cpu_speed_mips / board.cpu_speed_mips.
    """
    return host.cpu_speed_mips / board.cpu_speed_mips
