"""Fleet configuration: typed dataclasses loaded from YAML and validated at load time."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from devices.profiles import DEFAULT_PROFILE, PROFILES
from edge.errors import ConfigError
from edge.schema import build

SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
MODALITY_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")

# Modalities each bundled data set offers, in fleet order.
DATASET_MODALITIES: dict[str, tuple[str, ...]] = {
    "basic-motions": ("accel", "gyro"),
    "mfeat": ("fou", "fac", "kar", "pix", "zer", "mor"),
}
STRATEGIES = ("parse", "local", "dsgd-task", "dsgd-modality", "dsgd-hybrid", "monolithic",
              "centralized")
BUILTIN_EXAMPLE = Path(__file__).parent / "examples" / "basic-motions.yaml"


@dataclass(frozen=True)
class PartitionConfig:
    kind: Literal["iid", "dirichlet"] = "iid"
    alpha: float = 0.5
    test_fraction: float = 0.25
    # Dirichlet draws are repeated until every agent holds at least this many samples.
    min_samples: int = 8


@dataclass(frozen=True)
class SyntheticConfig:
    modalities: tuple[str, ...] = ("a", "b")
    n_samples: int = 3000
    dim: int = 16
    redundant_bits: int = 1
    unique_bits: int = 1
    synergy_bits: int = 1
    noise: float = 0.5


@dataclass(frozen=True)
class DataConfig:
    dataset: Literal["basic-motions", "mfeat", "synthetic-pid", "npz"]
    modalities: tuple[str, ...] | None = None
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    # basic-motions: recordings are cut into windows after partitioning, so windows of one
    # recording never straddle an agent's train/test split.
    window: int = 50
    stride: int = 10
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    # npz: one file for the fleet, split by the partitioner (per-agent files go in agents.list).
    path: str | None = None


@dataclass(frozen=True)
class FamilyConfig:
    kind: Literal["mlp", "conv1d"] = "mlp"
    hidden: tuple[int, ...] = (64,)
    latent: int = 48
    kernel: int = 5


@dataclass(frozen=True)
class AgentSpec:
    id: str
    modalities: tuple[str, ...]
    device: str = DEFAULT_PROFILE
    data: str | None = None


@dataclass(frozen=True)
class AgentsConfig:
    count: int = 0
    multimodal_fraction: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    device: str = DEFAULT_PROFILE
    id_prefix: str = "a"
    list: tuple[AgentSpec, ...] = ()


@dataclass(frozen=True)
class TopologyConfig:
    kind: Literal["ring", "chordal-ring", "random-regular", "complete", "erdos-renyi",
                  "edges"] = "ring"
    chords: tuple[int, ...] = (1, 3)
    degree: int = 4
    p: float = 0.3
    edges: tuple[tuple[str, ...], ...] = ()
    resample_each_round: bool = False


@dataclass(frozen=True)
class TrainingConfig:
    rounds: int = 20
    local_epochs: int = 1
    batch_size: int = 32
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 0.003
    weight_decay: float = 0.0
    momentum: float = 0.9
    seed: int = 0


@dataclass(frozen=True)
class ModelConfig:
    arch: Literal["sliced", "plain"] = "sliced"
    split: tuple[float, ...] = (1.0, 1.0, 1.0)
    fusion: Literal["concat", "sum", "gated", "tensor"] = "concat"
    tensor_rank: int = 4
    combiner: Literal["sum", "mean", "gate", "fusion"] = "sum"
    head_hidden: int = 0
    share_heads: bool = False


@dataclass(frozen=True)
class LossConfig:
    aux_head: float = 0.25
    align: float = 0.1
    orth: float = 0.01
    temperature: float = 0.2


# Measured on mfeat (parse, 30 rounds, top-k 2%): gamma 1 lost 10 to 36 points against fp32
# depending on keyframes, 0.3 lost about 2; 0.2 was no better.
TOPK_CONSENSUS_STEP = 0.3


@dataclass(frozen=True)
class CommConfig:
    codec: Literal["fp32", "fp16", "int8", "topk"] = "fp32"
    topk_fraction: float = 0.02
    error_feedback: bool = True
    difference_coding: bool = False
    # Full updates: every N messages (0: only on first contact and when a receiver asks),
    # in this codec (None: fp32 for topk, else the codec itself).
    keyframe_every: int = 10
    keyframe_codec: Literal["fp32", "fp16", "int8"] | None = None
    chunk_kib: int = 256
    deadline_s: float = 30.0
    # CHOCO consensus step gamma: x_i += gamma * sum_j w_ij (x̂_j - x̂_i); 1 is plain gossip.
    # None: 1 for the dense codecs, TOPK_CONSENSUS_STEP for topk.
    consensus_step: float | None = None

    @property
    def mixing_step(self) -> float:
        """The consensus step in effect."""
        if self.consensus_step is not None:
            return self.consensus_step
        return TOPK_CONSENSUS_STEP if self.codec == "topk" else 1.0


@dataclass(frozen=True)
class TlsConfig:
    ca_file: str
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True)
class BrokerConfig:
    url: str = "embedded"
    tls: TlsConfig | None = None
    username: str | None = None
    password: str | None = None
    hmac_key: str | None = None


@dataclass(frozen=True)
class FaultConfig:
    """One injected fault of a trial (the simulator ignores faults)."""

    kind: Literal["leave", "broker-restart", "delay", "loss"]
    round: int = 1                       # leave / broker-restart: when (0-based round index)
    agent: str | None = None             # leave: who
    return_round: int | None = None      # leave: when it comes back (None: never)
    agents: tuple[str, ...] = ()         # delay / loss: whose outgoing updates
    delay_ms: float = 0.0
    loss_percent: float = 0.0


@dataclass(frozen=True)
class FleetConfig:
    fleet: str
    data: DataConfig
    agents: AgentsConfig
    families: dict[str, FamilyConfig] = field(default_factory=dict)
    topology: TopologyConfig = field(default_factory=TopologyConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    strategy: Literal[STRATEGIES] = "parse"  # type: ignore[valid-type]
    model: ModelConfig = field(default_factory=ModelConfig)
    losses: LossConfig = field(default_factory=LossConfig)
    comm: CommConfig = field(default_factory=CommConfig)
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    faults: tuple[FaultConfig, ...] = ()
    # Filled in by load_config: where the file lives and the resolved agent list.
    source: str = "<config>"
    agent_specs: tuple[AgentSpec, ...] = ()

    @property
    def modalities(self) -> tuple[str, ...]:
        """The fleet's modalities in canonical order."""
        return fleet_modalities(self.data, self.source)

    def resolve_path(self, path: str) -> Path:
        """A path from the config, relative to the config file's folder."""
        p = Path(path)
        return p if p.is_absolute() else Path(self.source).parent / p


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
    modalities = fleet_modalities(cfg.data, source)
    _check_data(cfg, modalities)
    families = _complete_families(cfg, modalities)
    cfg = replace(cfg, families=families)
    _check_model(cfg)
    _check_training(cfg)
    _check_comm(cfg)
    from edge.agents import resolve_agents
    from edge.topology import check_topology

    cfg = replace(cfg, agent_specs=resolve_agents(cfg.agents, modalities, source))
    check_topology(cfg.topology, [a.id for a in cfg.agent_specs], cfg.training.seed, source)
    _check_faults(cfg)
    return cfg


def fleet_modalities(data: DataConfig, source: str) -> tuple[str, ...]:
    """The modalities this fleet's data offers (all the data set's, or the selected ones)."""
    if data.dataset == "synthetic-pid":
        available: tuple[str, ...] | None = data.synthetic.modalities
    else:
        available = DATASET_MODALITIES.get(data.dataset)
    if data.modalities is None:
        if available is None:
            raise ConfigError(source, "data.modalities",
                              "required for npz data: the modality names, as keys x_<name>")
        return available
    for i, name in enumerate(data.modalities):
        if not MODALITY_NAME.fullmatch(name):
            raise ConfigError(source, f"data.modalities[{i}]",
                              f"expected a lowercase name like 'accel', got {name!r}")
        if available is not None and name not in available:
            raise ConfigError(source, f"data.modalities[{i}]",
                              f"unknown modality {name!r} for {data.dataset}; "
                              f"expected one of {', '.join(available)}")
    if len(set(data.modalities)) != len(data.modalities) or not data.modalities:
        raise ConfigError(source, "data.modalities", "expected a non-empty list without repeats")
    if available is not None:
        return tuple(m for m in available if m in data.modalities)
    return data.modalities


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
            kind = "conv1d" if cfg.data.dataset == "basic-motions" else "mlp"
            families[name] = FamilyConfig(kind=kind)
    for name, fam in families.items():
        if fam.latent < 3 or not fam.hidden or min(fam.hidden) < 1 or fam.kernel < 1:
            raise ConfigError(cfg.source, f"families.{name}",
                              "expected latent >= 3, a non-empty hidden list of positive sizes "
                              "and kernel >= 1")
        if fam.kind == "conv1d" and cfg.data.dataset in ("mfeat", "synthetic-pid"):
            raise ConfigError(cfg.source, f"families.{name}.kind",
                              f"expected mlp: {cfg.data.dataset} samples are vectors, not windows")
    return {m: families[m] for m in modalities}


def slice_widths(latent: int, split: tuple[float, ...]) -> tuple[int, int, int]:
    """Redundant / unique / synergy widths for a latent width and split ratio (sum == latent)."""
    total = sum(split)
    raw = [latent * s / total for s in split]
    widths = [int(w) for w in raw]
    # Hand the rounding remainder to the slices that lost the most, so sum == latent.
    for i in sorted(range(3), key=lambda i: widths[i] - raw[i])[: latent - sum(widths)]:
        widths[i] += 1
    return widths[0], widths[1], widths[2]


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


def check_device(name: str, source: str, path: str) -> None:
    """Reject device profiles parse-edge does not know."""
    if name not in PROFILES:
        raise ConfigError(source, path,
                          f"unknown device profile {name!r}; expected one of {', '.join(PROFILES)}")


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
