"""`parse-edge devices`: what this machine is, which energy backends measure here, the profiles.

Torch-free: it imports only the devices package, so it runs on a board's inference-only install.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from devices.backends import detect_backends, make_backends
from devices.i2c import I2cSpecError, parse_i2c_spec
from devices.probe import MachineInfo, probe_machine, reference_profile
from devices.profiles import PROFILES
from devices.sensors import BackendStatus, PowerSensor, Sensor, SensorError
from devices.telemetry import TelemetryReader
from edge.errors import UserError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str) -> None:
    """Register the `devices` subcommand."""
    parser = sub.add_parser(
        name, help="probe this machine: board, energy sensors, device profiles",
        description="Probe the machine this runs on (device-tree model, Jetson release, CPU, "
                    "memory), list every energy backend with whether it can measure here, and "
                    "the device profiles agents may declare.")
    parser.add_argument("--json", action="store_true", help="print JSON (one object per line "
                        "with --watch)")
    parser.add_argument("--watch", action="store_true",
                        help="print live power and temperature until Ctrl-C")
    parser.add_argument("--interval", type=float, default=1.0, metavar="S",
                        help="seconds between --watch lines (default %(default)s)")
    parser.add_argument("--count", type=int, default=0, metavar="N",
                        help="stop --watch after N lines (default: run until Ctrl-C)")
    parser.add_argument("--i2c", metavar="SPEC",
                        help="also try an INA219/INA260 over I2C, e.g. ina260@1:0x40 (default: "
                             "the PARSE_EDGE_I2C_POWER variable)")
    parser.add_argument("--root", type=Path, default=Path("/"), metavar="DIR",
                        help="read proc/, sys/ and etc/ under DIR instead of / (recorded trees; "
                             "commands such as vcgencmd still run on this machine)")
    parser.set_defaults(run=run)


def _backends(args: argparse.Namespace) -> list[Any]:
    try:
        spec = parse_i2c_spec(args.i2c) if args.i2c else None
        return make_backends(args.root / "sys", i2c=spec)
    except I2cSpecError as exc:
        source = "--i2c" if args.i2c else "PARSE_EDGE_I2C_POWER"
        raise UserError(f"{source}: {exc}") from None


def run(args: argparse.Namespace) -> int:
    """Print the probe (or watch it); returns the exit status."""
    if not (math.isfinite(args.interval) and 0.05 <= args.interval <= 3600):
        raise UserError(f"--interval: expected 0.05..3600 seconds, got {args.interval}")
    if args.count < 0:
        raise UserError(f"--count: expected a non-negative number of lines, got {args.count}")
    backends = _backends(args)
    if args.watch:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a watch ends
            _watch(args, backends)
        return 0
    info = probe_machine(args.root, with_backends=False)
    statuses = detect_backends(backends)
    info = MachineInfo(**{**asdict(info), "backends": statuses})
    if args.json:
        print(json.dumps({"machine": info.to_dict(),
                          "profiles": {n: asdict(p) for n, p in PROFILES.items()}}, indent=2))
    else:
        _print_table(info, statuses)
    return 0


def _print_table(info: MachineInfo, statuses: list[BackendStatus]) -> None:
    cpu = info.cpu_model or "-"
    if info.cpu_cores:
        cpu = f"{info.cpu_cores} x {cpu}"
    rows = [("model", info.model or "-"), ("Jetson Linux", info.l4t_release or "-"),
            ("arch", info.arch), ("CPU", cpu),
            ("memory", f"{info.memory_mb} MiB" if info.memory_mb else "-"),
            ("profile", info.profile or "not recognised")]
    reference = reference_profile(info)
    rows.append(("CPU reference", f"{reference.name} ({reference.cpu_speed_mips:.0f} 7-zip MIPS "
                 "per core; estimates scale CPU seconds from it)" if reference
                 else "none (unknown board): estimates take CPU seconds as the board's own"))
    print("machine")
    for key, value in rows:
        print(f"  {key:<13} {value}")
    print("\nenergy backends (the first available one measures)")
    for s in statuses:
        print(f"  {s.name:<7} {'yes' if s.available else 'no':<4} {s.detail}")
    print(f"\n{'profile':<18} {'arch':<7} {'cores':>5} {'RAM MB':>7} {'idle W':>7} {'busy W':>7} "
          f"{'7-zip':>6}  board")
    for p in PROFILES.values():
        print(f"{p.name:<18} {p.arch:<7} {p.cpu_cores:>5} {p.ram_mb:>7} {p.idle_w:>7.1f} "
              f"{p.busy_w:>7.1f} {p.cpu_speed_mips:>6.0f}  {p.description}")


def _open_sensor(backends: list[Any]) -> tuple[str, Sensor] | None:
    for backend in backends:
        try:
            return f"measured:{backend.name}:", backend.open()
        except SensorError:
            continue
    return None


def _watch(args: argparse.Namespace, backends: list[Any]) -> None:
    """One line per interval: UTC time, board power and its source, temperatures, throttling."""
    opened = _open_sensor(backends)
    reader = TelemetryReader(args.root)
    last_energy: tuple[float, float] | None = None
    if not args.json:
        print(f"{'time (UTC)':<24} {'power W':>8} {'SoC C':>6} {'CPU MHz':>8}  source / flags")
    printed = 0
    while args.count == 0 or printed < args.count:
        sample = reader.sample()
        power_w: float | None = None
        source = "no sensor (see `parse-edge devices`)"
        if opened is not None:
            prefix, sensor = opened
            source = prefix + sensor.label
            try:
                if isinstance(sensor, PowerSensor):
                    power_w = sensor.power_w()
                else:  # an energy counter: power is the change since the previous line
                    now = (time.monotonic(), sensor.energy_j())
                    if last_energy is not None and now[0] > last_energy[0]:
                        power_w = (now[1] - last_energy[1]) / (now[0] - last_energy[0])
                    last_energy = now
            except SensorError as exc:
                source = f"{source}: {exc}"
        sample["power_w"] = power_w if power_w is not None else math.nan
        sample["power_source"] = source
        if args.json:
            print(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v)
                              for k, v in sample.items()}), flush=True)
        else:
            flags = [k.removeprefix("pi_").removesuffix("_now") for k, v in sample.items()
                     if k.startswith("pi_") and k.endswith("_now") and v]
            if sample.get("thermal_trip_exceeded"):
                flags.append("over_trip_point")
            print(f"{str(sample['time_utc'])[:23]:<24} {_num(power_w, 2):>8} "
                  f"{_num(sample.get('soc_temp_c'), 1):>6} {_num(sample.get('cpu_freq_mhz'), 0):>8}"
                  f"  {source}{'  ' + ','.join(flags) if flags else ''}", flush=True)
        printed += 1
        if args.count == 0 or printed < args.count:
            time.sleep(args.interval)


def _num(value: object, digits: int) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:.{digits}f}"
    return "-"
