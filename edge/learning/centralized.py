"""The centralized reference: pool every agent's training data into one model, then hand it out."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import Tensor

from edge.learning.learner import Learner, build_model
from edge.learning.losses import objective
from edge.learning.model import AgentModel, ModelSpec


def pooled_training(learners: Sequence[Learner], epochs: int) -> AgentModel:
    """Train one model on the pooled training data, hand its weights out, return it.

    The model covers every modality and trains on the union of the agents' training data (each
    batch carries the modalities its agent has); its weights are loaded into every agent's model
    wherever names and shapes agree (fusion of a combination nobody pooled stays as it was), and
    the plain head is cut down to each agent's modalities.
    """
    first = learners[0]
    cfg = first.cfg
    shapes = {m: s for lr in learners for m, s in lr.model.spec.input_shapes.items()}
    fleet = tuple(m for m in cfg.modalities if m in shapes)
    spec = replace(first.model.spec, modalities=fleet, input_shapes=shapes)
    pooled = build_model(spec, cfg.training.seed)
    optimizer = torch.optim.Adam(pooled.parameters(), lr=cfg.training.lr,
                                 weight_decay=cfg.training.weight_decay)
    rng = random.Random(cfg.training.seed)
    pooled.train()
    for _ in range(epochs):
        batches = [b for lr in learners for b in lr.batches()]
        rng.shuffle(batches)
        for x, y in batches:
            loss = objective(pooled(x), y, cfg.losses).total
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    state = pooled.state_dict()
    for learner in learners:
        own = learner.model.state_dict()
        same = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        same |= _late_head_columns(pooled.spec, learner.model.spec, state, own)
        learner.model.load_state_dict(same, strict=False)
    return pooled


def _late_head_columns(pooled: ModelSpec, spec: ModelSpec, state: dict[str, Tensor],
                       own: dict[str, Tensor]) -> dict[str, Tensor]:
    """Cut the pooled plain head's first layer down to an agent's modalities.

    The pooled plain head reads concat(z_m) over every fleet modality, with zeros for the
    missing ones (AgentModel._forward_plain), so restricted to the agent's modalities it is
    exactly that layer's weight columns of those modalities. Without this the layer did not
    match in shape and unimodal agents kept a random head: centralized/plain scored 77.4 on
    mfeat, below local (81.8), with its unimodal agents at 75.1 / 66.7.
    """
    key = "heads.late.0.weight"
    if spec.arch != "plain" or key not in state or key not in own or own[key].shape == state[key].shape:
        return {}
    offsets, start = {}, 0
    for m in pooled.modalities:
        offsets[m] = (start, start + pooled.families[m].latent)
        start += pooled.families[m].latent
    columns = torch.cat([torch.arange(*offsets[m]) for m in spec.modalities])
    return {key: state[key][:, columns]}
