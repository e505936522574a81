"""The networked agent: what runs on a board. Same rounds as the simulator, branches over MQTT."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import torch

from devices.energy import EnergyMeter
from devices.meters import ResourceMeter
from edge.checkpoint import load_checkpoint, save_checkpoint
from edge.config import FleetConfig
from edge.data import agent_data, fleet_info
from edge.errors import UserError
from edge.fleet import holdings, make_learner
from edge.rounds import mixing_plan, run_round
from edge.sharing import combination
from edge.strategies import get_strategy
from edge.topology import build_graph
from edge.transport import MqttTransport

log = logging.getLogger(__name__)


class Stopped(KeyboardInterrupt):
    """SIGTERM / SIGINT arrived: leave cleanly (offline status, flushed publishes)."""


def run_agent(cfg: FleetConfig, agent_id: str, url: str, out_dir: Path,
              strategy_name: str | None = None, arch: str | None = None,
              energy_mode: str = "auto", progress: Callable[[str], None] | None = None) -> dict:
    """Run (or resume) one agent to the last round; returns its final.json document."""
    spec = next((a for a in cfg.agent_specs if a.id == agent_id), None)
    if spec is None:
        ids = ", ".join(a.id for a in cfg.agent_specs)
        raise UserError(f"--agent: {agent_id!r} is not in {cfg.source} (agents: {ids})")
    strategy = get_strategy(strategy_name or cfg.strategy)
    if not strategy.networked:
        raise UserError(f"--strategy: {strategy.name} pools all data in one place; "
                        "run it with `parse-edge simulate`")
    model_arch = strategy.arch(arch or cfg.model.arch)
    rounds, local_epochs = strategy.schedule(cfg.training.rounds, cfg.training.local_epochs)
    torch.set_num_threads(1)  # agents share the board's cores; tiny models gain nothing from more
    meter = ResourceMeter().start()
    energy = EnergyMeter(spec.device, mode=energy_mode).start()
    started = time.perf_counter()

    info = fleet_info(cfg)
    learner = make_learner(cfg, spec, agent_data(cfg)[agent_id], info, strategy, model_arch)
    table = holdings(cfg, info, strategy, model_arch)
    agent_dir = out_dir / "agents" / agent_id
    agent_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = agent_dir / "checkpoint.pt"
    start_round = _resume(learner, ckpt_path, strategy.name, agent_id)
    ids = [a.id for a in cfg.agent_specs]
    graph = build_graph(cfg.topology, ids, cfg.training.seed, start_round, cfg.source)
    transport = MqttTransport(cfg, spec, learner.branches, url, graph, table)
    kind = combination(spec.modalities)
    rounds_done = start_round
    _install_signal_handlers()
    try:
        transport.start()
        transport.wait_for_neighbours(set(graph[agent_id]), cfg.comm.deadline_s,
                                      offline_is_final=start_round > 0)
        for round_idx in range(start_round, rounds):
            round_started = time.perf_counter()
            graph = build_graph(cfg.topology, ids, cfg.training.seed, round_idx, cfg.source)
            plan = mixing_plan(agent_id, graph, table)
            # Right after a (re)start nothing from the previous round can still arrive: don't wait.
            wait_s = cfg.comm.deadline_s if round_idx > start_round else 0.0
            waited = time.perf_counter()
            received = transport.collect(round_idx - 1, plan, wait_s) if round_idx else {}
            wait_s = time.perf_counter() - waited
            public = transport.public_copies(plan)
            result, outbox = run_round(learner, agent_id, round_idx, plan, received, local_epochs,
                                       public)
            if round_idx < rounds - 1:  # nobody mixes after the last round
                transport.publish(round_idx, outbox)
            save_checkpoint(ckpt_path, cfg, learner, agent_id, round_idx, strategy.name)
            usage = meter.sample()
            sent, received_bytes = transport.wire_bytes()
            row = {
                "agent": agent_id, "kind": kind, "round": round_idx, "rounds": rounds,
                "accuracy": result.accuracy, "head_accuracy": result.head_accuracy,
                "n_test": result.n_test, "train_s": result.train_s,
                "round_s": time.perf_counter() - round_started, "wait_s": wait_s,
                "mixed_from": result.mixed_from, "bytes_sent": sent,
                "bytes_received": received_bytes,
                "dense_bytes_published": result.dense_bytes_published,
                "cpu_s": usage.cpu_s, "rss_mb": usage.peak_rss_mb,
                "energy_j": energy.read(usage, sent + received_bytes).energy_j,
                "energy_source": energy.source,
            }
            _append_jsonl(agent_dir / "metrics.jsonl", row)
            transport.publish_metrics(row)
            rounds_done = round_idx + 1
            if progress:
                progress(f"[{agent_id}] round {round_idx + 1}/{rounds} accuracy "
                         f"{result.accuracy:.3f} waited {wait_s:.2f} s")
    finally:
        transport.stop()
    usage = meter.stop()
    sent, received_bytes = transport.wire_bytes()
    final = {
        "agent": agent_id, "kind": kind, "rounds_completed": rounds_done,
        "resumed_from_round": start_round, "wall_s": time.perf_counter() - started,
        "cpu_s": usage.cpu_s, "peak_rss_mb": usage.peak_rss_mb,
        **_energy_fields(energy, usage, sent + received_bytes),
        "bytes": _bytes_block(transport),
        "rejected": {r.value: n for r, n in transport.receiver.rejections.items()},
        "updates_dropped_by_fault": transport.updates_dropped,
        "faults": {"delay_ms": transport.delay_ms, "loss_percent": transport.loss_percent},
    }
    _write_json(agent_dir / "final.json", final)
    return final


def _resume(learner, ckpt_path: Path, strategy: str, agent_id: str) -> int:
    """Load the agent's checkpoint if there is one; the round to start from."""
    if not ckpt_path.exists():
        return 0
    ckpt = load_checkpoint(ckpt_path)
    if ckpt.agent_id != agent_id or ckpt.strategy != strategy:
        raise UserError(f"{ckpt_path}: checkpoint of {ckpt.agent_id}/{ckpt.strategy}, "
                        f"expected {agent_id}/{strategy}; use another --out")
    learner.model.load_state_dict(ckpt.model.state_dict())
    if ckpt.optimizer_state:
        learner.optimizer.load_state_dict(ckpt.optimizer_state)
    log.info("resuming %s after round %d", agent_id, ckpt.round_idx)
    return ckpt.round_idx + 1


def _energy_fields(energy: EnergyMeter, usage, wire_bytes: int) -> dict:
    result = energy.stop(usage, wire_bytes)
    energy.close()
    return {"energy_j": result.energy_j, "energy_source": result.source}


def _bytes_block(transport: MqttTransport) -> dict:
    counters = transport.client.counters
    snap = counters.snapshot()
    branches = set(snap["sent_by_branch"]) | set(snap["received_by_branch"])
    per_branch = {}
    for key in sorted(branches):
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


def _append_jsonl(path: Path, row: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _write_json(path: Path, doc: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, path)
