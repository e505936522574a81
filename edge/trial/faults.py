"""Fault orchestration for a trial: when to stop, restart and bring back agents and the broker.

Trigger rule ("the fleet reaches round r"):
- `leave` of agent X at round r: when X itself has reported round r-1, so X never runs round r
  (r = 0: X is not started with the others);
- its return at round R: when any *other* agent has reported round R-2, i.e. the first agents are
  entering round R-1; X restarts with the same --out, loads its checkpoint and joins at its
  neighbours' next round (edge.learning.rounds.join_round): R when it is up within a round, later
  if its start-up takes longer. The rounds it was away are missed, not trained alone;
- `broker-restart` at round r: when any agent has reported round r-1 (updates of round r-1 are in
  flight); the embedded broker is stopped and started again on the same port. An external broker
  (mqtt://...) is not the runner's to restart: the fault is reported as skipped.
`delay` and `loss` are applied by the agents themselves to their outgoing updates (they read
cfg.faults); the runner only reports their effect.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

from edge.config.schema import FaultConfig
from edge.records import MetricsRow
from edge.summary import round_ranges
from edge.trial.coverage import sender_coverage


class Action(NamedTuple):
    """Something the runner must do now."""

    verb: str          # "stop" | "start" | "broker-restart"
    fault_idx: int
    agent: str | None


@dataclass
class FaultRecord:
    """One configured fault and what the runner did about it."""

    kind: str
    round: int | None
    agent: str | None
    return_round: int | None
    agents: list[str]
    delay_ms: float
    loss_percent: float
    status: str = "pending"  # pending | injected | applied-by-agents | skipped | not reached
    injected_at_s: float | None = None
    trigger: str = ""
    returned_at_s: float | None = None
    return_trigger: str = ""
    note: str = ""
    stopped_after_round: int | None = None
    rows_before_return: int | None = None
    # Filled in after the trial from the metrics rows.
    resumed_at_round: int | None = None
    outcome: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return the record as JSON-ready data."""
        return asdict(self)


def fault_record(fault: FaultConfig) -> FaultRecord:
    """Make a fresh record for one configured fault."""
    timed = fault.kind in ("leave", "broker-restart")
    record = FaultRecord(
        kind=fault.kind, round=fault.round if timed else None,
        agent=fault.agent, return_round=fault.return_round, agents=list(fault.agents),
        delay_ms=fault.delay_ms, loss_percent=fault.loss_percent)
    if not timed:
        record.status = "applied-by-agents"
    return record


class FaultPlan:
    """Decides, from per-agent progress, which fault actions are due."""

    def __init__(self, faults: tuple[FaultConfig, ...], embedded_broker: bool) -> None:
        self.faults = faults
        self.records = [fault_record(f) for f in faults]
        self._returned: set[int] = set()
        for i, f in enumerate(faults):
            if f.kind == "broker-restart" and not embedded_broker:
                self.records[i].status = "skipped"
                self.records[i].note = "external broker: the runner cannot restart it"

    def held_back(self) -> set[str]:
        """Agents that leave at round 0: not started with the others."""
        return {f.agent for f in self.faults if f.kind == "leave" and f.round == 0 and f.agent}

    def due(self, completed: dict[str, int]) -> list[Action]:
        """Actions whose trigger is met; `completed` is each agent's highest reported round."""
        actions = []
        for i, (f, rec) in enumerate(zip(self.faults, self.records, strict=True)):
            if f.kind == "leave" and f.agent is not None:
                # Round 0 leaves are held back at launch (see held_back), not stopped here.
                if rec.status == "pending" and f.round > 0 and completed.get(f.agent, -1) >= f.round - 1:
                    actions.append(Action("stop", i, f.agent))
                elif rec.status == "injected" and f.return_round is not None \
                        and i not in self._returned:
                    others = [r for a, r in completed.items() if a != f.agent]
                    if others and max(others) >= f.return_round - 2:
                        actions.append(Action("start", i, f.agent))
            elif f.kind == "broker-restart" and rec.status == "pending" \
                    and max(completed.values(), default=-1) >= f.round - 1:
                actions.append(Action("broker-restart", i, None))
        return actions

    def mark_injected(self, idx: int, t_s: float, trigger: str, note: str = "") -> None:
        """Record that fault `idx` fired at `t_s` seconds into the trial, and why."""
        rec = self.records[idx]
        rec.status, rec.injected_at_s, rec.trigger = "injected", round(t_s, 3), trigger
        if note:
            rec.note = note

    def mark_returned(self, idx: int, t_s: float, trigger: str) -> None:
        """Record that the agent of leave fault `idx` was started again."""
        self._returned.add(idx)
        rec = self.records[idx]
        rec.returned_at_s, rec.return_trigger = round(t_s, 3), trigger

    def pending_returns(self) -> list[int]:
        """Leave faults whose agent should still come back."""
        return [i for i, (f, rec) in enumerate(zip(self.faults, self.records, strict=True))
                if f.kind == "leave" and f.return_round is not None and rec.status == "injected"
                and i not in self._returned]

    def close(self) -> None:
        """At the end: faults whose trigger never came are 'not reached'."""
        for i, rec in enumerate(self.records):
            if rec.status == "pending":
                rec.status = "not reached"
            elif i in self.pending_returns():
                rec.note = (rec.note + "; " if rec.note else "") + "return round not reached"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def describe_outcomes(records: list[FaultRecord], rows_by_agent: dict[str, list[MetricsRow]],
                      coverage: dict[str, Any], rounds: int) -> None:
    """Fill in `resumed_at_round` and a one-line `outcome` for every record.

    From the rows and the mix coverage (see edge.trial.coverage).
    """
    completed = {a: len({int(r["round"]) for r in rows}) for a, rows in rows_by_agent.items()}
    done = sum(1 for n in completed.values() if n >= rounds)
    everyone = f"{done}/{len(completed)} agents completed all {rounds} rounds"
    for rec in records:
        if rec.kind == "leave" and rec.agent is not None and rec.round is not None:
            rows = rows_by_agent.get(rec.agent, [])
            if rec.status != "injected":
                rec.outcome = f"not injected ({rec.status}); {everyone}"
                continue
            back = rec.return_round if rec.return_round is not None else rounds
            # Neighbours mix round-r updates at round r+1: absence rounds r..back-1 show up in
            # mixing rounds r+1..back.
            gone = sender_coverage(coverage, rec.agent, range(rec.round + 1, back + 1))
            before = sender_coverage(coverage, rec.agent, range(1, rec.round + 1))
            if rec.round == 0:
                text = f"{rec.agent} was not started with the others"
            else:
                text = (f"{rec.agent} stopped after its round {rec.stopped_after_round}; neighbours "
                        f"mixed its updates in {_pct(gone)} of the expected slots while it was away "
                        f"({_pct(before)} before)")
            if rec.rows_before_return is not None:
                if len(rows) > rec.rows_before_return:
                    rec.resumed_at_round = int(rows[rec.rows_before_return]["round"])
                    trained = {int(r["round"]) for r in rows}
                    missed = [r for r in range(rounds) if r not in trained]
                    text += (f"; it came back and joined at round {rec.resumed_at_round}; "
                             f"{len(trained)}/{rounds} rounds trained, {len(missed)} missed"
                             + (f" ({round_ranges(missed)})" if missed else ""))
                else:
                    text += "; it was restarted but wrote no further rounds"
            rec.outcome = f"{text}; {everyone}"
        elif rec.kind == "broker-restart":
            if rec.status != "injected":
                rec.outcome = f"not injected ({rec.status}{': ' + rec.note if rec.note else ''}); {everyone}"
                continue
            r = rec.round or 0
            around = [coverage.get("per_round", {}).get(k) for k in (r, r + 1)]
            shown = ", ".join(f"round {k}: {_pct(v)}" for k, v in zip((r, r + 1), around, strict=True))
            rec.outcome = (f"{rec.note}; mix coverage {shown} (whole trial {_pct(coverage.get('overall'))}); "
                           f"{everyone}")
        else:
            hit = [sender_coverage(coverage, a, range(1, rounds)) for a in rec.agents]
            hit_vals = [h for h in hit if h is not None]
            others = [v for s, v in coverage.get("per_sender", {}).items() if s not in rec.agents]
            mean_hit = sum(hit_vals) / len(hit_vals) if hit_vals else None
            mean_others = sum(others) / len(others) if others else None
            what = (f"{rec.delay_ms:g} ms delay" if rec.kind == "delay"
                    else f"{rec.loss_percent:g}% loss")
            rec.outcome = (f"{what} on {', '.join(rec.agents)}: their updates were mixed in "
                           f"{_pct(mean_hit)} of the expected slots (other agents: {_pct(mean_others)}); "
                           f"{everyone}")
