"""The in-process simulator: every agent's round loop in one process, branches on an in-memory bus.

Each agent runs the same `run_rounds` loop as on a board; the simulator advances the loops in
lock-step (round r of every agent, then round r+1), and an agent collecting in round r reads what
its neighbours published in round r-1.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from edge.config.overrides import with_overrides
from edge.config.schema import FleetConfig
from edge.config.topology import build_graph
from edge.data.fleet_data import AgentData, DataInfo, agent_data, fleet_info
from edge.learning.auto_model import resolve_model
from edge.learning.centralized import pooled_training
from edge.learning.checkpoint import save_checkpoint
from edge.learning.diagnostics import gradient_conflict
from edge.learning.gossip import Holdings, mixing_plan
from edge.learning.learner import Learner, holdings, make_learner
from edge.learning.rounds import AgentRounds, run_rounds
from edge.learning.sharing import combination
from edge.learning.strategies import get_strategy
from edge.learning.transport import InMemoryBus, InMemoryTransport, update_sender
from edge.net.byzantine import ByzantineTransport
from edge.records import AgentInfo, MetricsRow, StrategyBlock, SummaryDoc
from edge.summary import fleet_header, round_span, strategy_block

Progress = Callable[[str], None]


def simulate_strategy(cfg: FleetConfig, strategy_name: str, arch: str,
                      data: dict[str, AgentData] | None = None, info: DataInfo | None = None,
                      progress: Progress | None = None,
                      checkpoint_dir: Path | None = None) -> StrategyBlock:
    """Run one strategy over the fleet; returns its `strategies.<name>` summary block.

    With `checkpoint_dir`, every agent's final model is saved to
    `checkpoint_dir/agents/<id>/checkpoint.pt`.
    """
    started = time.perf_counter()
    torch.set_num_threads(1)  # tiny models: one thread is faster, and matches the agents
    torch.manual_seed(cfg.training.seed)
    data = data if data is not None else agent_data(cfg)
    info = info if info is not None else fleet_info(cfg)
    strategy = get_strategy(strategy_name)
    model_arch = strategy.arch(arch)
    schedule = strategy.schedule(cfg.training.rounds, cfg.training.local_epochs)
    learners = {a.id: make_learner(cfg, a, data[a.id], info, strategy.sharing, model_arch)
                for a in cfg.agent_specs}
    table = holdings(cfg, info, strategy.sharing, model_arch)
    if schedule.pooled_epochs:
        pooled_training(list(learners.values()), schedule.pooled_epochs)

    bus = InMemoryBus()
    last = schedule.rounds - 1

    def saver(agent: str) -> Callable[[int], None] | None:
        if checkpoint_dir is None:
            return None
        path = checkpoint_dir / "agents" / agent / "checkpoint.pt"

        def save(round_idx: int) -> None:
            if round_idx == last:
                save_checkpoint(path, cfg, learners[agent], agent, round_idx, strategy.name)
        return save

    loops: dict[str, Iterator[MetricsRow]] = {}
    for agent, learner in learners.items():
        signatures = {k: b.signature for k, b in learner.branches.items()}
        # A `byzantine` fault acts here too (edge.net.byzantine): the simulator measures its cost.
        transport = ByzantineTransport.for_agent(
            InMemoryTransport(bus, update_sender(cfg, agent), signatures), cfg, agent)
        loops[agent] = run_rounds(AgentRounds(cfg, agent, learner, table, schedule), transport,
                                  checkpoint=saver(agent))
    rows: list[MetricsRow] = []
    conflict: dict[str, dict[str, float | None]] = {}
    for round_idx in range(schedule.rounds):
        if round_idx == last:
            conflict = _conflict_after_mixing(cfg, learners, table, bus, round_idx)
        round_rows = [next(loop) for loop in loops.values()]
        rows += round_rows
        bus.forget_before(round_idx)
        if progress:
            progress(_progress_line(strategy.name, round_idx, schedule.rounds, round_rows))
    block = strategy_block(strategy.name, model_arch, rows, time.perf_counter() - started)
    block["codec"] = cfg.comm.codec
    block["gradient_conflict"] = conflict
    return block


def _conflict_after_mixing(cfg: FleetConfig, learners: dict[str, Learner], table: Holdings,
                           bus: InMemoryBus, round_idx: int) -> dict[str, dict[str, float | None]]:
    """Measure gradient conflict on the models right after round `round_idx`'s mixing.

    That is on the weights the holders share, before local training pulls them apart again (the
    models are restored afterwards).
    """
    graph = build_graph(cfg.topology, cfg.agent_ids, cfg.training.seed, round_idx, cfg.source)
    grads: dict[str, dict[str, np.ndarray]] = {}
    for agent, learner in learners.items():
        plan = mixing_plan(agent, graph, table)
        saved = {k: learner.branch_vector(k) for k in learner.branches}
        for key, weights in plan.items():
            received = {j: copy for j in weights if j != agent
                        for copy in [bus.copies(round_idx - 1, j).get(key)] if copy is not None}
            learner.mix(key, weights, received, agent)
        grads[agent] = {k: g for k, g in learner.mean_gradients().items() if k in plan}
        for key, vector in saved.items():
            learner.set_branch(key, vector)
    multimodal = {a: len(lr.data.modalities) > 1 for a, lr in learners.items()}
    return gradient_conflict(grads, multimodal, table)


def _progress_line(name: str, round_idx: int, rounds: int, rows: list[MetricsRow]) -> str:
    by_kind: dict[str, list[float]] = {}
    for row in rows:
        by_kind.setdefault(row["kind"], []).append(row["accuracy"])
    overall = np.mean([r["accuracy"] for r in rows])
    parts = " ".join(f"{k} {np.mean(v):.3f}" for k, v in by_kind.items())
    return f"[{name}] round {round_idx} of {round_span(rounds)}: accuracy {overall:.3f} ({parts})"


def simulate_fleet(cfg: FleetConfig, strategies: list[str], arch: str, rounds: int | None = None,
                   seed: int | None = None, progress: Progress | None = None,
                   checkpoint_dir: Path | None = None) -> SummaryDoc:
    """Every requested strategy on the same partitions; the whole summary.json document.

    `model.split: auto` and `model.synergy_scope: auto` are resolved first, from the fleet's
    decentralized PID estimate (edge.learning.auto_model); the summary's `model` block says what
    they resolved to.
    """
    cfg = with_overrides(cfg, rounds=rounds, seed=seed)
    data = agent_data(cfg)
    resolved = resolve_model(cfg, data, progress=progress)
    cfg = resolved.cfg
    info = fleet_info(cfg)
    blocks = {}
    for name in strategies:
        ckpt = checkpoint_dir if len(strategies) == 1 else (
            checkpoint_dir / name if checkpoint_dir is not None else None)
        blocks[name] = simulate_strategy(cfg, name, arch, data, info, progress, ckpt)
    agents: dict[str, AgentInfo] = {
        a.id: {"modalities": list(a.modalities), "kind": combination(a.modalities),
               "device": a.device, "n_train": len(data[a.id].train.y),
               "n_test": len(data[a.id].test.y)}
        for a in cfg.agent_specs}
    doc = fleet_header(cfg, agents, blocks)
    doc["model"] = resolved.as_dict()
    return doc
