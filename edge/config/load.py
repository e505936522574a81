"""Load a fleet config from YAML into the typed dataclasses of `edge.config.schema` and validate it."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from edge.config.agents import resolve_agents
from edge.config.schema import (
    BUILTIN_EXAMPLE,
    MODALITY_NAME,
    SAFE_ID,
    FamilyConfig,
    FleetConfig,
    fleet_modalities,
)
from edge.config.topology import check_topology
from edge.config.typed import build
from edge.errors import ConfigError
from edge.learning.strategies import STRATEGIES


def load_config(path: str | Path | None = None) -> FleetConfig:
    """Load and validate a fleet config; None loads the built-in basic-motions example."""
    file = Path(path) if path is not None else BUILTIN_EXAMPLE
    source = str(file)
    try:
        text = file.read_text()
    except OSError as exc:
        raise ConfigError(source, "<file>", f"cannot read the file ({exc.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "<file>"
        raise ConfigError(source, where, f"expected valid YAML ({getattr(exc, 'problem', exc)})") \
            from None
    return parse_config(raw, source)


def parse_config(raw: Any, source: str) -> FleetConfig:
    """Validate an already parsed mapping (as from YAML) into a FleetConfig."""
    cfg = build(FleetConfig, raw, source)
    if "source" in (raw or {}) or "agent_specs" in (raw or {}):
        raise ConfigError(source, "source", "unknown key; it is set by the loader")
    cfg = replace(cfg, source=source)
    _check_fleet(cfg)
    if cfg.strategy not in STRATEGIES:
        raise ConfigError(source, "strategy",
                          f"expected one of {', '.join(STRATEGIES)}, got {cfg.strategy!r}")
    modalities = fleet_modalities(cfg.data, source)
    _check_data(cfg, modalities)
    families = _complete_families(cfg, modalities)
    cfg = replace(cfg, families=families)
    _check_model(cfg)
    _check_training(cfg)
    _check_comm(cfg)
    cfg = replace(cfg, agent_specs=resolve_agents(cfg.agents, modalities, source))
    check_topology(cfg.topology, [a.id for a in cfg.agent_specs], cfg.training.seed, source)
    _check_faults(cfg)
    return cfg


def _check_fleet(cfg: FleetConfig) -> None:
    if not SAFE_ID.fullmatch(cfg.fleet):
        raise ConfigError(cfg.source, "fleet",
                          f"expected a safe MQTT topic level [A-Za-z0-9_-]{{1,64}}, got {cfg.fleet!r}")


def _check_data(cfg: FleetConfig, modalities: tuple[str, ...]) -> None:
    d, src = cfg.data, cfg.source
    part = d.partition
    if part.alpha <= 0:
        raise ConfigError(src, "data.partition.alpha", f"expected a number > 0, got {part.alpha}")
    if not 0.05 <= part.test_fraction <= 0.8:
        raise ConfigError(src, "data.partition.test_fraction",
                          f"expected a fraction between 0.05 and 0.8, got {part.test_fraction}")
    if part.min_samples < 2:
        raise ConfigError(src, "data.partition.min_samples", "expected an integer >= 2")
    if d.window < 4 or d.stride < 1:
        raise ConfigError(src, "data.window", "expected window >= 4 and stride >= 1")
    syn = d.synthetic
    if d.dataset == "synthetic-pid":
        if len(syn.modalities) < 2 or len(set(syn.modalities)) != len(syn.modalities):
            raise ConfigError(src, "data.synthetic.modalities",
                              "expected at least two distinct modality names")
        for i, name in enumerate(syn.modalities):
            if not MODALITY_NAME.fullmatch(name):
                raise ConfigError(src, f"data.synthetic.modalities[{i}]",
                                  f"expected a lowercase name like 'a', got {name!r}")
        bits = syn.redundant_bits + syn.unique_bits * len(syn.modalities) + syn.synergy_bits
        if min(syn.redundant_bits, syn.unique_bits, syn.synergy_bits) < 0 or not 1 <= bits <= 8:
            raise ConfigError(src, "data.synthetic",
                              f"expected non-negative bit counts giving 1 to 8 label bits, got {bits}")
        if syn.n_samples < 100 or syn.dim < 2 or syn.noise < 0:
            raise ConfigError(src, "data.synthetic",
                              "expected n_samples >= 100, dim >= 2 and noise >= 0")
    generated = cfg.agents.count or cfg.agents.counts
    if d.dataset == "npz" and d.path is None and (
            generated or not all(a.data for a in cfg.agents.list)):
        raise ConfigError(src, "data.path",
                          "npz data needs data.path (one file split by the partitioner) "
                          "or a data file on every agent in agents.list")
    del modalities


def _complete_families(cfg: FleetConfig, modalities: tuple[str, ...]) -> dict[str, FamilyConfig]:
    families = dict(cfg.families)
    for name in families:
        if name not in modalities:
            raise ConfigError(cfg.source, f"families.{name}",
                              f"unknown modality; expected one of {', '.join(modalities)}")
    for name in modalities:
        if name not in families:
            families[name] = FamilyConfig(
                kind="conv1d" if cfg.data.dataset == "basic-motions" else "mlp")
    for name, fam in families.items():
        if fam.latent < 3 or not fam.hidden or min(fam.hidden) < 1 or fam.kernel < 1:
            raise ConfigError(cfg.source, f"families.{name}",
                              "expected latent >= 3, a non-empty hidden list of positive sizes "
                              "and kernel >= 1")
        if fam.kind == "conv1d" and cfg.data.dataset in ("mfeat", "synthetic-pid"):
            raise ConfigError(cfg.source, f"families.{name}.kind",
                              f"expected mlp: {cfg.data.dataset} samples are vectors, not windows")
    return {m: families[m] for m in modalities}


def _check_model(cfg: FleetConfig) -> None:
    split = cfg.model.split
    if len(split) != 3 or min(split) <= 0:
        raise ConfigError(cfg.source, "model.split",
                          f"expected three positive numbers (redundant:unique:synergy), got {split}")
    for name, fam in cfg.families.items():
        # A share under half a unit would round to an empty slice: the ratio cannot be honoured.
        if min(fam.latent * s / sum(split) for s in split) < 0.5:
            raise ConfigError(cfg.source, "model.split",
                              f"ratio {':'.join(f'{s:g}' for s in split)} of latent "
                              f"{fam.latent} ({name}) leaves a slice with zero width")
    if cfg.model.tensor_rank < 1:
        raise ConfigError(cfg.source, "model.tensor_rank", "expected an integer >= 1")
    if cfg.model.head_hidden < 0:
        raise ConfigError(cfg.source, "model.head_hidden", "expected 0 (linear heads) or a width")


def _check_training(cfg: FleetConfig) -> None:
    t, src = cfg.training, cfg.source
    for name in ("rounds", "local_epochs", "batch_size"):
        if getattr(t, name) < 1:
            raise ConfigError(src, f"training.{name}", "expected an integer >= 1")
    if not 0 < t.lr < 10:
        raise ConfigError(src, "training.lr", f"expected a learning rate in (0, 10), got {t.lr}")
    if t.weight_decay < 0 or not 0 <= t.momentum < 1:
        raise ConfigError(src, "training", "expected weight_decay >= 0 and momentum in [0, 1)")
    loss = cfg.losses
    if min(loss.aux_head, loss.align, loss.orth) < 0 or loss.temperature <= 0:
        raise ConfigError(src, "losses", "expected non-negative weights and temperature > 0")


def _check_comm(cfg: FleetConfig) -> None:
    c, src = cfg.comm, cfg.source
    if not 0 < c.topk_fraction <= 1:
        raise ConfigError(src, "comm.topk_fraction", f"expected (0, 1], got {c.topk_fraction}")
    if not 1 <= c.chunk_kib <= 256:
        raise ConfigError(src, "comm.chunk_kib", f"expected 1 to 256, got {c.chunk_kib}")
    if c.keyframe_every < 0:
        raise ConfigError(src, "comm.keyframe_every",
                          "expected an integer >= 0 (0: keyframes only when needed)")
    if c.consensus_step is not None and not 0 < c.consensus_step <= 1:
        raise ConfigError(src, "comm.consensus_step",
                          f"expected a step in (0, 1], got {c.consensus_step}")
    if c.deadline_s <= 0:
        raise ConfigError(src, "comm.deadline_s", "expected a number of seconds > 0")
    url = cfg.broker.url
    if url != "embedded" and not re.fullmatch(r"mqtts?://[^:/\s]+(:\d{1,5})?/?", url):
        raise ConfigError(src, "broker.url",
                          f"expected 'embedded' or mqtt://host:port, got {url!r}")


def _check_faults(cfg: FleetConfig) -> None:
    ids = {a.id for a in cfg.agent_specs}
    rounds = cfg.training.rounds
    for i, f in enumerate(cfg.faults):
        path = f"faults[{i}]"
        if f.kind in ("leave", "broker-restart") and not 0 <= f.round < rounds:
            raise ConfigError(cfg.source, f"{path}.round",
                              f"expected a round index in [0, {rounds}), got {f.round}")
        if f.kind == "leave":
            if f.agent not in ids:
                raise ConfigError(cfg.source, f"{path}.agent",
                                  f"expected a known agent id, got {f.agent!r}")
            if f.return_round is not None and not f.round < f.return_round < rounds:
                raise ConfigError(cfg.source, f"{path}.return_round",
                                  f"expected a round after {f.round} and before {rounds}")
        if f.kind in ("delay", "loss"):
            unknown = [a for a in f.agents if a not in ids]
            if not f.agents or unknown:
                raise ConfigError(cfg.source, f"{path}.agents",
                                  f"expected a non-empty list of known agent ids, got {list(f.agents)}")
        if f.delay_ms < 0 or not 0 <= f.loss_percent <= 100:
            raise ConfigError(cfg.source, path,
                              "expected delay_ms >= 0 and loss_percent in [0, 100]")
