"""Flash (or inspect) every board of an inventory in parallel, with a bounded pool.

Each board is independent: one board failing never stops or undoes the others. The run ends with
a table (agent, host, release, result, seconds); the caller exits non-zero if any board failed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devices.board.release import HEALTH_S
from devices.bundle import BundleError, read_metadata
from devices.flash import FlashError, Log, board_status, flash
from devices.ssh import SshOptions

if TYPE_CHECKING:  # single-board commands never load the inventory models
    from devices.inventory import Inventory

# SSH sessions and remote installs are I/O-bound for the laptop; the boards do the work.
DEFAULT_WORKERS = 8


@dataclass(frozen=True)
class BoardOutcome:
    """One row of the result table."""

    agent: str
    host: str
    release: str
    result: str  # installed | no-op | switched | failed: <why>
    seconds: float

    @property
    def ok(self) -> bool:
        """Whether the board ended on the new release."""
        return not self.result.startswith("failed")


def bundles_for(inventory: Inventory, bundle_dir: Path) -> dict[str, Path]:
    """Find every inventory agent's bundle: ``bundle_dir/<agent>.tar.gz`` (--all-agents).

    Raises
    ------
    InventoryError
        When an agent of the inventory has no bundle (it is not an agent of the bundled config)
        or a bundle belongs to another agent.
    """
    from devices.inventory import InventoryError

    found = {p.name.removesuffix(".tar.gz"): p for p in sorted(bundle_dir.glob("*.tar.gz"))}
    result = {}
    for agent in inventory:
        path = found.get(agent)
        if path is None:
            known = ", ".join(found) or "none"
            raise InventoryError(f"{inventory.source}: boards.{agent}: expected an agent with a "
                                 f"bundle in {bundle_dir} (bundled agents: {known})")
        try:
            owner = read_metadata(path).get("agent")
        except BundleError as exc:
            raise InventoryError(str(exc)) from None
        if owner != agent:
            raise InventoryError(f"{path}: bundle.json: agent: expected {agent!r}, got {owner!r}")
        result[agent] = path
    return result


def _locked_log(log: Log) -> Log:
    lock = threading.Lock()

    def write(line: str) -> None:
        with lock:
            log(line)
    return write


def flash_fleet(inventory: Inventory, bundles: dict[str, Path], options: SshOptions, *,
                workers: int = DEFAULT_WORKERS, start: bool = True, health_s: float = HEALTH_S,
                log: Log = print) -> list[BoardOutcome]:
    """Flash every board of `inventory` with its bundle, at most `workers` at a time."""
    log = _locked_log(log)

    def one(agent: str) -> BoardOutcome:
        board = inventory.board(agent)
        started = time.perf_counter()
        try:
            result = flash(bundles[agent], board, inventory.ssh_options(agent, options),
                           start=start, health_s=health_s, log=log)
        except FlashError as exc:
            log(f"error: {exc}")
            return BoardOutcome(agent, str(board.target), "-", f"failed: {exc}",
                                time.perf_counter() - started)
        return BoardOutcome(agent, result.host, result.release, result.action, result.seconds)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(one, list(inventory)))


def status_fleet(inventory: Inventory, options: SshOptions, *,
                 workers: int = DEFAULT_WORKERS) -> list[dict[str, Any]]:
    """Every board's status (see :func:`devices.flash.board_status`) plus agent and host."""
    def one(agent: str) -> dict[str, Any]:
        board = inventory.board(agent)
        row: dict[str, Any] = {"agent": agent, "host": str(board.target)}
        try:
            row.update(board_status(board, inventory.ssh_options(agent, options)))
        except FlashError as exc:
            row["error"] = str(exc)
        return row

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(one, list(inventory)))


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Format a plain fixed-width text table."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def outcome_table(outcomes: Sequence[BoardOutcome]) -> str:
    """Format the per-board result table of a fleet flash."""
    return table(["agent", "host", "release", "result", "seconds"],
                 [(o.agent, o.host, o.release, o.result, f"{o.seconds:.1f}") for o in outcomes])


def status_table(rows: Sequence[dict[str, Any]]) -> str:
    """Format the per-board status table: release, running, last round and accuracy."""
    out = []
    for r in rows:
        metrics = r.get("last_metrics") or {}
        last = (f"round {metrics.get('round')}/{metrics.get('rounds')} accuracy "
                f"{metrics.get('accuracy'):.3f}" if "accuracy" in metrics else
                (", ".join(f"{k}={v}" for k, v in list(metrics.items())[:3]) or "-"))
        state = ("error: " + r["error"]) if "error" in r else (
            f"running (pid {r.get('pid')})" if r.get("running") else "stopped")
        out.append((r["agent"], r["host"], r.get("current") or "-", state, last))
    return table(["agent", "host", "current", "agent process", "last metrics"], out)
