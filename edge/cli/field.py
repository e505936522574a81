"""`parse-edge field`: a virtual field on this machine, every board a network namespace.

`field up FIELD.yaml` builds it (namespaces, links, sshd per board, Mosquitto per site, bridges)
and writes an inventory for `parse-edge flash --inventory`; `field down FIELD.yaml` removes it;
`field status` shows each board's link and counters; `field link` takes a link down or up.
The machinery lives in `devices.field`; this module validates, checks the boards against the
fleet config the field names, and prints. See docs/field.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from edge.errors import UserError

if TYPE_CHECKING:
    from devices.field.spec import FieldSpec

T = TypeVar("T")


class FieldFailed(UserError):
    """A field command failed on the system's side (a tool, a daemon): exit status 1."""

    exit_code = 1


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str) -> None:
    """Register `field up|down|status|link`."""
    parser = sub.add_parser(
        name, help="a virtual field: every board a network namespace with its own link",
        description="Bring a virtual field up or down on this machine (root only): one network "
                    "namespace per board with an sshd, one Mosquitto per site bridged over a "
                    "rate-capped backhaul, rate caps and loss on each board's link. See "
                    "docs/field.md.")
    actions = parser.add_subparsers(dest="field_command", metavar="ACTION")
    actions.required = True
    up = actions.add_parser("up", help="create the field and write its inventory",
                            description="Create the field described by FIELD.yaml (idempotent: "
                                        "the same description already up is left alone) and "
                                        "write the boards' inventory for `flash --inventory`.")
    up.add_argument("field", metavar="FIELD.yaml", help="field file")
    up.add_argument("--inventory", metavar="FILE", default=None,
                    help="also copy the inventory here (it is always written to the field's "
                         "run directory)")
    up.set_defaults(run=run_up)
    down = actions.add_parser("down", help="remove everything the field created",
                              description="Stop every process in the field's namespaces, remove "
                                          "its namespaces, links, qdiscs, nftables tables, keys "
                                          "and run directory. Board prefixes are kept.")
    down.add_argument("field", metavar="FIELD.yaml", help="field file")
    down.set_defaults(run=run_down)
    status = actions.add_parser("status", help="per board: address, link, sshd, byte counters",
                                description="Show each board's address, link settings, link "
                                            "state, sshd and kernel byte counters; exit status 1 "
                                            "when the field is not fully up.")
    status.add_argument("field", metavar="FIELD.yaml", help="field file")
    status.set_defaults(run=run_status)
    link = actions.add_parser("link", help="take a board's link or a site's backhaul down or up",
                              description="Take a board's link (its switch port) or, with "
                                          "backhaul:SITE, a site's backhaul down or up now.")
    link.add_argument("field", metavar="FIELD.yaml", help="field file")
    link.add_argument("target", metavar="BOARD|backhaul:SITE", help="what to change")
    link.add_argument("state", choices=["up", "down"], help="the new state")
    link.set_defaults(run=run_link)


def run(args: argparse.Namespace) -> int:
    """Dispatch to the chosen action (argparse sets `run` per action; this is the fallback)."""
    return int(args.run(args))


def _load(path: str) -> FieldSpec:
    from devices.field.spec import FieldSpecError, load_field

    try:
        return load_field(path)
    except FieldSpecError as exc:
        raise UserError(str(exc)) from None


def check_fleet(spec: FieldSpec) -> None:
    """Check that the field's boards are exactly the agents of the fleet it names (if any).

    Raises
    ------
    UserError
        Naming the agents without a board, or the boards that are not agents.
    """
    from edge.config.load import load_config

    if spec.fleet_path is None:
        return
    check_fleet_file(spec)
    cfg = load_config(spec.fleet_path)
    boards, agents = spec.board_ids, cfg.agent_ids
    missing = [a for a in agents if a not in boards]
    extra = [b for b in boards if b not in agents]
    if missing:
        raise UserError(f"{spec.source}: sites: expected a board for every agent of fleet "
                        f"{cfg.fleet}; none for {', '.join(missing)}")
    if extra:
        raise UserError(f"{spec.source}: sites: expected agents of fleet {cfg.fleet} "
                        f"({spec.fleet_path}); {', '.join(extra)} are not")


def check_fleet_file(spec: FieldSpec) -> None:
    """Refuse a field file whose `fleet` names no file, in the field file's name.

    Raises
    ------
    UserError
        When `fleet` is set and is not a file (the fleet config's own error would not say who
        asked for it).
    """
    if spec.fleet_path is not None and not spec.fleet_path.is_file():
        raise UserError(f"{spec.source}: fleet: expected an existing fleet config file, got "
                        f"{spec.fleet_path} (a relative path is read from the field file's folder)")


def field_call(action: str, call: Callable[[], T]) -> T:
    """Run a devices.field call; its errors end as one line (exit 2: input, 1: the system)."""
    from devices.field.daemons import DaemonError
    from devices.field.iproute import FieldCommandError
    from devices.field.lifecycle import FieldConflictError, FieldPermissionError
    from devices.field.state import StateError

    try:
        return call()
    except (FieldPermissionError, FieldConflictError, StateError) as exc:
        raise UserError(str(exc)) from None
    except (FieldCommandError, DaemonError, RuntimeError, OSError) as exc:
        raise FieldFailed(f"field {action}: {exc}") from None


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_up(args: argparse.Namespace) -> int:
    """Bring the field up and say how to reach it."""
    from devices.field.lifecycle import field_up, require_root

    field_call("up", lambda: require_root("field up"))
    spec = _load(args.field)
    check_fleet(spec)
    result = field_call("up", lambda: field_up(spec, progress=_progress))
    if args.inventory:
        shutil.copyfile(result.paths.inventory, Path(args.inventory))
    plan = result.plan
    verb = "already up" if result.already_up else f"up in {result.up_s:.1f} s"
    print(f"field {plan.name} {verb}: {len(plan.boards)} boards in {len(plan.sites)} site(s), "
          f"hub {plan.hub}")
    print(f"inventory: {args.inventory or result.paths.inventory}")
    print(f"log in:    ssh -i {result.paths.identity} "
          f"-o UserKnownHostsFile={result.paths.known_hosts} root@{plan.boards[0].address}")
    for site in plan.sites:
        print(f"broker:    site {site.name} {site.broker_url}")
    return 0


def run_down(args: argparse.Namespace) -> int:
    """Remove the field."""
    from devices.field.lifecycle import field_down, require_root

    field_call("down", lambda: require_root("field down"))
    spec = _load(args.field)
    result = field_call("down", lambda: field_down(spec, progress=_progress))
    print(f"field {spec.name}: nothing to remove" if result.nothing else f"field {spec.name} is down")
    return 0


def run_status(args: argparse.Namespace) -> int:
    """One line per board; exit 1 when the field is not fully up."""
    from devices.field.lifecycle import require_root
    from devices.field.status import field_status

    field_call("status", lambda: require_root("field status"))
    spec = _load(args.field)
    report = field_call("status", lambda: field_status(spec))
    print(report.render())
    return 0 if report.up else 1


def run_link(args: argparse.Namespace) -> int:
    """Take a link down or bring it up."""
    from devices.field import control
    from devices.field.lifecycle import require_root
    from devices.field.plan import plan_field

    field_call("link", lambda: require_root("field link"))
    spec = _load(args.field)
    plan = plan_field(spec)
    up = args.state == "up"
    target: str = args.target
    if target.startswith("backhaul:"):
        site = target.removeprefix("backhaul:")
        if site not in spec.doc.sites:
            raise UserError(f"target: expected backhaul:SITE with a site of {spec.source}, "
                            f"got {target}")
        field_call("link", lambda: control.set_backhaul(plan, site, up))
    else:
        if target not in spec.board_ids:
            raise UserError(f"target: expected a board of {spec.source} or backhaul:SITE, "
                            f"got {target}")
        field_call("link", lambda: control.set_board_link(plan, target, up))
    print(f"{target}: link {args.state}")
    return 0
