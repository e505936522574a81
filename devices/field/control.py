"""Acting on a field that is up: run a command on a board, take links down, read counters.

This is the surface a trial runner uses (docs/field.md, "Driving a field"):

- `board_argv` — the command line that runs a program inside a board's namespace (its network
  only: the file system is shared). Agents flashed over SSH need it not: the board's sshd runs
  in the namespace, so does everything started through it, the deploy's supervisor included.
- `outage_steps(plan, round_idx)` — which links go down and which come back when the fleet
  enters round `round_idx`; `apply_step` does it.
- `reboots_due(plan, round_idx)` — the boards to "reboot" on entering `round_idx`;
  `reboot_board` kills the agent process its supervisor runs (the supervisor restarts it).
- `board_counters` — the bytes the board's ``eth0`` sent and received (kernel counters).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from devices.field import impair, iproute
from devices.field.plan import FieldPlan, Link, VethEnd


def board_argv(plan: FieldPlan, board_id: str, argv: Sequence[str]) -> list[str]:
    """``ip netns exec <board namespace> ARGV``.

    Raises
    ------
    KeyError
        When the field has no board `board_id`.
    """
    return iproute.netns_exec_argv(plan.board(board_id).netns, argv)


@dataclass(frozen=True)
class OutageStep:
    """One link to take down or bring back."""

    target: Literal["board", "backhaul"]
    name: str                # board id or site name
    far: VethEnd             # the switch port whose state changes
    down: bool


def _steps(target: Literal["board", "backhaul"], name: str, far: VethEnd, link: Link,
           round_idx: int) -> list[OutageStep]:
    steps = []
    for outage in link.outages:
        if outage.round == round_idx:
            steps.append(OutageStep(target, name, far, down=True))
        if outage.up_round == round_idx:
            steps.append(OutageStep(target, name, far, down=False))
    return steps


def outage_steps(plan: FieldPlan, round_idx: int) -> list[OutageStep]:
    """List the link changes due when the fleet enters round `round_idx` (pure).

    An outage ``{round: r, up_round: u}`` takes the link down on entering round r and brings it
    back on entering round u, so the link is down for rounds r .. u-1.
    """
    steps: list[OutageStep] = []
    for site in plan.sites:
        steps += _steps("backhaul", site.name, site.far, site.backhaul, round_idx)
    for board in plan.boards:
        steps += _steps("board", board.id, board.far, board.link, round_idx)
    return steps


def apply_step(step: OutageStep) -> None:
    """Take the step's link down or bring it back up."""
    impair.set_link_down(step.far, step.down)


def set_board_link(plan: FieldPlan, board_id: str, up: bool) -> None:
    """Bring a board's link up or down now (its switch port; the board sees carrier loss)."""
    impair.set_link_down(plan.board(board_id).far, not up)


def set_backhaul(plan: FieldPlan, site: str, up: bool) -> None:
    """Cut a site off the backhaul (its core switch port) or reconnect it."""
    impair.set_link_down(plan.site(site).far, not up)


def set_board_loss(plan: FieldPlan, board_id: str, loss_percent: float) -> None:
    """Change a board's random loss now, both directions (0 removes it)."""
    board = plan.board(board_id)
    for end in (board.near, board.far):
        impair.set_loss(plan.name, end, loss_percent)


def board_counters(plan: FieldPlan, board_id: str) -> iproute.LinkCounters:
    """Kernel counters of the board's eth0: tx = what the board sent, rx = what reached it."""
    return iproute.link_counters(plan.board(board_id).near)


def reboots_due(plan: FieldPlan, round_idx: int) -> list[str]:
    """List the boards whose agent is killed on entering round `round_idx` (pure)."""
    return [b.id for b in plan.boards if round_idx in b.reboots]


def reboot_board(plan: FieldPlan, board_id: str) -> int | None:
    """Kill (SIGKILL) the agent process the board's supervisor runs, as a power cut would.

    The supervisor (``<prefix>/run``, devices/board/supervisor.py) sees its child die from a
    signal and restarts it after its backoff; the agent resumes from its checkpoint. The pid is
    read from the supervisor's state file in the board's prefix (the field's boards share this
    machine's file system and process table). Returns the killed pid, None when no agent ran.
    """
    state_file = plan.board(board_id).prefix / "run" / "state.json"
    try:
        pid = json.loads(state_file.read_text()).get("child_pid")
    except (OSError, ValueError):
        return None
    if not isinstance(pid, int) or isinstance(pid, bool):
        return None
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return None
    return pid
