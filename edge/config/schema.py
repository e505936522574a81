"""The fleet configuration's types: frozen dataclasses, one per YAML section, with their defaults.

Only types and constants live here; `edge.config.load` reads YAML into them and validates values.
See docs/ARCHITECTURE.md for where each section is used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from devices.profiles import DEFAULT_PROFILE
from edge.errors import ConfigError

SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
MODALITY_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")

# Modalities each bundled data set offers, in fleet order.
DATASET_MODALITIES: dict[str, tuple[str, ...]] = {
    "basic-motions": ("accel", "gyro"),
    "mfeat": ("fou", "fac", "kar", "pix", "zer", "mor"),
}
BUILTIN_EXAMPLE = Path(__file__).parents[1] / "examples" / "basic-motions.yaml"


@dataclass(frozen=True)
class PartitionConfig:
    """How the pool is shared out among agents (`data.partition`)."""

    kind: Literal["iid", "dirichlet"] = "iid"
    alpha: float = 0.5
    test_fraction: float = 0.25
    # Dirichlet draws are repeated until every agent holds at least this many samples.
    min_samples: int = 8


@dataclass(frozen=True)
class SyntheticConfig:
    """The synthetic-pid generator's settings (`data.synthetic`; see edge.data.synthetic)."""

    modalities: tuple[str, ...] = ("a", "b")
    n_samples: int = 3000
    dim: int = 16
    redundant_bits: int = 1
    unique_bits: int = 1
    synergy_bits: int = 1
    noise: float = 0.5


@dataclass(frozen=True)
class DataConfig:
    """Which data the fleet learns from (`data`)."""

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
    """An encoder family, declared fleet-wide per modality so holders can average it (`families.<m>`)."""

    kind: Literal["mlp", "conv1d"] = "mlp"
    hidden: tuple[int, ...] = (64,)
    latent: int = 48
    kernel: int = 5


@dataclass(frozen=True)
class AgentSpec:
    """One agent: its id (an MQTT topic level), modalities, device profile and optional own data file."""

    id: str
    modalities: tuple[str, ...]
    device: str = DEFAULT_PROFILE
    data: str | None = None


@dataclass(frozen=True)
class AgentsConfig:
    """How agents are generated (`agents`): counts by kind or one multimodal-fraction knob, plus a list."""

    count: int = 0
    multimodal_fraction: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    device: str = DEFAULT_PROFILE
    id_prefix: str = "a"
    list: tuple[AgentSpec, ...] = ()


@dataclass(frozen=True)
class TopologyConfig:
    """The communication graph (`topology`)."""

    kind: Literal["ring", "chordal-ring", "random-regular", "complete", "erdos-renyi",
                  "edges"] = "ring"
    chords: tuple[int, ...] = (1, 3)
    degree: int = 4
    p: float = 0.3
    edges: tuple[tuple[str, ...], ...] = ()
    resample_each_round: bool = False


@dataclass(frozen=True)
class TrainingConfig:
    """Local training and the round budget (`training`)."""

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
    """The model every agent builds (`model`): architecture, slice split, fusion, combiner, heads."""

    arch: Literal["sliced", "plain"] = "sliced"
    split: tuple[float, ...] = (1.0, 1.0, 1.0)
    fusion: Literal["concat", "sum", "gated", "tensor"] = "concat"
    tensor_rank: int = 4
    combiner: Literal["sum", "mean", "gate", "fusion"] = "sum"
    head_hidden: int = 0
    share_heads: bool = False


@dataclass(frozen=True)
class LossConfig:
    """Weights of the training objective's terms (`losses`; edge.learning.losses)."""

    aux_head: float = 0.25
    align: float = 0.1
    orth: float = 0.01
    temperature: float = 0.2


# Measured on mfeat (parse, 30 rounds, top-k 2%): gamma 1 lost 10 to 36 points against fp32
# depending on keyframes, 0.3 lost about 2; 0.2 was no better.
TOPK_CONSENSUS_STEP = 0.3


@dataclass(frozen=True)
class CommConfig:
    """How updates are coded and exchanged (`comm`): codec, keyframes, chunks, deadline, gamma."""

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
    # The CHOCO consensus step gamma (edge.learning.gossip.consensus_step); 1 is plain gossip.
    # None: the codec's default, see `consensus_step` below.
    consensus_step: float | None = None


@dataclass(frozen=True)
class TlsConfig:
    """TLS files for an mqtts:// broker (`broker.tls`)."""

    ca_file: str
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True)
class BrokerConfig:
    """Where the broker is and how to authenticate and sign (`broker`)."""

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
    """A whole validated fleet config; `agent_specs` holds the resolved agents in fleet order."""

    fleet: str
    data: DataConfig
    agents: AgentsConfig
    families: dict[str, FamilyConfig] = field(default_factory=dict)
    topology: TopologyConfig = field(default_factory=TopologyConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    strategy: str = "parse"             # a name in edge.learning.strategies.STRATEGIES
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

    @property
    def agent_ids(self) -> list[str]:
        """Every agent id, in fleet order (the order partitions and seeds follow)."""
        return [a.id for a in self.agent_specs]

    def agent(self, agent_id: str) -> AgentSpec:
        """The spec of one agent.

        Raises
        ------
        ConfigError
            When `agent_id` is not in the fleet.
        """
        for spec in self.agent_specs:
            if spec.id == agent_id:
                return spec
        raise ConfigError(self.source, "agents",
                          f"expected one of {', '.join(self.agent_ids)}, got agent {agent_id!r}")

    def resolve_path(self, path: str) -> Path:
        """A path from the config, relative to the config file's folder."""
        p = Path(path)
        return p if p.is_absolute() else Path(self.source).parent / p


def consensus_step(comm: CommConfig) -> float:
    """The CHOCO consensus step gamma in effect: the configured one, else 1 (plain gossip) for the
    dense codecs and TOPK_CONSENSUS_STEP for top-k, whose lagging public copies need damping.
    """
    if comm.consensus_step is not None:
        return comm.consensus_step
    return TOPK_CONSENSUS_STEP if comm.codec == "topk" else 1.0


def fleet_modalities(data: DataConfig, source: str) -> tuple[str, ...]:
    """The modalities this fleet's data offers (all the data set's, or the selected ones).

    Raises
    ------
    ConfigError
        For npz data without `data.modalities`, or a selected modality the data set lacks.
    """
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
