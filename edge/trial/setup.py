"""Setting up a trial: options, the effective config, time limits, agent command lines, the out folder."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from edge.config.overrides import with_overrides
from edge.config.schema import FleetConfig, Quorum, quorum_count
from edge.errors import UserError
from edge.learning.strategies import networked_strategy

AGENT_FILES = {"agent.log", "agent.pid", "metrics.jsonl", "checkpoint.pt", "final.json"}
OUTPUT_FILES = ("metrics.jsonl", "summary.json", "report.md", "config.yaml")


@dataclass
class TrialOptions:
    """How to run a trial (the CLI's flags)."""

    out: Path
    config_path: str | None = None     # None: the built-in example
    broker: str | None = None          # "embedded" or mqtt://host:port; None: the config's
    strategy: str | None = None        # None: the config's
    rounds: int | None = None          # overrides training.rounds (passed on to the agents)
    timeout_s: float | None = None     # None: derived from rounds x deadline
    stall_timeout_s: float | None = None
    max_restarts: int = 2              # per agent, after a kill the runner did not cause
    plots: bool = True
    # Agents sharing one host cannot tell their own energy apart on a package-wide meter (RAPL):
    # the profile estimate is the honest default for a local fleet.
    energy: str = "estimated"
    poll_s: float = 0.2
    python: str = sys.executable       # the interpreter of --isolated agents
    isolated: bool = False             # a fresh interpreter per agent instead of the fork server
    force: bool = False                # replace the record of an earlier trial in `out`
    quorum: Quorum | None = None       # overrides training.quorum
    start_timeout_s: float | None = None         # overrides training.start_timeout_s


def effective_config(cfg: FleetConfig, opts: TrialOptions) -> FleetConfig:
    """Apply the options' overrides to the config; refuse strategies that need pooled data."""
    cfg = with_overrides(cfg, rounds=opts.rounds, strategy=opts.strategy, quorum=opts.quorum,
                         start_timeout_s=opts.start_timeout_s)
    networked_strategy(cfg.strategy)
    return cfg


def trial_quorum(cfg: FleetConfig, launched: int) -> int:
    """Return the quorum every agent of the trial is given.

    The configured one, but never more than the agents started together (an agent held back by a
    round-0 leave fault joins later).
    """
    return max(1, min(quorum_count(cfg.training, len(cfg.agent_specs)), launched))


def default_timeouts(cfg: FleetConfig, n_agents: int, cores: int | None = None) -> tuple[float, float]:
    """Return the (overall, stall) timeouts.

    Overall: startup (with --isolated every agent imports torch; the cores are shared) plus, per
    round, twice the round deadline and a training allowance; a stall is no new row for three
    deadlines.
    """
    cores = cores or os.cpu_count() or 1
    startup_s = 60.0 + 10.0 * math.ceil(n_agents / cores)
    deadline_s = cfg.comm.deadline_s
    overall = startup_s + cfg.training.rounds * (2 * deadline_s + 30.0)
    stall = max(startup_s, 3 * deadline_s + 60.0)
    return overall, stall


def agent_argv(config_path: str, agent_id: str, url: str, out: Path, opts: TrialOptions,
               quorum: int, start_timeout_s: float, run_id: bytes | None = None,
               mqtt: str = "auto") -> list[str]:
    """Return the `parse-edge` arguments of one agent process.

    Paths are absolute; the launcher decides the interpreter (edge.trial.launch). `run_id` is the
    run the runner fixed (every signed message of the trial carries it); `mqtt` the MQTT version
    (`3.1.1` for the embedded amqtt broker: no MQTT 5 attempt first).
    """
    argv = ["agent", str(Path(config_path).resolve()), "--agent", agent_id, "--broker", url,
            "--out", str(out.resolve()), "--energy", opts.energy, "--quorum", str(quorum),
            "--start-timeout", f"{start_timeout_s:g}"]
    if run_id is not None:
        argv += ["--run-id", run_id.hex()]
    if mqtt != "auto":
        argv += ["--mqtt", mqtt]
    if opts.strategy is not None:
        argv += ["--strategy", opts.strategy]
    if opts.rounds is not None:
        argv += ["--rounds", str(opts.rounds)]
    return argv


def prepare_out(out: Path, force: bool = False) -> None:
    """Make `out` ready for a trial.

    A folder holding an earlier trial's record is refused unless `force`, which clears it (agents
    would resume from old checkpoints); with or without it, `out/agents` holding something that
    is not an agent folder of a trial is refused.

    Raises
    ------
    UserError
        For an earlier record without `force`, or a foreign folder in `out/agents`.
    """
    agents = out / "agents"
    earlier = [name for name in OUTPUT_FILES if (out / name).exists()]
    if agents.is_dir():
        earlier += [f"agents/{f.name}" for f in sorted(agents.iterdir())
                    if f.is_dir() and any((f / name).exists() for name in AGENT_FILES)][:3]
    if earlier and not force:
        raise UserError(f"{out}: {', '.join(earlier[:4])}: the record of an earlier trial is there; "
                        "expected a new --out folder, or --force to replace that record")
    if agents.is_dir():
        for folder in agents.iterdir():
            ours = folder.is_dir() and any((folder / name).exists() for name in AGENT_FILES)
            if not ours and not (folder.is_dir() and not any(folder.iterdir())):
                raise UserError(f"--out {out}: {folder} is not an agent folder of an earlier trial; "
                                "expected a trial output folder (or a new one)")
        shutil.rmtree(agents)
    for name in OUTPUT_FILES:
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "plots", ignore_errors=True)
    agents.mkdir(parents=True, exist_ok=True)


def write_json(path: Path, doc: object) -> None:
    """Write JSON atomically (tmp file, then rename)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=float))
    tmp.replace(path)
