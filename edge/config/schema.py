"""The fleet configuration's types: frozen dataclasses, one per YAML section, with their defaults.

Only types and constants live here; `edge.config.load` reads YAML into them and validates values.
See docs/ARCHITECTURE.md for where each section is used.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from annotated_types import Interval, Len

from devices.npzio import DEFAULT_MAX_BYTES
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

# Bounds of the numeric fields, checked at load (edge.config.typed) from the `Interval`
# annotations below; every float must also be finite. Each is far beyond any real fleet and
# small enough that nothing derived from it overflows or tries to allocate the impossible.
MAX_AGENTS = 4096                # agents in one fleet
MAX_ROUNDS = 100_000             # rounds, and round indices of faults
MAX_SEED = 2**32 - 1             # numpy's seed range (numpy.random.RandomState)
MAX_WIDTH = 4096                 # an encoder layer, latent or head: 4096^2 float32 = 64 MiB
MAX_LAYERS = 16                  # hidden layers of an encoder family
MAX_SAMPLES = 1_000_000          # generated samples, batch size
MAX_STEPS = 100_000              # window length / stride, in samples of a recording
MAX_EPOCHS = 1000                # local epochs per round
MAX_WEIGHT = 1e6                 # loss weights, split ratios, temperatures, Dirichlet alpha
MAX_DEADLINE_S = 86_400.0        # one day: longer is a stalled fleet, not a slow one
MAX_DELAY_MS = 600_000.0         # ten minutes of injected delay


@dataclass(frozen=True)
class PartitionConfig:
    """How the pool is shared out among agents (`data.partition`)."""

    kind: Literal["iid", "dirichlet"] = "iid"
    # Below 1e-3, numpy's Dirichlet draws underflow to all-zero rows.
    alpha: Annotated[float, Interval(ge=1e-3, le=MAX_WEIGHT)] = 0.5
    test_fraction: Annotated[float, Interval(ge=0.05, le=0.8)] = 0.25
    # Dirichlet draws are repeated until every agent holds at least this many samples.
    min_samples: Annotated[int, Interval(ge=2, le=MAX_SAMPLES)] = 8


@dataclass(frozen=True)
class SyntheticConfig:
    """The synthetic-pid generator's settings (`data.synthetic`; see edge.data.synthetic)."""

    modalities: tuple[str, ...] = ("a", "b")
    n_samples: Annotated[int, Interval(ge=100, le=MAX_SAMPLES)] = 3000
    dim: Annotated[int, Interval(ge=2, le=MAX_WIDTH)] = 16
    redundant_bits: Annotated[int, Interval(ge=0, le=8)] = 1
    unique_bits: Annotated[int, Interval(ge=0, le=8)] = 1
    synergy_bits: Annotated[int, Interval(ge=0, le=8)] = 1
    noise: Annotated[float, Interval(ge=0.0, le=MAX_WEIGHT)] = 0.5


@dataclass(frozen=True)
class DataConfig:
    """Which data the fleet learns from (`data`)."""

    dataset: Literal["basic-motions", "mfeat", "synthetic-pid", "npz"]
    modalities: tuple[str, ...] | None = None
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    # basic-motions: recordings are cut into windows after partitioning, so windows of one
    # recording never straddle an agent's train/test split.
    window: Annotated[int, Interval(ge=4, le=MAX_STEPS)] = 50
    stride: Annotated[int, Interval(ge=1, le=MAX_STEPS)] = 10
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    # npz: one file for the fleet, split by the partitioner (per-agent files go in agents.list).
    path: str | None = None
    # npz: the most bytes one file's arrays may occupy once read, checked from the arrays'
    # headers before anything is allocated (devices.npzio); default 1 GiB.
    max_npz_bytes: Annotated[int, Interval(ge=1 << 10, le=1 << 40)] = DEFAULT_MAX_BYTES


@dataclass(frozen=True)
class FamilyConfig:
    """An encoder family, declared fleet-wide per modality so holders can average it (`families.<m>`)."""

    kind: Literal["mlp", "conv1d"] = "mlp"
    hidden: Annotated[tuple[Annotated[int, Interval(ge=1, le=MAX_WIDTH)], ...],
                      Len(1, MAX_LAYERS)] = (64,)
    latent: Annotated[int, Interval(ge=3, le=MAX_WIDTH)] = 48
    kernel: Annotated[int, Interval(ge=1, le=1024)] = 5


@dataclass(frozen=True)
class AgentSpec:
    """One agent: its id (an MQTT topic level), modalities, device profile and optional own data file."""

    id: str
    modalities: tuple[str, ...]
    device: str = DEFAULT_PROFILE
    data: str | None = None


@dataclass(frozen=True)
class ListedAgent:
    """An agent of `agents.list` as written.

    What it leaves out comes from the fleet defaults (`agents.device`) when the list is resolved
    into `AgentSpec`s (edge.config.agents).
    """

    id: str
    modalities: tuple[str, ...]
    device: str | None = None
    data: str | None = None


@dataclass(frozen=True)
class AgentsConfig:
    """How agents are generated (`agents`): counts by kind or one multimodal-fraction knob, plus a list."""

    count: Annotated[int, Interval(ge=0, le=MAX_AGENTS)] = 0
    multimodal_fraction: Annotated[float, Interval(ge=0.0, le=1.0)] = 0.0
    counts: dict[str, Annotated[int, Interval(ge=0, le=MAX_AGENTS)]] = field(default_factory=dict)
    device: str = DEFAULT_PROFILE
    id_prefix: str = "a"
    list: tuple[ListedAgent, ...] = ()


@dataclass(frozen=True)
class TopologyConfig:
    """The communication graph (`topology`)."""

    kind: Literal["ring", "chordal-ring", "random-regular", "complete", "erdos-renyi",
                  "edges"] = "ring"
    chords: tuple[Annotated[int, Interval(ge=1, le=MAX_AGENTS)], ...] = (1, 3)
    degree: Annotated[int, Interval(ge=1, le=MAX_AGENTS)] = 4
    p: Annotated[float, Interval(ge=0.0, le=1.0)] = 0.3
    edges: tuple[tuple[str, ...], ...] = ()
    resample_each_round: bool = False


# `training.quorum` as code sees it: "all", a count of agents, or a fraction of the fleet.
Quorum = Literal["all"] | int | float


@dataclass(frozen=True)
class TrainingConfig:
    """Local training and the round budget (`training`)."""

    rounds: Annotated[int, Interval(ge=1, le=MAX_ROUNDS)] = 20
    local_epochs: Annotated[int, Interval(ge=1, le=MAX_EPOCHS)] = 1
    batch_size: Annotated[int, Interval(ge=1, le=MAX_SAMPLES)] = 32
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: Annotated[float, Interval(gt=0.0, lt=10.0)] = 0.003
    weight_decay: Annotated[float, Interval(ge=0.0, le=10.0)] = 0.0
    momentum: Annotated[float, Interval(ge=0.0, lt=1.0)] = 0.9
    seed: Annotated[int, Interval(ge=0, le=MAX_SEED)] = 0
    # Round 0 starts when this many agents are online (edge.net.quorum): "all", a count, or a
    # fraction of the fleet in (0, 1] (an integer is a count: 1 is one agent, 1.0 all of them).
    quorum: (Literal["all"] | Annotated[int, Interval(ge=1, le=MAX_AGENTS)]
             | Annotated[float, Interval(gt=0.0, le=1.0)]) = "all"
    # How long an agent waits for the quorum before it gives up with a non-zero exit status.
    start_timeout_s: Annotated[float, Interval(gt=0.0, le=MAX_DEADLINE_S)] = 600.0


# Where s_m is averaged (`model.synergy_scope`, resolved): see edge.learning.sharing.scope_of.
ScopeName = Literal["combination", "modality"]


@dataclass(frozen=True)
class ModelConfig:
    """The model every agent builds (`model`): architecture, slice split, fusion, combiner, heads."""

    arch: Literal["sliced", "plain"] = "sliced"
    # redundant:unique:synergy, or "auto": widths from the fleet's PID estimate, resolved once
    # before round 0 (edge.learning.auto_model) and written into the effective config.
    split: tuple[Annotated[float, Interval(gt=0.0, le=MAX_WEIGHT)], ...] | Literal["auto"] = (
        1.0, 1.0, 1.0)
    # With whom s_m (and the fusion) is averaged, for strategies that share it by combination
    # (parse): "combination", "modality", "auto" (per modality from the PID estimate, resolved
    # like split) or a mapping modality -> "combination" | "modality" (what auto resolves to).
    synergy_scope: Literal["combination", "modality", "auto"] | dict[str, ScopeName] = "combination"
    fusion: Literal["concat", "sum", "gated", "tensor"] = "concat"
    tensor_rank: Annotated[int, Interval(ge=1, le=64)] = 4
    combiner: Literal["sum", "mean", "gate", "fusion"] = "sum"
    head_hidden: Annotated[int, Interval(ge=0, le=MAX_WIDTH)] = 0
    share_heads: bool = False


@dataclass(frozen=True)
class LossConfig:
    """Weights of the training objective's terms (`losses`; edge.learning.losses)."""

    aux_head: Annotated[float, Interval(ge=0.0, le=MAX_WEIGHT)] = 0.25
    align: Annotated[float, Interval(ge=0.0, le=MAX_WEIGHT)] = 0.1
    orth: Annotated[float, Interval(ge=0.0, le=MAX_WEIGHT)] = 0.01
    # InfoNCE divides by it: below 1e-3 the logits overflow float32.
    temperature: Annotated[float, Interval(ge=1e-3, le=MAX_WEIGHT)] = 0.2


# Measured on mfeat (parse, 30 rounds, top-k 2%): gamma 1 lost 10 to 36 points against fp32
# depending on keyframes, 0.3 lost about 2; 0.2 was no better.
TOPK_CONSENSUS_STEP = 0.3


@dataclass(frozen=True)
class CommConfig:
    """How updates are coded and exchanged (`comm`): codec, keyframes, chunks, deadline, gamma."""

    # stc: sparse ternary compression (broker.codecs.encode_stc); keeps topk_fraction too.
    codec: Literal["fp32", "fp16", "int8", "topk", "stc"] = "fp32"
    topk_fraction: Annotated[float, Interval(gt=0.0, le=1.0)] = 0.02
    error_feedback: bool = True
    difference_coding: bool = False
    # Full updates: every N messages (0: only on first contact and when a receiver asks),
    # in this codec (None: fp32 for topk, else the codec itself).
    keyframe_every: Annotated[int, Interval(ge=0, le=MAX_ROUNDS)] = 10
    keyframe_codec: Literal["fp32", "fp16", "int8"] | None = None
    chunk_kib: Annotated[int, Interval(ge=1, le=256)] = 256
    deadline_s: Annotated[float, Interval(gt=0.0, le=MAX_DEADLINE_S)] = 30.0
    # The CHOCO consensus step gamma (edge.learning.gossip.consensus_step); 1 is plain gossip.
    # None: the codec's default, see `consensus_step` below.
    consensus_step: Annotated[float, Interval(gt=0.0, le=1.0)] | None = None
    # How neighbours' copies are combined (edge.learning.gossip.robust_step): plain gossip (the
    # default), coordinate-wise median or trimmed mean, or ClippedGossip (He et al. 2022).
    mixing: Literal["gossip", "median", "trimmed-mean", "clipped-gossip"] = "gossip"
    trim: Annotated[int, Interval(ge=1, le=MAX_AGENTS)] = 1          # trimmed-mean: per end
    # clipped-gossip: a fixed radius, or None to clip the `clip_neighbours` farthest neighbours
    # to the distance of the next one.
    clip_radius: Annotated[float, Interval(gt=0.0, le=1e30)] | None = None
    clip_neighbours: Annotated[int, Interval(ge=1, le=MAX_AGENTS)] = 1
    # The gate of every rule: a neighbour's copy whose norm, or distance to ours, exceeds this
    # many times our own norm is refused (edge.learning.gossip.screen).
    max_norm_ratio: Annotated[float, Interval(ge=1.0, le=1e6)] = 10.0


@dataclass(frozen=True)
class TlsConfig:
    """TLS files for an mqtts:// broker (`broker.tls`)."""

    ca_file: str
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True)
class BrokerConfig:
    """Where the broker is and how to authenticate and sign (`broker`).

    The YAML names secret *files*, never secrets (edge.config.secrets reads them): `credentials`
    is the folder `parse-edge broker credentials` writes (fleet.key, agents/<id>.secret,
    operator.secret), `certs` the one `parse-edge broker certs` writes (ca.pem,
    clients/<id>.pem|.key); `key_file` / `password_file` name single files instead (a board's
    bundle). Relative paths resolve against the config file.
    """

    url: str = "embedded"
    tls: TlsConfig | None = None
    username: str | None = None
    credentials: str | None = None
    certs: str | None = None
    key_file: str | None = None
    password_file: str | None = None
    # A received update may be at most this many rounds ahead of the furthest round the receiver
    # knows of (its own, or a neighbour's signed status): a forged round 4,000,000,000 cannot
    # make every later genuine update "stale".
    round_window: Annotated[int, Interval(ge=0, le=MAX_ROUNDS)] = 4


@dataclass(frozen=True)
class FaultConfig:
    """One injected fault of a trial (the simulator ignores faults)."""

    kind: Literal["leave", "broker-restart", "delay", "loss", "byzantine"]
    round: Annotated[int, Interval(ge=0, le=MAX_ROUNDS)] = 1   # leave / broker-restart: when
    agent: str | None = None             # leave: who
    # leave: when it comes back (None: never)
    return_round: Annotated[int, Interval(ge=0, le=MAX_ROUNDS)] | None = None
    agents: tuple[str, ...] = ()         # delay / loss / byzantine: whose outgoing updates
    delay_ms: Annotated[float, Interval(ge=0.0, le=MAX_DELAY_MS)] = 0.0
    loss_percent: Annotated[float, Interval(ge=0.0, le=100.0)] = 0.0
    # byzantine (from `round` on; applied by the agents, in trials and in the simulator):
    # send scale * x ("scale", default scale 5), -scale * x ("sign-flip", default 1), or
    # x + noise_std * rms(x) * N(0, 1) per coordinate ("noise") instead of the branch x.
    mode: Literal["scale", "sign-flip", "noise"] = "scale"
    scale: Annotated[float, Interval(ge=-1e30, le=1e30)] | None = None
    noise_std: Annotated[float, Interval(ge=0.0, le=1e6)] = 1.0


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
        """Return the spec of one agent.

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
        """Resolve a path from the config relative to the config file's folder."""
        p = Path(path)
        return p if p.is_absolute() else Path(self.source).parent / p


def quorum_count(training: TrainingConfig, n_agents: int) -> int:
    """How many agents must be online before round 0 starts.

    `training.quorum` is "all" (every agent), an integer count, or a fraction of the fleet
    (rounded up); the result is clipped to [1, n_agents]. Validated at load (edge.config.load).
    """
    quorum = training.quorum
    if isinstance(quorum, str):
        wanted = n_agents
    elif isinstance(quorum, float):
        wanted = math.ceil(quorum * n_agents - 1e-9)
    else:
        wanted = quorum
    return max(1, min(n_agents, wanted))


def consensus_step(comm: CommConfig) -> float:
    """Return the CHOCO consensus step gamma in effect.

    The configured one, else 1 (plain gossip) for the dense codecs and TOPK_CONSENSUS_STEP for
    the sparse ones (top-k, stc), whose lagging public copies need damping.
    """
    if comm.consensus_step is not None:
        return comm.consensus_step
    return TOPK_CONSENSUS_STEP if comm.codec in ("topk", "stc") else 1.0


def fleet_modalities(data: DataConfig, source: str) -> tuple[str, ...]:
    """Return the modalities this fleet's data offers (all the data set's, or the selected ones).

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
