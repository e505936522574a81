"""The in-process simulator: every agent in one process, branches handed over in memory."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from edge.checkpoint import save_checkpoint
from edge.config import FleetConfig
from edge.data import AgentData, DataInfo, agent_data, fleet_info
from edge.diagnostics import gradient_conflict
from edge.fleet import make_learner
from edge.rounds import RoundResult, mixing_plan, run_round
from edge.sharing import combination
from edge.strategies import get_strategy
from edge.summary import fleet_header, strategy_summary
from edge.topology import build_graph
from edge.updates import update_sender

Progress = Callable[[str], None]


def with_overrides(cfg: FleetConfig, rounds: int | None = None, seed: int | None = None) -> FleetConfig:
    """The config with `--rounds` / `--seed` applied (the seed also re-draws the partition)."""
    training = cfg.training
    if rounds is not None:
        training = replace(training, rounds=rounds)
    if seed is not None:
        training = replace(training, seed=seed)
    return replace(cfg, training=training)


def simulate_strategy(cfg: FleetConfig, strategy_name: str, arch: str,
                      data: dict[str, AgentData] | None = None, info: DataInfo | None = None,
                      progress: Progress | None = None,
                      checkpoint_dir: Path | None = None) -> dict:
    """Run one strategy over the fleet; returns its `strategies.<name>` summary block."""
    started = time.perf_counter()
    torch.set_num_threads(1)  # tiny models: one thread is faster, and matches the agents
    torch.manual_seed(cfg.training.seed)
    data = data if data is not None else agent_data(cfg)
    info = info if info is not None else fleet_info(cfg)
    strategy = get_strategy(strategy_name)
    model_arch = strategy.arch(arch)
    rounds, local_epochs = strategy.schedule(cfg.training.rounds, cfg.training.local_epochs)
    ids = [a.id for a in cfg.agent_specs]
    learners = {a.id: make_learner(cfg, a, data[a.id], info, strategy, model_arch)
                for a in cfg.agent_specs}
    holdings = {a: {k: b.signature for k, b in lr.branches.items()} for a, lr in learners.items()}
    kinds = {a.id: combination(a.modalities) for a in cfg.agent_specs}
    strategy.prepare(list(learners.values()))

    # The same codecs as on the wire: what a neighbour mixes is our branch as it decodes it.
    senders = {a: update_sender(cfg, a) for a in ids}
    encoded_bytes = 0
    history: list[dict[str, RoundResult]] = []
    outboxes: dict[str, dict[str, np.ndarray]] = {}
    conflict: dict = {}
    for round_idx in range(rounds):
        graph = build_graph(cfg.topology, ids, cfg.training.seed, round_idx, cfg.source)
        plans = {a: mixing_plan(a, graph, holdings) for a in ids}
        if round_idx == rounds - 1:
            conflict = _conflict_after_mixing(learners, plans, outboxes, holdings)
        results: dict[str, RoundResult] = {}
        new_outboxes = {}
        for agent in ids:
            received = {key: {j: outboxes[j][key] for j in weights
                              if j != agent and key in outboxes.get(j, {})}
                        for key, weights in plans[agent].items()}
            results[agent], outbox = run_round(
                learners[agent], agent, round_idx, plans[agent], received, local_epochs,
                public=outboxes.get(agent, {}))
            new_outboxes[agent] = {}
            for key, vector in outbox.items():
                branch = learners[agent].branches[key]
                messages = senders[agent].encode(round_idx, key, branch.signature, vector)
                encoded_bytes += sum(len(payload) for _, payload in messages)
                new_outboxes[agent][key] = senders[agent].public_copy(key)
        outboxes = new_outboxes
        history.append(results)
        if progress:
            progress(_progress_line(strategy_name, round_idx, rounds, results, kinds))
    summary = strategy_summary(strategy_name, model_arch, history, kinds,
                               time.perf_counter() - started)
    summary["gradient_conflict"] = conflict
    summary["bytes_encoded"] = {"codec": cfg.comm.codec, "total": encoded_bytes,
                                "per_round": encoded_bytes / rounds if rounds else 0.0}
    if checkpoint_dir is not None:
        for agent, learner in learners.items():
            save_checkpoint(checkpoint_dir / "agents" / agent / "checkpoint.pt", cfg, learner,
                            agent, rounds - 1, strategy_name)
    return summary


def _conflict_after_mixing(learners: dict, plans: dict, outboxes: dict, holdings: dict) -> dict:
    """Gradient conflict measured on copies of the models right after the last round's mixing,
    i.e. on the weights the holders share, before local training pulls them apart again."""
    grads: dict[str, dict[str, np.ndarray]] = {}
    for agent, learner in learners.items():
        saved = {k: learner.branch_vector(k) for k in learner.branches}
        for key, weights in plans[agent].items():
            received = {j: outboxes[j][key] for j in weights if j != agent and key in outboxes.get(j, {})}
            learner.mix(key, weights, received, agent)
        grads[agent] = {k: g for k, g in learner.mean_gradients().items() if k in plans[agent]}
        for key, vector in saved.items():
            learner.set_branch(key, vector)
    multimodal = {a: len(lr.data.modalities) > 1 for a, lr in learners.items()}
    return gradient_conflict(grads, multimodal, holdings)


def _progress_line(name: str, round_idx: int, rounds: int, results: dict[str, RoundResult],
                   kinds: dict[str, str]) -> str:
    by_kind: dict[str, list[float]] = {}
    for agent, res in results.items():
        by_kind.setdefault(kinds[agent], []).append(res.accuracy)
    overall = np.mean([r.accuracy for r in results.values()])
    parts = " ".join(f"{k} {np.mean(v):.3f}" for k, v in by_kind.items())
    return f"[{name}] round {round_idx + 1}/{rounds}  accuracy {overall:.3f}  ({parts})"


def simulate_fleet(cfg: FleetConfig, strategies: list[str], arch: str, rounds: int | None = None,
                   seed: int | None = None, progress: Progress | None = None,
                   checkpoint_dir: Path | None = None) -> dict:
    """Every requested strategy on the same partitions; the whole summary.json document."""
    cfg = with_overrides(cfg, rounds, seed)
    data = agent_data(cfg)
    info = fleet_info(cfg)
    blocks = {}
    for name in strategies:
        ckpt = checkpoint_dir if len(strategies) == 1 else (
            checkpoint_dir / name if checkpoint_dir is not None else None)
        blocks[name] = simulate_strategy(cfg, name, arch, data, info, progress, ckpt)
    agents = {a.id: {"modalities": list(a.modalities), "kind": combination(a.modalities),
                     "n_train": len(data[a.id].train.y), "n_test": len(data[a.id].test.y)}
              for a in cfg.agent_specs}
    return {**fleet_header(cfg, agents), "strategies": blocks}
