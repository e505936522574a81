"""`parse-edge trial FIELD.yaml`: a field trial on a virtual field, boards flashed over SSH.

The field (devices.field) is brought up, or reused when the same description is up; every
board is bundled and flashed over SSH into its namespace exactly as a real board is
(edge.trial.field_boards); the trial runner (edge.trial.runner) then runs the trial with one
difference: an agent is started and stopped through its board's supervisor, over SSH, and its
metrics are read from the board's prefix. Link faults come from the field file and fire as the
fleet enters their round, with the runner's trigger rule (edge.trial.faults):

- a link outage ``{round: r, up_round: u}`` of a board (or a site's backhaul) keeps the board
  out of the exchanges mixed in rounds r .. u-1. A round mixes the updates sent at the end of
  the round before, so the switch port goes down once the fleet is through round r-2's exchange
  (every running agent reported round r-2, and neither the link nor a site's backhaul carried
  anything for one poll: those updates are through) - before round r-1's updates are sent - and
  comes back as the fleet enters round u (every agent reported round u-1). The updates of rounds
  r-1 .. u-2 cannot cross it. Round u-1's, sent just before the link comes back, cross it in
  time for round u's mix: the board's MQTT client sees its carrier return and reconnects at once
  (broker.carrier) rather than waiting for TCP's backed-off retransmission, and the broker
  resends what it had in flight on the old connection. The interface is down, not the agent: it
  trains alone meanwhile;
- a board reboot at round r: when the board has reported round r-1 its agent process is killed
  (SIGKILL) and its supervisor restarts it; it resumes from its checkpoint and rejoins.

Loss and rate caps are the links' own (nftables, tc) for the whole trial. At the end each board's
files are copied into the trial's folder, the record gets a `field` section (per board: site,
link, the bytes the OS counted on its eth0 beside the MQTT layer's, the protocol overhead; per
fault: what it did and the rounds with missed mixes), and a field the trial brought up is taken
down again (one it found up is left up, its agents stopped).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from devices.field import control
from devices.field.iproute import FieldCommandError, link_counters
from devices.field.lifecycle import field_down, field_up, require_root
from devices.field.plan import FieldPlan
from devices.field.spec import FieldSpec, FieldSpecError, load_field
from edge.config.load import is_field_document, load_config
from edge.config.schema import FleetConfig
from edge.errors import UserError
from edge.records import SummaryDoc
from edge.summary import agent_rows, round_ranges
from edge.trial.console import Console
from edge.trial.coverage import expected_mixes
from edge.trial.field_boards import FieldBoards
from edge.trial.field_record import PROTOCOL_OVERHEAD, counter_delta, interface_vs_mqtt, missed_mix_rounds
from edge.trial.launch import Launcher
from edge.trial.runner import TrialResult, TrialRunner
from edge.trial.setup import TrialOptions, prepare_out
from edge.trial.summary import read_final
from edge.trial.watch import JsonlTail

HEALTH_S = 0.0   # flash without starting: nothing to watch stay up
POLL_S = 0.05


@dataclass
class FieldFault:
    """One link fault of the field file and what the trial did about it."""

    kind: str                  # link-down | backhaul-down | reboot
    target: str                # board id, or site name for the backhaul
    round: int
    up_round: int | None = None
    status: str = "pending"    # pending | down | injected | skipped | not reached
    at_s: float | None = None
    up_at_s: float | None = None
    note: str = ""
    missed_mix_rounds: list[int] = field(default_factory=list)
    outcome: str = ""


def field_faults(plan: FieldPlan) -> list[FieldFault]:
    """Every outage and reboot the field file configures, in round order."""
    faults = [FieldFault("backhaul-down", s.name, o.round, o.up_round)
              for s in plan.sites for o in s.backhaul.outages]
    faults += [FieldFault("link-down", b.id, o.round, o.up_round)
               for b in plan.boards for o in b.link.outages]
    faults += [FieldFault("reboot", b.id, r) for b in plan.boards for r in b.reboots]
    return sorted(faults, key=lambda f: (f.round, f.kind, f.target))


def _as_dict(counters: Any) -> dict[str, int] | None:
    return None if counters is None else asdict(counters)


class FieldTrialRunner(TrialRunner):
    """The trial runner on a field: agents on boards, link faults from the field file."""

    def __init__(self, cfg: FleetConfig, opts: TrialOptions, spec: FieldSpec, plan: FieldPlan,
                 boards: FieldBoards, console: Console | None = None) -> None:
        super().__init__(cfg, replace(opts, broker=plan.site(plan.hub).broker_url), console=console)
        self.spec, self.field_plan, self.boards = spec, plan, boards
        self.field_faults = field_faults(plan)
        self._last_bytes: dict[str, tuple[tuple[int, int], ...]] = {}
        # The record is read where each board's agent writes it: its prefix.
        for agent_id in self.ids:
            self.watch.tails[agent_id] = JsonlTail(boards.boards[agent_id].agent_dir / "metrics.jsonl")

    def _make_launcher(self) -> Launcher:
        from edge.trial.field_boards import BoardLauncher

        return BoardLauncher(self.boards)

    def _on_poll(self) -> None:
        done = self.watch.completed
        running = [done[a] for a, p in self.agents.items() if p.starts]
        # The fleet has left round r-1 once its slowest running agent reported it: every
        # update of round r-1 is published (and, on an uncongested link, delivered).
        fleet = min(running, default=-1)
        for fault in self.field_faults:
            reached = done.get(fault.target, -1) if fault.kind == "reboot" else fleet
            # A reboot fires as the board enters its round; a link goes down one round early,
            # before the updates its first round mixes are sent (see the module docstring).
            due = fault.round - 1 if fault.kind == "reboot" else fault.round - 2
            # Before round 0 that moment is the quorum: a link cut earlier would keep its board
            # from ever announcing itself, a reboot would hit an agent still importing torch.
            started = due >= 0 or self.narrator.startup.quorum_s is not None
            if fault.status == "pending" and reached >= due and started:
                if fault.kind == "reboot" or self._quiet(fault):
                    self._inject(fault, reached)
            elif fault.status == "down" and fault.up_round is not None \
                    and reached >= fault.up_round - 1:
                self._set_link(fault, up=True)
                fault.status, fault.up_at_s = "injected", round(self.now_s(), 3)
                fault.note += f"; up after round {reached}"
                self._fault_event(fault, f"link back up as the fleet enters round "
                                  f"{fault.up_round} (every agent reported round {reached})")

    def _quiet(self, fault: FieldFault) -> bool:
        """Whether the fault's link, and every site's backhaul, carried nothing since the last look.

        Round r-1's updates may still be on a capped link after every agent reported the
        round (a 60 kB update takes 0.24 s at 2000 kbit/s); cutting them would make round r's
        mix miss them too. The link is idle once they are through: the agents train. The
        backhauls count too: a neighbour's update from another site crosses the backhaul (and
        the bridge between the brokers) before it reaches the board's link, which can look idle
        meanwhile.
        """
        ends = [self.field_plan.board(fault.target).near if fault.kind == "link-down"
                else self.field_plan.site(fault.target).near]
        if len(self.field_plan.sites) > 1:
            ends += [site.near for site in self.field_plan.sites if site.near not in ends]
        try:
            seen = tuple((c.tx_bytes, c.rx_bytes) for c in map(link_counters, ends))
        except FieldCommandError:
            return True
        quiet = self._last_bytes.get(fault.target) == seen
        self._last_bytes[fault.target] = seen
        return quiet

    def _inject(self, fault: FieldFault, reached: int) -> None:
        fault.at_s = round(self.now_s(), 3)
        if fault.kind == "reboot":
            pid = control.reboot_board(self.field_plan, fault.target)
            if pid is None:
                fault.status, fault.note = "skipped", "no agent process ran on the board"
                return
            fault.status, fault.note = "injected", f"agent pid {pid} killed (SIGKILL)"
            self.event("fault", fault.target, f"reboot at round {fault.round}: agent pid {pid} "
                       "killed; its supervisor restarts it")
            return
        self._set_link(fault, up=False)
        fault.status, fault.note = "down", f"down after round {reached}"
        self._fault_event(fault, f"link down before the updates round {fault.round} mixes "
                          f"are sent (every agent reported round {reached}); back as the fleet "
                          f"enters round {fault.up_round}")

    def _fault_event(self, fault: FieldFault, detail: str) -> None:
        # A board's link fault is the board's event ("fault: a7: link down ..."); a backhaul's
        # names its site in the text, as no agent is the subject.
        if fault.kind == "link-down":
            self.event("fault", fault.target, detail)
        else:
            self.event("fault", None, f"{fault.kind} {fault.target}: {detail}")

    def _set_link(self, fault: FieldFault, up: bool) -> None:
        if fault.kind == "link-down":
            control.set_board_link(self.field_plan, fault.target, up)
        else:
            control.set_backhaul(self.field_plan, fault.target, up)

    def _before_record(self) -> None:
        for fault in self.field_faults:
            if fault.status == "down":  # the trial ended during the outage: give the link back
                self._set_link(fault, up=True)
                fault.status, fault.note = "injected", "the trial ended before its up round"
            elif fault.status == "pending":
                fault.status = "not reached"
        self.boards.collect(self.out)

    def _extend_record(self, doc: SummaryDoc) -> None:
        cfg = self.cfg
        rows = self.watch.rows
        expected = expected_mixes(cfg, cfg.strategy, cfg.training.rounds)
        by_agent = agent_rows(rows)
        block = doc["strategies"][cfg.strategy]
        boards: dict[str, Any] = {}
        for agent_id, fb in self.boards.boards.items():
            c = fb.counters
            delta = counter_delta(_as_dict(c.started), _as_dict(c.ended))
            final = read_final(self.out / "agents" / agent_id / "final.json")
            measured = interface_vs_mqtt(delta, final)
            link = fb.plan.link
            boards[agent_id] = {
                "site": fb.plan.site, "address": str(fb.plan.address), "netns": fb.plan.netns,
                "interface": f"{fb.plan.netns}:{fb.plan.near.ifname}",
                "link": {"rate_kbit": link.rate_kbit, "loss_percent": link.loss_percent,
                         "outages": [[o.round, o.up_round] for o in link.outages],
                         "reboots": list(fb.plan.reboots)},
                "release": fb.release, "flash": fb.flash_action,
                "missed_mix_rounds": missed_mix_rounds(agent_id, rows, expected),
                **measured,
            }
            block["agents"][agent_id]["interface"] = measured
        for fault in self.field_faults:
            if fault.kind in ("link-down", "reboot") and fault.status == "injected":
                fault.missed_mix_rounds = [r for r in boards[fault.target]["missed_mix_rounds"]
                                           if r >= fault.round]
                rounds = by_agent.get(fault.target, [])
                trained = {int(r["round"]) for r in rounds}
                lost = [r for r in range(cfg.training.rounds) if r not in trained]
                # The report's row already names the target: say rounds as ranges, not again who.
                fault.outcome = ("mixes missed in rounds "
                                 f"{round_ranges(fault.missed_mix_rounds) or 'none'}; it trained "
                                 f"{len(trained)}/{cfg.training.rounds} rounds"
                                 + (f" (not {round_ranges(lost)})" if lost else ""))
        doc["trial"]["field"] = {
            "name": self.field_plan.name, "source": self.spec.source, "hub": self.field_plan.hub,
            "sites": {s.name: {"broker": s.broker_url, "lan": str(s.lan),
                               "backhaul": {"rate_kbit": s.backhaul.rate_kbit,
                                            "loss_percent": s.backhaul.loss_percent},
                               "boards": [b.id for b in s.boards]}
                      for s in self.field_plan.sites},
            "boards": boards,
            "faults": [asdict(f) for f in self.field_faults],
            "protocol_overhead": PROTOCOL_OVERHEAD,
        }


def field_file_fleet(path: str) -> str | None:
    """The fleet config a field file names, or None when `path` is not a field file.

    Raises
    ------
    UserError
        For a field file that is invalid or names no fleet.
    """
    spec = field_spec_of(path)
    return None if spec is None else str(spec.fleet_path)


def field_spec_of(path: str) -> FieldSpec | None:
    """The validated field file at `path`, or None when it is not a field file.

    A field file is a YAML mapping with the keys `field` and `sites` (docs/field.md); anything
    else is left to the fleet config loader and its errors.

    Raises
    ------
    UserError
        For a field file that is invalid or names no (existing) fleet.
    """
    import yaml

    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if not is_field_document(doc):
        return None
    return load_field_spec(path)


def require_field_root() -> None:
    """Refuse a field trial without root, in one line saying why.

    Raises
    ------
    UserError
        When the effective user is not root.
    """
    from devices.field.lifecycle import FieldPermissionError

    try:
        require_root("trial on a field")
    except FieldPermissionError as exc:
        raise UserError(str(exc)) from None


def load_field_spec(path: str) -> FieldSpec:
    """Load a field file; its errors are one line.

    Raises
    ------
    UserError
        On an invalid field file, or one that names no fleet config.
    """
    try:
        spec = load_field(path)
    except FieldSpecError as exc:
        raise UserError(str(exc)) from None
    if spec.fleet_path is None:
        raise UserError(f"{spec.source}: fleet: expected the fleet config the boards run "
                        "(a trial needs one)")
    from edge.cli.field import check_fleet_file

    check_fleet_file(spec)
    return spec



def run_field_trial(field_path: str, opts: TrialOptions, console: Console | None = None,
                    progress: Any = print) -> TrialResult:
    """Run a trial of the fleet a field file names, on that field.

    Brings the field up (or reuses it), flashes every board, runs the trial, writes the record,
    and takes down a field it brought up - also when interrupted.

    Raises
    ------
    UserError
        Not root, a bad field or fleet file, boards that are not the fleet's agents, an earlier
        record in ``opts.out``, or a board that cannot be flashed.
    """
    from edge.cli.field import check_fleet, field_call

    require_field_root()
    spec = load_field_spec(field_path)
    check_fleet(spec)
    assert spec.fleet_path is not None
    cfg = load_config(spec.fleet_path)
    # Link faults fire as the fleet enters a round: look often (rounds may take well under 1 s).
    opts = replace(opts, config_path=str(spec.fleet_path), poll_s=min(opts.poll_s, POLL_S))
    prepare_out(Path(opts.out), opts.force)
    t0 = time.monotonic()
    # A field that will not come up (another description up, a taken subnet, a missing tool, a
    # daemon that fails) is one line, as with `field up`.
    up = field_call("up", lambda: field_up(spec, progress=progress))
    brought_up = not up.already_up
    progress(f"[field] {up.plan.name} {'up' if brought_up else 'already up (reused)'}: "
             f"{len(up.plan.boards)} boards in {len(up.plan.sites)} site(s), hub {up.plan.hub} "
             f"({time.monotonic() - t0:.1f} s)")
    try:
        boards = FieldBoards(spec, up.plan, up.paths, progress)
        runner = FieldTrialRunner(cfg, replace(opts, force=True), spec, up.plan, boards, console)
        boards.flash_all(runner.cfg, runner.quorum, HEALTH_S)
        return runner.run()
    finally:
        if brought_up:
            field_call("down", lambda: field_down(spec, progress=progress))
            progress(f"[field] {up.plan.name} taken down (the trial brought it up)")


__all__ = ["FieldFault", "FieldTrialRunner", "field_faults", "field_file_fleet", "load_field_spec",
           "require_field_root", "run_field_trial"]
