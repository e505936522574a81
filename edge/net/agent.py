"""The networked agent: what runs on a board.

The round loop of edge.learning.rounds over MQTT, behind a start barrier (quorum, or joining a
fleet under way: edge.net.quorum), with resource and energy metering, checkpoints to resume from,
a metrics file and a narration of what happens.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import torch

from devices.energy import EnergyMeter
from devices.estimate import EnergyBreakdown
from devices.meters import ResourceMeter, ResourceUsage
from devices.telemetry import TelemetryReader
from edge.config.schema import FleetConfig, quorum_count
from edge.config.topology import build_graph
from edge.data.fleet_data import agent_data, fleet_info
from edge.errors import UserError
from edge.learning.checkpoint import load_checkpoint, restore_into, save_checkpoint
from edge.learning.gossip import Holdings, mixing_plan
from edge.learning.learner import Learner, holdings, make_learner
from edge.learning.rounds import AgentRounds, run_rounds
from edge.learning.sharing import combination
from edge.learning.strategies import networked_strategy
from edge.net.byzantine import ByzantineTransport
from edge.net.impaired import ImpairedTransport
from edge.net.mqtt_transport import MqttTransport
from edge.net.quorum import StartDecision, await_start
from edge.records import AgentBytes, BranchBytes, FinalDoc, MetricsRow
from edge.summary import round_ranges, round_span

log = logging.getLogger(__name__)


class Stopped(KeyboardInterrupt):
    """SIGTERM / SIGINT arrived: leave cleanly (offline status, flushed publishes)."""


def run_agent(cfg: FleetConfig, agent_id: str, url: str, out_dir: Path,
              strategy_name: str | None = None, arch: str | None = None,
              energy_mode: str = "auto", progress: Callable[[str], None] | None = None,
              force: bool = False, run_id: bytes | None = None, protocol: int = 0) -> FinalDoc:
    """Run (or resume) one agent to the last round; returns its final.json document.

    The agent announces itself, waits for the fleet's quorum or joins a fleet under way
    (edge.net.quorum), runs its rounds and writes `out_dir/agents/<id>/{metrics.jsonl,
    checkpoint.pt,final.json}`. `progress` receives the agent's narration, one line at a time.
    `run_id` is the run the trial runner fixed (None: learnt from the control topic, or fixed
    by this agent when it is the first); every start of the agent bumps its epoch (the `epoch`
    file in its folder), so what it sent before a restart is rejected as replayed. `protocol`
    is the MQTT version (4: 3.1.1, 5, or 0: 5 when the broker speaks it).

    Raises
    ------
    UserError
        For an agent id not in the fleet, a strategy that is not networked, a checkpoint in
        `out_dir` that belongs to another agent or strategy, or a finished agent folder (its
        final.json exists) without `force`.
    QuorumTimeout
        When the quorum is not reached within `training.start_timeout_s`.
    ConnectionError, broker.probe.PublishProbeError, broker.refusals.BrokerRefusedError
        When the broker refuses the connection, or our publishes do not reach it (one line).
    """
    say = _narrator(agent_id, progress)
    spec = cfg.agent(agent_id)
    strategy = networked_strategy(strategy_name or cfg.strategy)
    model_arch = strategy.arch(arch or cfg.model.arch)
    schedule = strategy.schedule(cfg.training.rounds, cfg.training.local_epochs)
    agent_dir = out_dir / "agents" / agent_id
    claim_agent_folder(agent_dir, force)
    torch.set_num_threads(1)  # agents share the board's cores; tiny models gain nothing from more
    meter = ResourceMeter(memory_detail=True).start()
    energy = EnergyMeter(spec.device, mode=energy_mode).start()
    started = time.perf_counter()
    started_utc = _utc_now()

    info = fleet_info(cfg)
    learner = make_learner(cfg, spec, agent_data(cfg)[agent_id], info, strategy.sharing, model_arch)
    table = holdings(cfg, info, strategy.sharing, model_arch)
    ckpt_path = agent_dir / "checkpoint.pt"
    resume_round, prior = _resume(learner, ckpt_path, strategy.name, agent_id)
    if resume_round:
        say(f"resuming from its checkpoint after round {resume_round - 1} "
            f"(restart {prior.restarts}; counters carried on)")
        energy.resume_from(prior.energy)
    graph = build_graph(cfg.topology, cfg.agent_ids, cfg.training.seed, resume_round, cfg.source)
    epoch = next_epoch(agent_dir)
    mqtt = MqttTransport(cfg, spec, learner.branches, url, graph, table, first_round=resume_round,
                         on_event=say, run_id=run_id, epoch=epoch, protocol=protocol)
    mqtt.bytes_offset = (prior.bytes_sent, prior.bytes_received)
    transport = ImpairedTransport.for_agent(ByzantineTransport.for_agent(mqtt, cfg, agent_id),
                                            cfg, agent_id)
    telemetry = TelemetryReader()
    rounds_done = resume_round
    decision: StartDecision | None = None

    def totals(bytes_sent: int, bytes_received: int) -> tuple[Totals, ResourceUsage,
                                                              EnergyBreakdown]:
        """The agent's running totals now (this process's counts on top of the resumed ones),
        this process's usage, and the energy so far.
        """
        usage = meter.sample()
        breakdown = energy.read(usage, bytes_sent - prior.bytes_sent,
                                bytes_received - prior.bytes_received)
        return Totals(bytes_sent, bytes_received, prior.cpu_s + usage.cpu_s,
                      prior.elapsed_s + time.perf_counter() - started, prior.restarts,
                      breakdown.to_dict()), usage, breakdown

    def checkpoint(round_idx: int) -> None:
        now, _, _ = totals(*mqtt.wire_bytes())
        save_checkpoint(ckpt_path, cfg, learner, agent_id, round_idx, strategy.name,
                        counters=now._asdict())

    def resources(round_idx: int, bytes_sent: int, bytes_received: int) -> dict[str, object]:
        now, usage, breakdown = totals(bytes_sent, bytes_received)
        return {"time_utc": _utc_now(), "elapsed_s": now.elapsed_s, "restarts": now.restarts,
                "cpu_s": now.cpu_s, "rss_mb": usage.peak_rss_mb,
                "uss_mib": usage.peak_uss_mib, "pss_mib": usage.peak_pss_mib,
                **_energy_fields(breakdown), "telemetry": telemetry.sample(),
                "rejected": _rejections(mqtt)}

    _install_signal_handlers()
    try:
        mqtt.start()
        version = "5" if mqtt.client.protocol == 5 else "3.1.1"
        say(f"connected to {mqtt.client.address.url} (MQTT {version}, "
            f"{'signed' if mqtt.signing else 'UNSIGNED'} messages, run {mqtt.run_id.hex()[:8]}, "
            f"epoch {epoch}); {len(cfg.agent_ids)} agents in fleet {cfg.fleet}, rounds "
            f"{round_span(schedule.rounds)}")
        # Only the neighbours we can mix from decide where we join: one sharing no branch with
        # us may be rounds ahead without costing us any update.
        decision = await_start(mqtt.neighbours, agent_id, cfg.agent_ids, mqtt.senders(),
                               quorum_count(cfg.training, len(cfg.agent_ids)), resume_round,
                               cfg.training.start_timeout_s, say, held_from=mqtt.held_from)
        say(_describe_start(decision, schedule.rounds))
        mqtt.first_round = decision.start_round
        rounds_done = max(rounds_done, min(decision.start_round, schedule.rounds))
        run = AgentRounds(cfg, agent_id, learner, table, schedule, decision.start_round)
        rejected = 0
        for row in run_rounds(run, transport, checkpoint, resources):
            _append_jsonl(agent_dir / "metrics.jsonl", row)
            mqtt.publish_metrics(row)
            rounds_done = row["round"] + 1
            say(_describe_round(row, cfg, agent_id, table))
            now_rejected = sum(row.get("rejected", {}).values())
            if now_rejected > rejected:
                reasons = ", ".join(f"{k} {n}" for k, n in sorted(row.get("rejected", {}).items()))
                say(f"messages rejected so far: {reasons}")
                rejected = now_rejected
    finally:
        mqtt.stop()
    end, usage, result = totals(*mqtt.wire_bytes())
    meter.stop()
    energy.close()
    first_round = decision.start_round if decision is not None else resume_round
    final: FinalDoc = {
        "agent": agent_id, "kind": combination(spec.modalities), "rounds_completed": rounds_done,
        "resumed_from_round": resume_round, "wall_s": time.perf_counter() - started,
        "cpu_s": end.cpu_s, "peak_rss_mb": usage.peak_rss_mb,
        "energy_j": result.energy_j, "energy_source": result.source,
        "ended_utc": _utc_now(), "elapsed_s": end.elapsed_s, "restarts": end.restarts,
        "energy": end.energy, "telemetry": telemetry.sample(),
        "bytes": _bytes_block(mqtt),
        "rejected": _rejections(mqtt),
        "updates_dropped_by_fault": transport.updates_dropped,
        "faults": {"delay_ms": transport.delay_ms, "loss_percent": transport.loss_percent},
        "started_utc": started_utc,
        "first_round": first_round,
        "missed_rounds": decision.missed_rounds if decision is not None else [],
        "connections": mqtt.client.connect_count,
        "link_returns": mqtt.client.carrier_returns,
        "quorum_wait_s": decision.waited_s if decision is not None else 0.0,
        "peak_uss_mib": usage.peak_uss_mib, "peak_pss_mib": usage.peak_pss_mib,
    }
    _write_json(agent_dir / "final.json", final)
    say(f"done: through round {rounds_done - 1}, final.json written")
    return final


def claim_agent_folder(agent_dir: Path, force: bool) -> None:
    """Make `agent_dir` ready for a run; refuse a finished agent's folder unless `force`.

    `force` clears it; an unfinished one (checkpoint, no final.json) is resumed.

    Raises
    ------
    UserError
        When `agent_dir/final.json` exists and `force` is False.
    """
    final = agent_dir / "final.json"
    if final.exists() and not force:
        raise UserError(f"{agent_dir}: final.json: this agent already finished; expected a new --out, "
                        "or --force to start it over (its record there is deleted)")
    if force:
        for name in ("final.json", "metrics.jsonl", "checkpoint.pt"):
            (agent_dir / name).unlink(missing_ok=True)
    agent_dir.mkdir(parents=True, exist_ok=True)


def _narrator(agent_id: str, progress: Callable[[str], None] | None) -> Callable[[str], None]:
    if progress is None:
        return lambda line: None
    return lambda line: progress(f"[{agent_id}] {line}")


def _describe_start(decision: StartDecision, rounds: int) -> str:
    span = round_span(rounds)
    if decision.missed_rounds:
        gap = round_ranges(decision.missed_rounds)
        if decision.start_round >= rounds:
            return (f"the fleet is past its last round (neighbours at round {decision.fleet_round}); "
                    f"missed rounds {gap}: nothing left to run")
        return (f"joins the fleet at round {decision.start_round} of {span} (neighbours at round "
                f"{decision.fleet_round}); missed rounds {gap}")
    if decision.fleet_round > 0:
        return (f"the fleet is under way (neighbours at round {decision.fleet_round}); starting "
                f"round {decision.start_round} of {span}")
    return (f"quorum reached: {decision.online} agents online after {decision.waited_s:.1f} s; "
            f"starting round {decision.start_round} of {span}")


def _describe_round(row: MetricsRow, cfg: FleetConfig, agent_id: str, table: Holdings) -> str:
    round_idx = row["round"]
    graph = build_graph(cfg.topology, cfg.agent_ids, cfg.training.seed, round_idx, cfg.source)
    planned = {j for weights in mixing_plan(agent_id, graph, table).values() for j in weights}
    planned.discard(agent_id)
    mixed = {j for senders in row["mixed_from"].values() for j in senders}
    mixing = f", mixed {len(mixed)}/{len(planned)} neighbours" if round_idx > 0 and planned else ""
    return (f"round {round_idx} of {round_span(row['rounds'])}: accuracy {row['accuracy']:.3f}"
            f"{mixing}, waited {row['wait_s']:.2f} s")


def _rejections(mqtt: MqttTransport) -> dict[str, int]:
    return dict(sorted(mqtt.rejections.items()))


def next_epoch(agent_dir: Path) -> int:
    """Bump and return the agent's epoch (its start count, from 0), kept in `agent_dir/epoch`.

    Receivers reject messages of an epoch older than the newest they saw from a sender, so what
    an agent sent before a restart cannot be replayed after it (broker.replay).

    Raises
    ------
    UserError
        When the epoch file holds something other than a non-negative integer.
    """
    path = agent_dir / "epoch"
    epoch = 0
    if path.exists():
        text = path.read_text().strip()
        if not text.isdigit():
            raise UserError(f"{path}: epoch: expected a non-negative integer, got {text[:20]!r}")
        epoch = int(text) + 1
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{epoch}\n")
    os.replace(tmp, path)
    return epoch


class Totals(NamedTuple):
    """An agent's running totals over all its processes (stored in each checkpoint)."""

    bytes_sent: int
    bytes_received: int
    cpu_s: float
    elapsed_s: float
    restarts: int
    energy: dict[str, Any]            # devices.estimate.EnergyBreakdown.to_dict()


NO_TOTALS = Totals(0, 0, 0.0, 0.0, 0, {})


def _resume(learner: Learner, ckpt_path: Path, strategy: str, agent_id: str) -> tuple[int, Totals]:
    """Load the agent's checkpoint if there is one: the round to start from, and the running
    totals to carry on from (one more restart).
    """
    if not ckpt_path.exists():
        return 0, NO_TOTALS
    ckpt = load_checkpoint(ckpt_path)
    if ckpt.agent_id != agent_id or ckpt.strategy != strategy:
        raise UserError(f"{ckpt_path}: checkpoint of {ckpt.agent_id}/{ckpt.strategy}, "
                        f"expected {agent_id}/{strategy}; use another --out")
    restore_into(learner, ckpt)  # refuses a checkpoint written under another config
    counters = ckpt.counters
    if not counters:  # written by an older version or outside an agent: counting starts over
        return ckpt.round_idx + 1, NO_TOTALS._replace(restarts=1)
    return ckpt.round_idx + 1, Totals(
        counters["bytes_sent"], counters["bytes_received"], counters["cpu_s"],
        counters["elapsed_s"], counters["restarts"] + 1, counters["energy"])


def _energy_fields(b: EnergyBreakdown) -> dict[str, object]:
    return {"energy_j": b.energy_j, "energy_source": b.source, "idle_j": b.idle_j,
            "compute_j": b.compute_j, "radio_j": b.radio_j, "attributable_j": b.attributable_j}


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _bytes_block(transport: MqttTransport) -> AgentBytes:
    counters = transport.client.counters
    snap: dict[str, Any] = counters.snapshot()
    per_branch: dict[str, BranchBytes] = {}
    for key in sorted(set(snap["sent_by_branch"]) | set(snap["received_by_branch"])):
        sent = snap["sent_by_branch"].get(key, {})
        recv = snap["received_by_branch"].get(key, {})
        per_branch[key] = {
            "sent_bytes": sent.get("payload_bytes", 0) + sent.get("header_bytes", 0),
            "received_bytes": recv.get("payload_bytes", 0) + recv.get("header_bytes", 0),
            "sent_messages": sent.get("messages", 0), "received_messages": recv.get("messages", 0),
        }
    return {"sent": snap["sent"], "received": snap["received"], "per_branch": per_branch,
            "sent_total": counters.sent.total_bytes, "received_total": counters.received.total_bytes}


def _install_signal_handlers() -> None:
    def stop(signum: int, frame: object) -> None:
        raise Stopped(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def _append_jsonl(path: Path, row: MetricsRow) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _write_json(path: Path, doc: FinalDoc) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, path)
