"""What a field looks like right now: per board its link state, sshd and byte counters."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from devices.field import iproute
from devices.field.lifecycle import healthy, process_alive_in
from devices.field.plan import RUN_ROOT, plan_field
from devices.field.spec import FieldSpec
from devices.field.state import load_state


@dataclass(frozen=True)
class BoardStatus:
    """One board now."""

    id: str
    site: str
    address: str
    rate_kbit: float | None
    loss_percent: float
    link_state: str          # eth0 operstate: UP, LOWERLAYERDOWN (switch port down), ...
    sshd_running: bool
    tx_bytes: int
    rx_bytes: int


@dataclass(frozen=True)
class SiteStatus:
    """One site now."""

    name: str
    broker_url: str
    broker_running: bool
    backhaul_state: str


@dataclass(frozen=True)
class FieldStatus:
    """The field now; `up` is False when it is not (fully) up."""

    name: str
    up: bool
    boards: tuple[BoardStatus, ...]
    sites: tuple[SiteStatus, ...]

    def render(self) -> str:
        """Render a table for the terminal."""
        if not self.boards:
            return f"field {self.name} is not up"
        lines = [f"field {self.name} is {'up' if self.up else 'NOT fully up'}",
                 f"{'board':<16} {'site':<10} {'address':<15} {'rate kbit/s':>11} {'loss %':>6} "
                 f"{'link':<14} {'sshd':<5} {'tx bytes':>12} {'rx bytes':>12}"]
        for b in self.boards:
            rate = f"{b.rate_kbit:g}" if b.rate_kbit is not None else "-"
            lines.append(f"{b.id:<16} {b.site:<10} {b.address:<15} {rate:>11} "
                         f"{b.loss_percent:>6g} {b.link_state:<14} "
                         f"{'yes' if b.sshd_running else 'no':<5} {b.tx_bytes:>12} {b.rx_bytes:>12}")
        for s in self.sites:
            lines.append(f"site {s.name}: broker {s.broker_url} "
                         f"{'running' if s.broker_running else 'NOT running'}, "
                         f"backhaul {s.backhaul_state}")
        return "\n".join(lines)


def field_status(spec: FieldSpec, run_root: Path = RUN_ROOT) -> FieldStatus:
    """Read the field's state, link states and counters (no board tables when it is not up)."""
    plan = plan_field(spec, run_root)
    state = load_state(plan.run_dir)
    if state is None:
        return FieldStatus(plan.name, False, (), ())
    existing = iproute.netns_names()
    running = {(p.role, p.owner) for p in state.processes
               if p.netns in existing and process_alive_in(p.pid, p.netns)}
    boards = []
    for b in plan.boards:
        if b.netns in existing and iproute.link_exists(b.near):
            counters = iproute.link_counters(b.near)
            link_state, tx, rx = counters.operstate, counters.tx_bytes, counters.rx_bytes
        else:
            link_state, tx, rx = "missing", 0, 0
        boards.append(BoardStatus(b.id, b.site, str(b.address), b.link.rate_kbit,
                                  b.link.loss_percent, link_state, ("sshd", b.id) in running,
                                  tx, rx))
    sites = []
    for s in plan.sites:
        backhaul = iproute.link_counters(s.near).operstate \
            if s.netns in existing and iproute.link_exists(s.near) else "missing"
        sites.append(SiteStatus(s.name, s.broker_url, ("mosquitto", s.name) in running, backhaul))
    return FieldStatus(plan.name, healthy(plan, state), tuple(boards), tuple(sites))
