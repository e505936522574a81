"""The result documents, typed: metrics rows, an agent's final.json, summary.json blocks.

One metrics row per agent and round, an agent's final.json, and the blocks of summary.json:
every field with its unit, in one place.

Conventions: `round` is the 0-based round index, and people see the same number ("round 3 of
0-11": files, logs, console, report and plots); byte counts are bytes (reports show MB = 10^6 B
for traffic); memory is MiB (2^20 B; `rss_mb` and `peak_rss_mb` are MiB despite their names,
kept for compatibility); times are seconds; energy is joules. Head names are "R", "U/<m>",
"S/<combination>" and "late" everywhere. Counters named `bytes_*`, `cpu_s`, `elapsed_s` and
`*_j` in metrics rows are running totals of the agent over all its processes: a restarted agent
carries them on from its checkpoint (`restarts` counts the restarts), so they never go back
(`edge.summary.cumulative_total` still adds up records of older versions that restarted at zero).
Every row carries `time_utc` (ISO 8601, UTC) to line up with other logs (a power meter's, a
dashboard's).
"""

from __future__ import annotations

from typing import Any

# pydantic validates these (rows read back from files and MQTT); before Python 3.12 it needs
# typing_extensions.TypedDict.
from typing_extensions import TypedDict


class _MetricsRowRequired(TypedDict):
    agent: str
    kind: str                          # modality combination, e.g. "accel+gyro"
    round: int                         # 0-based round index
    rounds: int                        # rounds planned
    accuracy: float                    # test accuracy of the model after local training
    head_accuracy: dict[str, float]    # per head: "R", "U/<m>", "S/<combination>", or "late"
    n_test: int                        # test samples
    train_loss: float                  # mean training loss over the round's steps
    train_s: float                     # local training time
    wait_s: float                      # time spent waiting for neighbours' updates
    round_s: float                     # the whole round, collect to checkpoint
    mixed_from: dict[str, list[str]]   # branch key -> neighbours whose updates were mixed
    bytes_sent: int                    # running total: payload + header of everything published
    bytes_received: int                # running total: payload + header of everything received
    dense_bytes_published: int         # fp32 size of the branches published this round


class MetricsRow(_MetricsRowRequired, total=False):
    """One agent's measurements after one round (metrics.jsonl, and the MQTT metrics topic)."""

    time_utc: str                      # when the row was written, ISO 8601 UTC
    elapsed_s: float                   # running total of the agent's wall seconds (monotonic)
    restarts: int                      # how many times the agent resumed from a checkpoint
    cpu_s: float                       # running total of the agent's CPU seconds
    rss_mb: float                      # peak resident set of this process so far, MiB
    uss_mib: float                     # peak unique set so far (pages only this process holds)
    pss_mib: float                     # peak proportional set so far (shared pages shared out)
    energy_j: float                    # running total of board energy (measured or estimated)
    energy_source: str                 # measured:<backend>:<sensor> | estimated:<profile>
    # The estimate's terms (devices.estimate): idle baseline, compute and radio; attributable =
    # compute + radio, what the learning cost (independent of run length and host load).
    idle_j: float
    compute_j: float
    radio_j: float
    attributable_j: float
    # Board telemetry (devices.telemetry): temperatures, throttling, CPU clock, interface bytes,
    # Wi-Fi; a source the board lacks is an absent key.
    telemetry: dict[str, float | int | bool | str]
    # Only in rows of rounds where a neighbour's copy was refused or skipped (edge.learning.guard):
    refused: dict[str, dict[str, str]]  # branch key -> neighbour -> why the gate refused its copy
    skipped: dict[str, str]             # neighbour -> why it was not mixed this round
    rejected: dict[str, int]           # running total of updates rejected, by reason


class BranchBytes(TypedDict):
    """Traffic of one branch, summed over an agent's process (payload + header)."""

    sent_bytes: int
    received_bytes: int
    sent_messages: int
    received_messages: int


class AgentBytes(TypedDict):
    """An agent's MQTT traffic as its client counted it."""

    sent: dict[str, int]               # messages, payload_bytes, header_bytes
    received: dict[str, int]           # the same, received
    per_branch: dict[str, BranchBytes]
    sent_total: int
    received_total: int


class _FinalDocRequired(TypedDict):

    agent: str
    kind: str
    rounds_completed: int
    resumed_from_round: int
    wall_s: float                      # this process's wall seconds
    cpu_s: float                       # the agent's CPU seconds over all its processes
    peak_rss_mb: float                 # MiB
    energy_j: float                    # the agent's energy over all its processes
    energy_source: str
    bytes: AgentBytes
    rejected: dict[str, int]           # updates rejected by reason (never reached the model)
    updates_dropped_by_fault: int      # updates an injected `loss` fault dropped
    faults: dict[str, float]           # delay_ms, loss_percent applied to this agent


class FinalDoc(_FinalDocRequired, total=False):
    """An agent's final.json, written when its process ran its last round.

    `rounds_completed` is the index of the last round it got through plus one (trained or
    missed); `first_round` .. the last round were trained by this process.
    """

    started_utc: str                   # when the process started (ISO 8601, UTC)
    ended_utc: str                     # when it wrote final.json (ISO 8601, UTC)
    elapsed_s: float                   # the agent's wall seconds over all its processes
    restarts: int                      # how many times the agent resumed from a checkpoint
    energy: dict[str, Any]             # devices.estimate.EnergyBreakdown.to_dict(), all processes
    telemetry: dict[str, float | int | bool | str]   # the last sample
    first_round: int                   # the first round this process ran
    missed_rounds: list[int]           # rounds skipped to join a fleet under way
    quorum_wait_s: float               # time at the start barrier
    peak_uss_mib: float                # MiB: pages only this process held
    peak_pss_mib: float                # MiB: shared pages divided among their users
    connections: int                   # successful MQTT connections of this process
    link_returns: int                  # carrier returns that made it reconnect (broker.carrier)


class AccuracyBlock(TypedDict):
    """Test accuracy of each agent's final model: mean over agents, by kind and per agent."""

    overall: float
    by_kind: dict[str, float]
    per_agent: dict[str, float]


class BytesBlock(TypedDict):
    """A traffic total over the run, per round and per agent (bytes)."""

    total: int
    per_round: float
    # Round 0 carries what is sent once (a trial's start-up publish check of 256 KiB per agent,
    # the first keyframes), so total / rounds overstates the steady rate on short runs.
    per_round_after_0: float | None    # (total - round 0's bytes) / (rounds - 1); None: 1 round
    per_agent: dict[str, int]


class HistoryRow(TypedDict):
    """Accuracy of one round over the agents that reported it."""

    round: int
    overall: float
    by_kind: dict[str, float]
    dense_bytes: int


class _StrategyBlockRequired(TypedDict):
    strategy: str
    arch: str
    accuracy: AccuracyBlock
    per_head: dict[str, float]         # head label (R, U/<m>, S/<combination>, late) -> accuracy
    bytes_sent: BytesBlock             # encoded updates (simulate) / MQTT traffic (trial)
    bytes_received: BytesBlock
    bytes_dense: BytesBlock            # fp32 size of the published branches
    rounds: int                        # rounds with at least one row
    rounds_completed: dict[str, int]   # per agent
    wall_s: float
    history: list[HistoryRow]


class StrategyBlock(_StrategyBlockRequired, total=False):
    """summary.json `strategies.<name>`: the same keys from simulate and from a trial."""

    codec: str
    gradient_conflict: dict[str, dict[str, float | None]]   # simulate only
    agents: dict[str, dict[str, Any]]                       # trial only: per-agent resources


class AgentInfo(TypedDict, total=False):
    """summary.json `agents.<id>`."""

    modalities: list[str]
    kind: str
    device: str
    n_train: int
    n_test: int


class _SummaryRequired(TypedDict):
    software_version: str
    config: str
    fleet: str
    dataset: str
    seed: int
    agents: dict[str, AgentInfo]
    strategies: dict[str, StrategyBlock]


class SummaryDoc(_SummaryRequired, total=False):
    """summary.json of `parse-edge simulate` and `parse-edge trial` (the latter adds `trial`)."""

    # The slice split and synergy scopes as they ran (auto resolved: edge.learning.auto_model).
    model: dict[str, Any]
    trial: dict[str, Any]
