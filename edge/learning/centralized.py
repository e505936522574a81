"""The centralized reference: pool every agent's training data into one model, then hand it out."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace

import torch

from edge.learning.learner import Learner, build_model
from edge.learning.losses import objective


def pooled_training(learners: Sequence[Learner], epochs: int) -> None:
    """Train one model over all modalities on the union of the agents' training data (each batch
    carries the modalities its agent has), then load its weights into every agent's model
    wherever names and shapes agree (fusion of a combination nobody pooled stays as it was).
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
        learner.model.load_state_dict(same, strict=False)
