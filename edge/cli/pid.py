"""`parse-edge pid`: PID estimates (redundancy, unique, synergy, in bits) per modality pair."""

from __future__ import annotations

import argparse
import json
import math
import sys

from edge.config.load import load_config
from edge.errors import UserError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str) -> None:
    """Register `pid`."""
    parser = sub.add_parser(
        name, help="estimate redundancy, unique information and synergy per modality pair",
        description="BROJA partial information decomposition of the label, in bits, for every "
                    "modality pair some agent holds, on k-means clusters of each modality, with "
                    "a bootstrap interval; and the slice widths `model.split: auto` gives. "
                    "Default: the fleet estimate (joint counts summed by gossip, no agent sees "
                    "pooled data). Needs the optional extra: pip install 'parse-edge[pid]'.")
    parser.add_argument("config", metavar="CONFIG", help="fleet config (YAML)")
    parser.add_argument("--agent", default=None, metavar="ID",
                        help="one multimodal agent's estimate on its own training split")
    parser.add_argument("--pooled", action="store_true",
                        help="simulation-only oracle: every agent's training data pooled")
    parser.add_argument("--k", default="10", help="k-means clusters per modality (default %(default)s)")
    parser.add_argument("--draws", default="20", help="bootstrap draws (default %(default)s; 0: none)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(run=run)


def _int(flag: str, text: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise UserError(f"{flag}: expected an integer from {low} to {high}, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    """Validate the flags and the config first, then estimate and print."""
    if args.agent is not None and args.pooled:
        raise UserError("--agent, --pooled: expected at most one of them")
    k = _int("--k", args.k, 2, 64)
    draws = _int("--draws", args.draws, 0, 1000)
    cfg = load_config(args.config)
    from edge.config.overrides import format_synergy_scope
    from edge.learning.pid import require_dit
    from edge.learning.pid_fleet import PidOptions, agent_pid, fleet_pid, pooled_pid

    require_dit()  # a missing extra is reported before any data is read
    options = PidOptions(k=k, draws=draws, seed=cfg.training.seed)
    if args.agent is not None:
        result = agent_pid(cfg, args.agent, options)
    elif args.pooled:
        result = pooled_pid(cfg, options)
    else:
        progress = None if args.json else (lambda line: print(line, file=sys.stderr, flush=True))
        result = fleet_pid(cfg, options, progress=progress)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
        return 0
    interval = (f"{100 * options.level:.0f}% bootstrap interval over {draws} draws" if draws
                else "no bootstrap interval (--draws 0)")
    print(f"PID of the label in bits: BROJA on k-means clusters (k={k}), {interval}")
    print(f"estimate: {result.mode}")
    print(f"{'pair':<14} {'R':>18} {'U_a':>18} {'U_b':>18} {'S':>18} {'I(Y;A,B)':>9} {'n':>6}")
    for p in result.pairs:
        e = p.estimate
        cells = [_cell(getattr(e.point, f), getattr(e.low, f), getattr(e.high, f))
                 for f in ("redundancy", "unique_a", "unique_b", "synergy")]
        print(f"{p.a + '/' + p.b:<14} {' '.join(f'{c:>18}' for c in cells)} "
              f"{e.point.total_bits:>9.3f} {e.n_samples:>6}")
        if p.planted is not None:
            t = p.planted
            print(f"{'  planted':<14} {t.redundancy:>18.3f} {t.unique_a:>18.3f} {t.unique_b:>18.3f} "
                  f"{t.synergy:>18.3f} {t.total_bits:>9.3f}")
    r, u, s = result.split
    print(f"split: auto -> r/u/s widths {r}/{u}/{s} of a latent of {result.latent} "
          f"(R : mean U_m : S over the pairs agents hold; one unit minimum per slice)")
    if len(result.pairs) > 1:
        for m in sorted({x for p in result.pairs for x in (p.a, p.b)}):
            with_m = [f"{p.a}/{p.b}" for p in result.pairs if m in (p.a, p.b)]
            print(f"  {m}: r and u sized from {', '.join(with_m)} (U_{m} against each partner), "
                  f"synergy_scope: auto would share s by {result.scopes[m].value}")
    else:
        scopes = ", ".join(f"{m} by {s.value}" for m, s in result.scopes.items())
        print(f"synergy_scope: auto -> s_m shared {scopes} (the config's model.synergy_scope "
              f"is {format_synergy_scope(cfg.model.synergy_scope)})")
    return 0


def _cell(point: float, low: float, high: float) -> str:
    if math.isclose(low, high) and math.isclose(low, point):
        return f"{point:.3f}"
    return f"{point:.3f} [{low:.2f},{high:.2f}]"
