"""`parse-edge devices`: list the device profiles agents can declare."""

from __future__ import annotations

import argparse

from devices.profiles import PROFILES


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str) -> None:
    """Register the `devices` subcommand."""
    parser = sub.add_parser(
        name, help="list device profiles", description="List the device profiles an agent may use."
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print one row per profile."""
    print(f"{'profile':<18} {'arch':<8} {'cores':>5} {'RAM MB':>7} {'idle W':>7} {'busy W':>7}  board")
    for p in PROFILES.values():
        busy_w = p.idle_w + p.active_extra_w
        print(f"{p.name:<18} {p.arch:<8} {p.cpu_cores:>5} {p.ram_mb:>7} {p.idle_w:>7.1f} "
              f"{busy_w:>7.1f}  {p.description}")
    return 0
