"""The field-trial runner: a broker, one process per agent, faults on cue, and the trial's record.

The runner never learns anything itself: agents are `parse-edge agent ...` processes (forked from
a fork server, or fresh interpreters with --isolated: edge.trial.launch) that talk over MQTT. The
runner watches their metrics files (the record) and their MQTT presence (the live view), narrates
both (edge.trial.narrate), stops / restarts agents and the broker as the config's faults say (see
edge.trial.faults for the trigger rule), restarts an agent killed by a signal it did not send (it
rejoins the fleet), and always writes what was measured - after success, failure, timeout or Ctrl-C.

The runner fixes the trial's run id, hands it to every agent (`--run-id`) and announces it,
retained and signed, on the control topic (cleared at the end); with `broker.credentials` and an
external broker it logs in as the operator. A trial in which nothing was mixed although agents
had neighbours did not exchange anything: it fails and says why, never "completed".
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from broker import topics
from broker.credentials import OPERATOR
from broker.embedded import EmbeddedBroker
from broker.envelope import Kind, Signer
from broker.exchange import RunAnnouncement, encode_run_announcement
from broker.keys import new_run_id
from edge.config.schema import BUILTIN_EXAMPLE, FleetConfig
from edge.config.secrets import check_secrets, fleet_keys, mqtt_login
from edge.records import SummaryDoc
from edge.summary import round_span
from edge.trial.console import CallbackConsole, Console
from edge.trial.coverage import expected_mixes, mix_coverage
from edge.trial.faults import Action, FaultPlan
from edge.trial.launch import Launcher, make_launcher
from edge.trial.narrate import Narrator
from edge.trial.processes import AgentProcess, ExitKind, agent_env, stop_all
from edge.trial.setup import (
    TrialOptions,
    agent_argv,
    default_timeouts,
    effective_config,
    prepare_out,
    trial_quorum,
)
from edge.trial.summary import AgentFacts, TrialFacts, trial_document, write_record
from edge.trial.watch import FleetWatch, PresenceMonitor

Progress = Callable[[str], None]
__all__ = ["TrialOptions", "TrialResult", "TrialRunner", "run_trial"]


@dataclass
class TrialResult:
    """How the trial ended and where its record is."""

    status: str                        # completed | failed | timed out | interrupted
    exit_code: int
    out: Path
    summary: SummaryDoc | dict[str, Any] = field(default_factory=dict)
    failed_agents: list[str] = field(default_factory=list)


class TrialRunner:
    """Runs one trial; `run()` returns a TrialResult and has written the record."""

    def __init__(self, cfg: FleetConfig, opts: TrialOptions, progress: Progress | None = None,
                 console: Console | None = None) -> None:
        self.cfg = effective_config(cfg, opts)
        # split / synergy_scope "auto": fixed here, fleet-wide, before any agent starts; the
        # agents get the values on their command line (edge.learning.auto_model).
        from edge.learning.auto_model import resolve_model

        self.resolved = resolve_model(self.cfg)
        self.cfg = self.resolved.cfg
        self.opts = opts
        self.out = Path(opts.out)
        self.console = console or CallbackConsole(progress or (lambda line: None))
        self.progress = self.console.line
        self.ids = [a.id for a in self.cfg.agent_specs]
        self.url = opts.broker or self.cfg.broker.url
        self.embedded = self.url == "embedded"
        self.plan = FaultPlan(self.cfg.faults, self.embedded)
        self.watch = FleetWatch(self.out, self.ids)
        self.events: list[dict[str, Any]] = []
        self.restarts: dict[str, list[dict[str, Any]]] = {a: [] for a in self.ids}
        self.broker: EmbeddedBroker | None = None
        self.monitor: PresenceMonitor | None = None
        self.agents: dict[str, AgentProcess] = {}
        self.started = time.monotonic()
        self.last_activity = self.started
        self.status = "running"
        self.ended_s: float | None = None
        self.reason = ""
        self.started_utc = datetime.now(timezone.utc)
        self.launcher: Launcher | None = None
        self.run_id = new_run_id()
        self.quorum = trial_quorum(self.cfg, len(self.ids) - len(self.plan.held_back()))
        self.narrator = Narrator(self.console, self.event, self.ids, self.cfg.training.rounds,
                                 self.cfg.comm.deadline_s, self.now_s)
        overall, stall = default_timeouts(self.cfg, len(self.ids))
        self.timeout_s = opts.timeout_s or overall
        self.stall_timeout_s = opts.stall_timeout_s or stall

    # --- helpers ------------------------------------------------------------------------------

    def now_s(self) -> float:
        """Seconds since the runner started."""
        return time.monotonic() - self.started

    def event(self, kind: str, agent: str | None = None, detail: str = "", **extra: object) -> None:
        """Record a trial event and show it on the console."""
        self.events.append({"t_s": round(self.now_s(), 3), "kind": kind, "agent": agent,
                            "detail": detail, **extra})
        who = f"{agent}: " if agent else ""
        style = {"failed": "bold red", "killed": "red", "fault": "yellow", "offline": "yellow",
                 "broker": "yellow", "rejected": "magenta"}.get(kind, "")
        self.console.line(f"[trial {self.now_s():6.1f} s] {kind}: {who}{detail}", style)
        self.last_activity = time.monotonic()

    # --- lifecycle ----------------------------------------------------------------------------

    def run(self) -> TrialResult:
        """Run the trial to its end (or Ctrl-C / timeout) and write the record."""
        # Every secret file is read now: a bad one is one line before anything starts.
        check_secrets(self.cfg, self.ids + ([] if self.embedded else [OPERATOR]))
        prepare_out(self.out, self.opts.force)
        config_path = str(self.opts.config_path or BUILTIN_EXAMPLE)
        self._copy_config(config_path)
        try:
            # The fork server first: it must start before this process runs any other thread.
            self.narrator.launching()
            self.launcher = self._make_launcher()
            self._start_broker()
            env = agent_env(len(self.ids))
            for agent_id in self.ids:
                argv = agent_argv(config_path, agent_id, self.url, self.out, self.opts, self.quorum,
                                  self.cfg.training.start_timeout_s, self.run_id,
                                  "3.1.1" if self.embedded else "auto") + self.resolved.agent_argv()
                self.agents[agent_id] = AgentProcess(agent_id, argv, self.out / "agents" / agent_id,
                                                     env, self.launcher)
            self.progress(f"[trial] {len(self.ids)} agents, rounds {round_span(self.cfg.training.rounds)}, "
                          f"quorum {self.quorum}, strategy {self.cfg.strategy}, broker {self.url} "
                          f"({'embedded' if self.embedded else 'external'}), agents from the "
                          f"{self.launcher.name}, run {self.run_id.hex()[:8]}, "
                          f"{'signed' if fleet_keys(self.cfg) else 'UNSIGNED'} messages, out {self.out}")
            held = self.plan.held_back()
            for agent_id, proc in self.agents.items():
                if agent_id not in held:
                    proc.start()
            self.narrator.agents_started([a for a in self.ids if a not in held], self.launcher.name)
            for agent_id in held:
                self._inject_leave_at_start(agent_id)
            self._loop()
        except KeyboardInterrupt:
            self.status, self.reason = "interrupted", "interrupted (Ctrl-C): stopped every process"
            self.progress(f"[trial] {self.reason}")
        except (RuntimeError, ConnectionError) as exc:  # the broker would not (re)start or let us in
            self.status, self.reason = "failed", " ".join(str(exc).split())
            self.progress(f"[trial] error: {exc}")
        finally:
            self._shutdown()
        return self._finish()

    # --- hooks for other ways of running agents (edge.trial.field: boards of a virtual field) --

    def _make_launcher(self) -> Launcher:
        """The launcher agents start from: the fork server, or isolated interpreters."""
        return make_launcher(self.opts.isolated, self.opts.python)

    def _on_poll(self) -> None:
        """Called once per watch-loop pass, after the fault plan's actions."""

    def _before_record(self) -> None:
        """Called once the agents ended, before the record is built from their files."""

    def _extend_record(self, doc: SummaryDoc) -> None:
        """Add to summary.json's document before it (and the report) is written."""

    def _copy_config(self, config_path: str) -> None:
        """DIR/config.yaml: the config the agents read, headed by the overrides passed to them.

        With `auto` in the model section, the values it resolved to replace it (what the agents ran).
        """
        overrides = [f"--{k} {v}" for k, v in (("rounds", self.opts.rounds), ("strategy", self.opts.strategy))
                     if v is not None]
        head = f"# parse-edge trial ran {config_path}" + (f" with {' '.join(overrides)}" if overrides else "")
        text = self.resolved.config_text(Path(config_path).read_text())
        (self.out / "config.yaml").write_text(head + "\n" + text)

    def _start_broker(self) -> None:
        if self.embedded:
            self.broker = EmbeddedBroker().start()
            self.url = self.broker.url
        keys = fleet_keys(self.cfg)
        kwargs: dict[str, Any] = {"protocol": 4} if self.embedded else {"protocol": 0}
        if not self.embedded:
            # The operator's identity: reads the whole fleet, writes the control topic. amqtt
            # (embedded) checks no password and has no per-user ACL: there only the HMACs hold.
            login = mqtt_login(self.cfg, OPERATOR)
            kwargs.update(username=login.username, password=login.password,
                          tls=login.tls if self.url.startswith("mqtts://") else None)
        self.monitor = PresenceMonitor(self.url, self.cfg.fleet,
                                       f"trial-{self.cfg.fleet}-{os.getpid()}", keys=keys,
                                       run_id=self.run_id, **kwargs).start(wait=True, timeout_s=20.0)
        self._announce_run(keys is not None)
        self.narrator.watch_broker(self.monitor)

    def _announce_run(self, signing: bool) -> None:
        """Publish the run id, retained and sealed by the operator, on the control topic."""
        assert self.monitor is not None
        self.signer = Signer(self.cfg.fleet, OPERATOR, fleet_keys(self.cfg) if signing else None,
                             self.run_id)
        client = self.monitor.client
        client.publish(topics.control_topic(self.cfg.fleet), self.signer.seal(
            Kind.CONTROL, encode_run_announcement(RunAnnouncement(self.run_id, OPERATOR))), retain=True)
        if not client.flush(10.0):
            raise RuntimeError(f"broker {self.url}: the run announcement on "
                               f"{topics.control_topic(self.cfg.fleet)} was not acknowledged in 10 s")
        client.raise_for_refusals()  # MQTT 5: the ACL refused the operator's publish

    def _shutdown(self) -> None:
        self.ended_s = self.now_s()
        alive = [p for p in self.agents.values() if p.alive]
        if alive:
            stop_all(alive)
            for proc in alive:
                self.event("stopped", proc.agent_id, f"by the runner at the end ({self.status})")
        if self.monitor is not None:
            if self.monitor.connected:  # the run is over: no later agent may join it
                self.monitor.client.publish(topics.control_topic(self.cfg.fleet), b"", retain=True)
                self.monitor.client.flush(2.0)
            self.monitor.stop()
        if self.broker is not None:
            self.broker.stop()
        if self.launcher is not None:
            self.launcher.close()
        self.console.close()

    # --- the watch loop -----------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            before = len(self.watch.rows)
            self.watch.poll()
            self._check_processes()  # polls again when an agent exited: its last rows count
            if len(self.watch.rows) > before:
                self.last_activity = time.monotonic()
            self._narrate()
            for action in self.plan.due(self.watch.completed):
                self._act(action)
            self._on_poll()
            if self._finished():
                finished = all(p.exit_kind == ExitKind.FINISHED for p in self.agents.values()
                               if p.starts and not self._left_for_good(p.agent_id))
                self.status = "completed" if finished and not self._failed() else "failed"
                return
            if time.monotonic() - self.started > self.timeout_s:
                self.status = "timed out"
                self.reason = f"timed out after {self.timeout_s:.0f} s (overall limit)"
                self.progress(f"[trial] {self.reason}")
                return
            if self._quorum_out_of_reach():
                return
            if time.monotonic() - self.last_activity > self.stall_timeout_s:
                self.status = "timed out"
                self.reason = (f"timed out: no agent reported a round for {self.stall_timeout_s:.0f} s "
                               f"({self._stall_detail()})")
                self.progress(f"[trial] {self.reason}")
                return
            time.sleep(self.opts.poll_s)

    def _narrate(self) -> None:
        running = {a for a, p in self.agents.items()
                   if (p.alive and not p.stop_requested) or p.exit_kind == ExitKind.FINISHED}
        self.narrator.watch_startup(self.monitor, self.quorum)
        self.narrator.watch_broker(self.monitor)
        self.narrator.watch_presence(self.monitor, self.watch)
        self.narrator.watch_rounds(self.watch, running)
        self.narrator.watch_rejections(self.watch)
        online = (self.monitor.online_count() if self.monitor is not None and self.monitor.connected
                  else None)
        self.console.status(self.narrator.footer(online, len(running)))

    def _quorum_out_of_reach(self) -> bool:
        """Before round 0: too many agents failed for the quorum to be reached: fail now."""
        if self.narrator.startup.quorum_s is not None or any(r >= 0 for r in self.watch.completed.values()):
            return False
        possible = [a for a, p in self.agents.items()
                    if p.exit_kind == ExitKind.RUNNING or a in self.plan.held_back()]
        if len(possible) >= self.quorum:
            return False
        gone = sorted(a for a, p in self.agents.items() if p.starts and p.exit_kind != ExitKind.RUNNING)
        self.status = "failed"
        # An agent's own one-line error (e.g. the broker refused its publishes) says why.
        errors = [line for a in gone for line in self.agents[a].log_tail(1) if line.startswith("error:")]
        self.reason = (f"the quorum ({self.quorum} agents) cannot be reached: {', '.join(gone)} "
                       f"ended before round 0 (see their agent.log)"
                       + (f"; {errors[0]}" if errors else ""))
        self.progress(f"[trial] {self.reason}")
        return True

    def _stall_detail(self) -> str:
        if any(r >= 0 for r in self.watch.completed.values()):
            return f"last round reported: {self._round_summary()}"
        seen = self.monitor.first_online_at if self.monitor is not None else {}
        missing = [a for a in self.ids if a not in seen]
        return (f"no agent ran a round; waiting for the quorum of {self.quorum}; "
                f"not connected: {', '.join(missing) or 'none'}")

    def _finished(self) -> bool:
        # Classified exits only: a process that ended after this loop's poll counts next time.
        started = [p for p in self.agents.values() if p.starts]
        return all(p.exit_kind != ExitKind.RUNNING for p in started) and not self.plan.pending_returns()

    def _failed(self) -> list[str]:
        return [a for a, p in self.agents.items() if p.exit_kind in (ExitKind.FAILED, ExitKind.KILLED)]

    def _left_for_good(self, agent_id: str) -> bool:
        return any(f.kind == "leave" and f.agent == agent_id and f.return_round is None
                   and rec.status == "injected"
                   for f, rec in zip(self.plan.faults, self.plan.records, strict=True))

    def _round_summary(self) -> str:
        return ", ".join(f"{a} {r}" for a, r in self.watch.completed.items())

    def _check_processes(self) -> None:
        for agent_id, proc in self.agents.items():
            kind = proc.poll()
            if kind is None:
                continue
            self.watch.poll()  # the rows it wrote just before exiting
            done = self.watch.completed[agent_id] + 1
            if kind == ExitKind.FINISHED:
                self.event("finished", agent_id, f"exit 0 after {done} rounds")
            elif kind == ExitKind.STOPPED:
                self.event("stopped", agent_id, f"exit {proc.returncode} (stopped by the runner)")
            elif kind == ExitKind.KILLED and len(self.restarts[agent_id]) < self.opts.max_restarts:
                restart = {"t_s": round(self.now_s(), 3), "signal": -(proc.returncode or 0),
                           "after_round": done - 1, "rows_before": self.watch.row_count(agent_id)}
                self.restarts[agent_id].append(restart)
                self.event("killed", agent_id, f"signal {-(proc.returncode or 0)} after round "
                           f"{done - 1}; restarting (it rejoins the fleet from its checkpoint)")
                proc.start(note=f"killed by signal {-(proc.returncode or 0)}")
            else:
                tail = proc.log_tail(12)
                self.event("failed", agent_id, f"exit {proc.returncode} after {done} rounds; "
                           f"last log lines:\n    " + "\n    ".join(tail), log_tail=tail)

    def _act(self, action: Action) -> None:
        rec = self.plan.records[action.fault_idx]
        if action.verb == "stop" and action.agent is not None:
            proc = self.agents[action.agent]
            done = self.watch.completed[action.agent]
            if not proc.alive:
                rec.status, rec.note = "skipped", "the agent was not running at its leave round"
                return
            proc.request_stop()
            rec.stopped_after_round = done
            self.plan.mark_injected(action.fault_idx, self.now_s(), f"{action.agent} reported round {done}")
            self.event("fault", action.agent, f"leave at round {rec.round}: stopped (SIGTERM) "
                       f"after its round {done}")
        elif action.verb == "start" and action.agent is not None:
            proc = self.agents[action.agent]
            if proc.alive:
                proc.wait_stopped(10.0)
                self._check_processes()
            others = max(r for a, r in self.watch.completed.items() if a != action.agent)
            rec.rows_before_return = self.watch.row_count(action.agent)
            self.plan.mark_returned(action.fault_idx, self.now_s(), f"another agent reported round {others}")
            proc.start(note=f"returns at round {rec.return_round}")
            self.event("fault", action.agent, f"returns at round {rec.return_round}: restarted "
                       f"with the same --out as the fleet enters round {others + 1} (it joins at its "
                       "neighbours' next round)")
        elif action.verb == "broker-restart":
            assert self.broker is not None
            t0 = time.monotonic()
            self.broker.stop()
            self.broker.start()
            down_s = time.monotonic() - t0
            fastest = max(self.watch.completed.values())
            self.plan.mark_injected(action.fault_idx, self.now_s(), f"an agent reported round {fastest}",
                                    note=f"broker down {down_s:.2f} s (stopped and started on port "
                                         f"{self.broker.port})")
            self.event("fault", None, f"broker restart at round {rec.round}: down {down_s:.2f} s")
            self.narrator.broker_restarted(down_s)

    def _inject_leave_at_start(self, agent_id: str) -> None:
        for i, f in enumerate(self.plan.faults):
            if f.kind == "leave" and f.agent == agent_id and f.round == 0:
                self.plan.records[i].stopped_after_round = -1
                self.plan.mark_injected(i, 0.0, "leave at round 0: not started with the others")
                self.event("fault", agent_id, "leave at round 0: not started with the others")

    # --- the record ---------------------------------------------------------------------------

    def _security(self) -> dict[str, Any]:
        """How this trial was protected, for summary.json and the report."""
        monitor = self.monitor
        client = monitor.client if monitor is not None else None
        return {"signed": fleet_keys(self.cfg) is not None, "run_id": self.run_id.hex(),
                "login": client.username if client is not None else None,
                "tls": client is not None and client.address.tls,
                "runner_rejected": ({r.value: n for r, n in monitor.verifier.rejections.items()}
                                    if monitor is not None else {})}

    def _nothing_mixed(self) -> str:
        """Why the trial exchanged nothing although agents had neighbours ("" when it did not)."""
        coverage = mix_coverage(self.watch.rows, expected_mixes(self.cfg, self.cfg.strategy,
                                                                self.cfg.training.rounds))
        if not coverage["expected"] or coverage["mixed"]:
            return ""
        rejected: dict[str, int] = {}
        for row in self.watch.latest().values():
            for reason, n in (row.get("rejected") or {}).items():
                rejected[reason] = rejected.get(reason, 0) + int(n)
        why = (f"receivers rejected {', '.join(f'{r} {n}' for r, n in sorted(rejected.items()))}"
               if rejected else "no update reached a neighbour: something drops them on the way (the "
               "broker's ACL or max_packet_size, see its log, or an injected loss fault)")
        return (f"no agent mixed a neighbour's update (mix coverage 0 of {coverage['expected']}); "
                f"{why}")

    def _finish(self) -> TrialResult:
        self._before_record()
        self.watch.poll()
        self.narrator.flush_rounds(self.watch)
        self.plan.close()
        failed = self._failed()
        if self.status == "running":
            self.status = "failed"
        exit_code = {"completed": 0, "interrupted": 130}.get(self.status, 1)
        if failed and exit_code == 0:
            exit_code, self.status = 1, "failed"
        if exit_code == 0 and (nothing := self._nothing_mixed()):
            exit_code, self.status, self.reason = 1, "failed", nothing
            self.progress(f"[trial] {nothing}")
        seen = self.monitor.metrics_seen if self.monitor is not None else {}
        agents = {a: AgentFacts(exit=p.exit_kind.value if p.starts else "not started",
                                returncode=p.returncode, starts=p.starts, restarts=self.restarts[a],
                                log_tail=p.log_tail(20) if a in failed else [],
                                mqtt_metrics_rows=len(seen.get(a, ())))
                  for a, p in self.agents.items()}
        doc = trial_document(TrialFacts(
            cfg=self.cfg, out=self.out, rows=self.watch.rows, status=self.status, exit_code=exit_code,
            broker_url=self.url, embedded=self.embedded, wall_s=self.ended_s or self.now_s(),
            agents=agents, failed=failed, reason=self.reason, timeout_s=self.timeout_s,
            stall_timeout_s=self.stall_timeout_s, events=self.events, faults=self.plan.records,
            bad_lines=self.watch.bad_lines, started_utc=self.started_utc.isoformat(timespec="seconds"),
            startup=self.narrator.startup.to_dict(), quorum=self.quorum,
            security=self._security()))
        self._extend_record(doc)
        write_record(self.out, doc, self.watch.rows, plots=self.opts.plots, progress=self.progress)
        return TrialResult(self.status, exit_code, self.out, doc, failed)


def run_trial(cfg: FleetConfig, opts: TrialOptions, progress: Progress | None = None,
              console: Console | None = None) -> TrialResult:
    """Run a field trial of `cfg` (see TrialRunner).

    Narration goes to `console`, else to `progress` one line at a time.
    """
    return TrialRunner(cfg, opts, progress, console).run()
