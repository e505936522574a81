"""The networked agent: what runs on a board. The round loop of edge.learning.rounds over MQTT,
with resource and energy metering, checkpoints to resume from, and a metrics file.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from devices.energy import EnergyMeter
from devices.meters import ResourceMeter
from edge.config.schema import FleetConfig
from edge.config.topology import build_graph
from edge.data.fleet_data import agent_data, fleet_info
from edge.errors import UserError
from edge.learning.checkpoint import load_checkpoint, restore_into, save_checkpoint
from edge.learning.learner import Learner, holdings, make_learner
from edge.learning.rounds import AgentRounds, run_rounds
from edge.learning.sharing import combination
from edge.learning.strategies import networked_strategy
from edge.net.byzantine import ByzantineTransport
from edge.net.impaired import ImpairedTransport
from edge.net.mqtt_transport import MqttTransport
from edge.records import AgentBytes, BranchBytes, FinalDoc, MetricsRow

log = logging.getLogger(__name__)


class Stopped(KeyboardInterrupt):
    """SIGTERM / SIGINT arrived: leave cleanly (offline status, flushed publishes)."""


def run_agent(cfg: FleetConfig, agent_id: str, url: str, out_dir: Path,
              strategy_name: str | None = None, arch: str | None = None,
              energy_mode: str = "auto", progress: Callable[[str], None] | None = None) -> FinalDoc:
    """Run (or resume) one agent to the last round; returns its final.json document.

    Raises
    ------
    UserError
        For an agent id not in the fleet, a strategy that is not networked, or a checkpoint in
        `out_dir` that belongs to another agent or strategy.
    """
    spec = cfg.agent(agent_id)
    strategy = networked_strategy(strategy_name or cfg.strategy)
    model_arch = strategy.arch(arch or cfg.model.arch)
    schedule = strategy.schedule(cfg.training.rounds, cfg.training.local_epochs)
    torch.set_num_threads(1)  # agents share the board's cores; tiny models gain nothing from more
    meter = ResourceMeter().start()
    energy = EnergyMeter(spec.device, mode=energy_mode).start()
    started = time.perf_counter()

    info = fleet_info(cfg)
    learner = make_learner(cfg, spec, agent_data(cfg)[agent_id], info, strategy.sharing, model_arch)
    table = holdings(cfg, info, strategy.sharing, model_arch)
    agent_dir = out_dir / "agents" / agent_id
    agent_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = agent_dir / "checkpoint.pt"
    start_round = _resume(learner, ckpt_path, strategy.name, agent_id)
    graph = build_graph(cfg.topology, cfg.agent_ids, cfg.training.seed, start_round, cfg.source)
    mqtt = MqttTransport(cfg, spec, learner.branches, url, graph, table)
    transport = ImpairedTransport.for_agent(ByzantineTransport.for_agent(mqtt, cfg, agent_id),
                                            cfg, agent_id)
    run = AgentRounds(cfg, agent_id, learner, table, schedule, start_round)
    rounds_done = start_round

    def checkpoint(round_idx: int) -> None:
        save_checkpoint(ckpt_path, cfg, learner, agent_id, round_idx, strategy.name)

    def resources(round_idx: int, wire_bytes: int) -> dict[str, float | str]:
        usage = meter.sample()
        return {"cpu_s": usage.cpu_s, "rss_mb": usage.peak_rss_mb,
                "energy_j": energy.read(usage, wire_bytes).energy_j,
                "energy_source": energy.source}

    _install_signal_handlers()
    try:
        mqtt.start()
        mqtt.wait_for_neighbours(set(graph[agent_id]), cfg.comm.deadline_s,
                                 offline_is_final=start_round > 0)
        for row in run_rounds(run, transport, checkpoint, resources):
            _append_jsonl(agent_dir / "metrics.jsonl", row)
            mqtt.publish_metrics(row)
            rounds_done = row["round"] + 1
            if progress:
                progress(f"[{agent_id}] round {row['round'] + 1}/{row['rounds']} accuracy "
                         f"{row['accuracy']:.3f} waited {row['wait_s']:.2f} s")
    finally:
        mqtt.stop()
    usage = meter.stop()
    sent, received_bytes = mqtt.wire_bytes()
    result = energy.stop(usage, sent + received_bytes)
    energy.close()
    final: FinalDoc = {
        "agent": agent_id, "kind": combination(spec.modalities), "rounds_completed": rounds_done,
        "resumed_from_round": start_round, "wall_s": time.perf_counter() - started,
        "cpu_s": usage.cpu_s, "peak_rss_mb": usage.peak_rss_mb,
        "energy_j": result.energy_j, "energy_source": result.source,
        "bytes": _bytes_block(mqtt),
        "rejected": {r.value: n for r, n in mqtt.receiver.rejections.items()},
        "updates_dropped_by_fault": transport.updates_dropped,
        "faults": {"delay_ms": transport.delay_ms, "loss_percent": transport.loss_percent},
    }
    _write_json(agent_dir / "final.json", final)
    return final


def _resume(learner: Learner, ckpt_path: Path, strategy: str, agent_id: str) -> int:
    """Load the agent's checkpoint if there is one; the round to start from."""
    if not ckpt_path.exists():
        return 0
    ckpt = load_checkpoint(ckpt_path)
    if ckpt.agent_id != agent_id or ckpt.strategy != strategy:
        raise UserError(f"{ckpt_path}: checkpoint of {ckpt.agent_id}/{ckpt.strategy}, "
                        f"expected {agent_id}/{strategy}; use another --out")
    restore_into(learner, ckpt)  # refuses a checkpoint written under another config
    log.info("resuming %s after round %d", agent_id, ckpt.round_idx)
    return ckpt.round_idx + 1


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
