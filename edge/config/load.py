"""Load a fleet config from YAML into the typed dataclasses of `edge.config.schema` and validate it."""

from __future__ import annotations

import math
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
from edge.errors import ConfigError
from edge.learning.strategies import STRATEGIES

# A fleet config is a few kilobytes; a 1000-agent list is about 100 KB.
MAX_CONFIG_BYTES = 4 << 20
# What the synthetic-pid generator may allocate for its features (float32).
MAX_GENERATED_BYTES = 1 << 30


def load_config(path: str | Path | None = None) -> FleetConfig:
    """Load and validate a fleet config; None loads the built-in basic-motions example.

    Raises
    ------
    ConfigError
        An unreadable, oversized or non-UTF-8 file, invalid YAML, or any value outside the
        schema (edge.config.schema, checked by edge.config.typed) or the cross-field rules below.
    """
    file = Path(path) if path is not None else BUILTIN_EXAMPLE
    source = str(file)
    try:
        with file.open("rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(source, "<file>", f"cannot read the file ({exc.strerror})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(source, "<file>", f"expected a config of at most {MAX_CONFIG_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(source, "<file>", f"expected UTF-8 text, byte {exc.start} is "
                          f"0x{data[exc.start]:02x}") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "<file>"
        raise ConfigError(source, where, f"expected valid YAML ({getattr(exc, 'problem', exc)})") \
            from None
    except (ValueError, OverflowError, RecursionError) as exc:
        # PyYAML's constructors raise these for values that look typed but are not (a date
        # 2001-02-30, an integer of 5000 digits) and for nesting deeper than the stack.
        raise ConfigError(source, "<file>", f"expected valid YAML values "
                          f"({type(exc).__name__}: {str(exc)[:80]})") from None
    if is_field_document(raw):
        # Said plainly rather than as the fleet schema's first complaint ("data: required key
        # is missing"), which would send the user looking for a key a field file never has.
        raise ConfigError(source, "<file>", "expected a fleet config, got a field file "
                          "(docs/field.md): `parse-edge trial FILE` runs it, `parse-edge config "
                          "check FILE` checks it and the fleet it names")
    return parse_config(raw, source)


def is_field_document(raw: object) -> bool:
    """Whether a parsed YAML document is a field file (the keys `field` and `sites`, no `data`)."""
    return isinstance(raw, dict) and "field" in raw and "sites" in raw and "data" not in raw


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping.

    YAML 1.2 requires keys to be unique, but PyYAML keeps the last value silently: a second
    `strategy:` further down a fleet file would quietly replace the first.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *defaults` merges are overridden by explicit keys on purpose
                key = self.construct_object(key_node, deep=deep)
                if isinstance(key, (str, int, float, bool)) and key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"found the key {key!r} twice in one mapping",
                        key_node.start_mark)
                if isinstance(key, (str, int, float, bool)):
                    seen.add(key)
        return super().construct_mapping(node, deep)


def parse_config(raw: Any, source: str) -> FleetConfig:
    """Validate an already parsed mapping (as from YAML) into a FleetConfig."""
    if isinstance(raw, dict) and ("source" in raw or "agent_specs" in raw):
        raise ConfigError(source, "source" if "source" in raw else "agent_specs",
                          "unknown key; it is set by the loader")
    # pydantic loads only here, not when the CLI starts: the board install (`parse-edge infer`)
    # has no pydantic, and building the argument parser imports this module.
    from edge.config.typed import build

    _refuse_inline_secrets(raw, source)
    cfg = build(FleetConfig, raw, source)
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
    _check_comm(cfg)
    cfg = replace(cfg, agent_specs=resolve_agents(cfg.agents, modalities, source))
    check_topology(cfg.topology, [a.id for a in cfg.agent_specs], cfg.training.seed, source)
    _check_quorum(cfg)
    _check_faults(cfg)
    return cfg


# Keys that once held secrets in the YAML, and the file-based form that replaces each.
_INLINE_SECRETS = {
    "password": "broker.password_file: FILE (mode 0600), or broker.credentials: DIR",
    "hmac_key": "broker.key_file: FILE (mode 0600), or broker.credentials: DIR",
}


def _refuse_inline_secrets(raw: Any, source: str) -> None:
    """A fleet YAML names secret files, never holds secrets: refuse `broker.password|hmac_key`."""
    broker = raw.get("broker") if isinstance(raw, dict) else None
    if not isinstance(broker, dict):
        return
    for key, instead in _INLINE_SECRETS.items():
        if key in broker:
            raise ConfigError(source, f"broker.{key}",
                              f"secrets are not kept in the fleet YAML; expected {instead} "
                              "(the folder `parse-edge broker credentials` writes)")


def _check_fleet(cfg: FleetConfig) -> None:
    if not SAFE_ID.fullmatch(cfg.fleet):
        raise ConfigError(cfg.source, "fleet",
                          f"expected a safe MQTT topic level [A-Za-z0-9_-]{{1,64}}, got {cfg.fleet!r}")


def _check_data(cfg: FleetConfig, modalities: tuple[str, ...]) -> None:
    # Ranges of single values are the schema's (edge.config.schema); these rules span fields.
    d, src = cfg.data, cfg.source
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
        if not 1 <= bits <= 8:
            raise ConfigError(src, "data.synthetic",
                              f"expected non-negative bit counts giving 1 to 8 label bits, got {bits}")
        feature_bytes = syn.n_samples * syn.dim * len(syn.modalities) * 4
        if feature_bytes > MAX_GENERATED_BYTES:
            raise ConfigError(src, "data.synthetic",
                              f"expected n_samples x dim x modalities x 4 B of at most "
                              f"{MAX_GENERATED_BYTES} bytes, got {feature_bytes}")
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
        if fam.kind == "conv1d" and cfg.data.dataset in ("mfeat", "synthetic-pid"):
            raise ConfigError(cfg.source, f"families.{name}.kind",
                              f"expected mlp: {cfg.data.dataset} samples are vectors, not windows")
    return {m: families[m] for m in modalities}


def _check_model(cfg: FleetConfig) -> None:
    scope = cfg.model.synergy_scope
    if isinstance(scope, dict):
        for name in scope:
            if name not in cfg.families:
                raise ConfigError(cfg.source, f"model.synergy_scope.{name}",
                                  f"unknown modality; expected some of {', '.join(cfg.families)}")
    split = cfg.model.split
    if split == "auto":  # resolved before round 0 (edge.learning.auto_model)
        return
    if len(split) != 3:
        raise ConfigError(cfg.source, "model.split",
                          f"expected three positive numbers (redundant:unique:synergy), got {split}")
    for name, fam in cfg.families.items():
        # A share under half a unit would round to an empty slice: the ratio cannot be honoured.
        if min(fam.latent * s / sum(split) for s in split) < 0.5:
            raise ConfigError(cfg.source, "model.split",
                              f"ratio {':'.join(f'{s:g}' for s in split)} of latent "
                              f"{fam.latent} ({name}) leaves a slice with zero width")


def _check_quorum(cfg: FleetConfig) -> None:
    t, src, n = cfg.training, cfg.source, len(cfg.agent_specs)
    quorum = t.quorum
    if isinstance(quorum, str):
        ok = quorum == "all"
    elif isinstance(quorum, float):
        ok = math.isfinite(quorum) and 0 < quorum <= 1
    else:
        ok = 1 <= quorum <= n
    if not ok:
        raise ConfigError(src, "training.quorum",
                          f"expected 'all', a count of agents in [1, {n}] or a fraction in (0, 1], "
                          f"got {quorum!r}")
    if not (math.isfinite(t.start_timeout_s) and t.start_timeout_s > 0):
        raise ConfigError(src, "training.start_timeout_s",
                          f"expected seconds > 0, got {t.start_timeout_s}")


def _check_comm(cfg: FleetConfig) -> None:
    src = cfg.source
    url = cfg.broker.url
    if url != "embedded" and not re.fullmatch(r"mqtts?://[^:/\s]+(:\d{1,5})?/?", url):
        raise ConfigError(src, "broker.url",
                          f"expected 'embedded' or mqtt://host:port, got {url!r}")
    if cfg.broker.certs and cfg.broker.tls is not None:
        raise ConfigError(src, "broker.certs", "expected either certs (the folder `parse-edge broker "
                          "certs` writes) or tls (single files), not both")


def _check_faults(cfg: FleetConfig) -> None:
    ids = {a.id for a in cfg.agent_specs}
    rounds = cfg.training.rounds
    for i, f in enumerate(cfg.faults):
        path = f"faults[{i}]"
        if f.kind in ("leave", "broker-restart", "byzantine") and not 0 <= f.round < rounds:
            raise ConfigError(cfg.source, f"{path}.round",
                              f"expected a round index in [0, {rounds}), got {f.round}")
        if f.kind == "leave":
            if f.agent not in ids:
                raise ConfigError(cfg.source, f"{path}.agent",
                                  f"expected a known agent id, got {f.agent!r}")
            if f.return_round is not None and not f.round < f.return_round < rounds:
                raise ConfigError(cfg.source, f"{path}.return_round",
                                  f"expected a round after {f.round} and before {rounds}")
        if f.kind in ("delay", "loss", "byzantine"):
            unknown = [a for a in f.agents if a not in ids]
            if not f.agents or unknown:
                raise ConfigError(cfg.source, f"{path}.agents",
                                  f"expected a non-empty list of known agent ids, got {list(f.agents)}")
