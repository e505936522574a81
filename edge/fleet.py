"""The fleet's models: build each agent's learner and the table of who holds which branch."""

from __future__ import annotations

import torch

from edge.config import AgentSpec, FleetConfig
from edge.data import AgentData, DataInfo
from edge.learner import Branch, Learner, branches_of, build_model, model_spec
from edge.model import AgentModel
from edge.rounds import Holdings
from edge.strategies import Strategy


def make_learner(cfg: FleetConfig, spec: AgentSpec, data: AgentData, info: DataInfo,
                 strategy: Strategy, arch: str) -> Learner:
    """An agent's learner: its model (seeded per unit), branches by the strategy, optimizer."""
    seed = cfg.training.seed
    model = build_model(model_spec(cfg, spec.modalities, info.input_shapes, len(info.labels), arch),
                        seed)
    branches = branches_of(model, strategy.name, cfg.model.share_heads)
    agent_seed = seed * 1000 + [a.id for a in cfg.agent_specs].index(spec.id)
    return Learner(cfg, data, model, branches, agent_seed)


def agent_branches(cfg: FleetConfig, spec: AgentSpec, info: DataInfo, strategy: Strategy,
                   arch: str) -> dict[str, Branch]:
    """The branches an agent holds, computed from shapes alone (no weights allocated)."""
    with torch.device("meta"):
        model = AgentModel(model_spec(cfg, spec.modalities, info.input_shapes, len(info.labels),
                                      arch))
    return branches_of(model, strategy.name, cfg.model.share_heads)


def holdings(cfg: FleetConfig, info: DataInfo, strategy: Strategy, arch: str) -> Holdings:
    """Every agent's {branch key: signature}: what each agent can average with whom."""
    return {
        spec.id: {k: b.signature for k, b in agent_branches(cfg, spec, info, strategy, arch).items()}
        for spec in cfg.agent_specs
    }
