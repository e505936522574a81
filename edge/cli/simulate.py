"""`parse-edge simulate`: the whole fleet in one process, no network; writes summary.json."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from edge.cli.run_folder import check_out_folder, new_run_folder, point_latest
from edge.config.load import load_config
from edge.errors import UserError
from edge.learning.strategies import get_strategy, strategy_names


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str) -> None:
    """Register `simulate`."""
    parser = sub.add_parser(
        name, help="run the fleet in one process with no network",
        description="Run every agent of the fleet in this process (branches handed over in "
                    "memory), for one strategy or all, and write DIR/summary.json.")
    parser.add_argument("config", metavar="CONFIG", help="fleet config (YAML)")
    parser.add_argument("--strategy", default=None,
                        help=f"one of {', '.join(strategy_names())}, or 'all' (default: the config's)")
    parser.add_argument("--arch", choices=["sliced", "plain"], default=None,
                        help="model architecture (default: the config's model.arch)")
    parser.add_argument("--rounds", type=int, default=None, help="override training.rounds")
    parser.add_argument("--seed", type=int, default=None,
                        help="override training.seed (also re-draws the partition)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="output folder (default: a new runs/simulate/<UTC time>, with "
                             "runs/simulate/latest pointing at it)")
    parser.add_argument("--force", action="store_true",
                        help="replace an earlier DIR/summary.json (refused otherwise)")
    parser.add_argument("--save-checkpoints", action="store_true",
                        help="write DIR/agents/<id>/checkpoint.pt for every agent")
    parser.add_argument("--quiet", action="store_true", help="no per-round progress lines")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Validate everything first, then simulate each strategy and write the summary."""
    from edge.config.overrides import with_overrides
    from edge.learning.simulate import simulate_fleet

    cfg = with_overrides(load_config(args.config), rounds=args.rounds, seed=args.seed)
    names = _strategies(args.strategy, cfg.strategy, args.arch or cfg.model.arch)
    out = Path(args.out) if args.out is not None else new_run_folder(DEFAULT_ROOT)
    # Checked before training: a simulation can take minutes, and its record is the only output.
    check_out_folder(out)
    if (out / "summary.json").exists() and not args.force:
        raise UserError(f"--out {out}: already holds summary.json of an earlier run; "
                        "pass --force to replace it or choose another folder")
    progress = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    started = time.perf_counter()
    summary = simulate_fleet(cfg, names, args.arch or cfg.model.arch, progress=progress,
                             checkpoint_dir=out if args.save_checkpoints else None)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    for name, block in summary["strategies"].items():
        kinds = "  ".join(f"{k} {v:.3f}" for k, v in block["accuracy"]["by_kind"].items())
        print(f"{name:<14} accuracy {block['accuracy']['overall']:.3f}  ({kinds})  "
              f"{block['bytes_sent']['per_round'] / 1e6:.3f} MB/round sent ({block.get('codec')})")
    print(f"wrote {out / 'summary.json'} in {time.perf_counter() - started:.1f} s")
    if args.out is None:
        point_latest(DEFAULT_ROOT, out)
    return 0


DEFAULT_ROOT = Path("runs/simulate")


def _strategies(requested: str | None, default: str, arch: str) -> list[str]:
    if requested is None:
        return [default]
    if requested == "all":
        return strategy_names(arch=arch)
    return [get_strategy(requested).name]
