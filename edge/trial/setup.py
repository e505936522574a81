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
from edge.config.schema import FleetConfig
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
    python: str = sys.executable


def effective_config(cfg: FleetConfig, rounds: int | None, strategy: str | None) -> FleetConfig:
    """The config with --rounds / --strategy applied; refuses strategies that need pooled data."""
    cfg = with_overrides(cfg, rounds=rounds, strategy=strategy)
    networked_strategy(cfg.strategy)
    return cfg


def default_timeouts(cfg: FleetConfig, n_agents: int, cores: int | None = None) -> tuple[float, float]:
    """(overall, stall) timeouts: startup (torch imports share the cores) plus, per round, twice the
    round deadline and a training allowance; a stall is no new row for three deadlines.
    """
    cores = cores or os.cpu_count() or 1
    startup_s = 60.0 + 10.0 * math.ceil(n_agents / cores)
    deadline_s = cfg.comm.deadline_s
    overall = startup_s + cfg.training.rounds * (2 * deadline_s + 30.0)
    stall = max(startup_s, 3 * deadline_s + 60.0)
    return overall, stall


def agent_command(python: str, config_path: str, agent_id: str, url: str, out: Path,
                  strategy: str | None, rounds: int | None, energy: str = "estimated") -> list[str]:
    """The command line of one agent process."""
    cmd = [python, "-m", "edge", "agent", config_path, "--agent", agent_id, "--broker", url,
           "--out", str(out), "--energy", energy]
    if strategy is not None:
        cmd += ["--strategy", strategy]
    if rounds is not None:
        cmd += ["--rounds", str(rounds)]
    return cmd


def prepare_out(out: Path) -> None:
    """Clear the record of an earlier trial in `out` (agents would resume from old checkpoints).
    Refuses when `out/agents` holds something that is not an agent folder of a trial.
    """
    agents = out / "agents"
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
