"""Every energy backend, in the order they are preferred, behind one constructor.

Order: hwmon (kernel drivers, the well-kept path), jetson (JetPack 4 IIO layout), i2c (a chip
the user named, read from user space), pmic (Pi 5 rails, below wall power), rapl (CPU package
only). The first that opens measures.
"""

from __future__ import annotations

from pathlib import Path

from devices.hwmon import HwmonBackend
from devices.i2c import I2cBackend, I2cSensorSpec, i2c_spec_from_env
from devices.jetson import JetsonBackend
from devices.pmic import PmicBackend
from devices.rapl import RaplBackend
from devices.sensors import Backend, BackendStatus, CommandRunner, backend_status, run_command

BACKEND_NAMES = ("hwmon", "jetson", "i2c", "pmic", "rapl")

# Seconds between sampler reads: sysfs and I2C reads are cheap; pmic starts a process per read;
# RAPL is a counter, read only often enough to see every wrap.
SAMPLE_INTERVAL_S = {"hwmon": 0.5, "jetson": 0.5, "i2c": 0.5, "pmic": 1.0, "rapl": 1.0}


def make_backends(sys_root: str | Path = "/sys", *, powercap_root: str | Path | None = None,
                  runner: CommandRunner = run_command, i2c: I2cSensorSpec | None = None,
                  i2c_from_env: bool = True) -> list[Backend]:
    """All backends, preferred first, reading under `sys_root` and running commands by `runner`.

    Parameters
    ----------
    sys_root : path
        sysfs mount; tests pass a recorded tree.
    powercap_root : path, optional
        RAPL's powercap directory (default ``<sys_root>/class/powercap``).
    runner : callable
        Runs a command, returns stdout, raises OSError (tests return recorded output).
    i2c : I2cSensorSpec, optional
        An INA219/INA260 to read over I2C; default from PARSE_EDGE_I2C_POWER when
        `i2c_from_env` (a malformed variable raises devices.i2c.I2cSpecError).
    """
    root = Path(sys_root)
    spec = i2c if i2c is not None else (i2c_spec_from_env() if i2c_from_env else None)
    return [
        HwmonBackend(root),
        JetsonBackend(root),
        I2cBackend(spec),
        PmicBackend(runner),
        RaplBackend(powercap_root if powercap_root is not None else root / "class" / "powercap"),
    ]


def detect_backends(backends: list[Backend]) -> list[BackendStatus]:
    """Return the status of every backend, in order (never raises)."""
    return [backend_status(b) for b in backends]
