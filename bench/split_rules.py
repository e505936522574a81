"""Rules for `model.split: auto` compared on held-out seeds (not a test).

    python bench/split_rules.py [--first-seed 100] [--seeds 5]
                                [--settings mfeat-chordal,synthetic-synergy] [--workers 1]

For every (setting, seed): the fleet's decentralized PID estimate, made exactly as `split: auto`
makes it (edge.learning.auto_model.resolve_model), the widths each rule of RULES gives from it,
and parse trained with every fixed ratio of accuracy.RATIOS and with each rule's widths (as a
fixed split; runs with equal widths are trained once, bench/accuracy.run_all). Per setting it
reports rule − best fixed ratio (the ratio with the best mean over the same seeds) and
rule − 1:1:1, paired over seeds (mean ± SE), and writes bench/results/split_rules.json.

Seeds 100 on are held out from bench/accuracy.py's seeds 0-4, on which the current rule was seen.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import accuracy as acc  # noqa: E402

from edge.learning.pid import Pid, _largest_remainder, auto_split  # noqa: E402


def _shares(estimates: list[Pid]) -> np.ndarray:
    """Mean R : mean U_m : mean S over the held pairs, as auto_split reads them."""
    return np.array([[e.redundancy, (e.unique_a + e.unique_b) / 2, e.synergy]
                     for e in estimates]).mean(axis=0)


def halfway(estimates: list[Pid], latent: int) -> tuple[int, int, int]:
    """Proportional shares moved halfway toward the equal split (floor of one unit kept).

    (p + 1/3) / 2: a shrinkage of the estimated proportions toward the default 1:1:1, for a
    plug-in estimate whose synergy is noisy; up to rounding the same widths as a floor of half
    the equal share (latent / 6 units each) with the rest proportional.
    """
    shares = _shares(estimates)
    p = shares / shares.sum() if shares.sum() > 0 else np.full(3, 1 / 3)
    return _largest_remainder(latent, tuple(float(v) for v in (p + 1 / 3) / 2), floor=1)


def sqrt_shares(estimates: list[Pid], latent: int) -> tuple[int, int, int]:
    """Widths proportional to the square roots of R, U, S (a tempered proportional rule)."""
    p = np.sqrt(_shares(estimates))
    return _largest_remainder(latent, tuple(float(v) for v in (p if p.sum() > 0 else np.ones(3))),
                              floor=1)


RULES: dict[str, Callable[[list[Pid], int], tuple[int, int, int]]] = {
    "proportional (current)": lambda e, latent: auto_split(e, latent),
    "halfway to 1:1:1": halfway,
    "sqrt-proportional": sqrt_shares,
}


def rule_widths(setting: str, seed: int) -> dict[str, Any]:
    """The fleet estimate of one (setting, seed) and every rule's widths from it."""
    import torch

    from edge.config.load import parse_config
    from edge.config.overrides import with_overrides
    from edge.learning.auto_model import resolve_model
    from edge.learning.pid_fleet import pairs_held

    torch.set_num_threads(1)
    cfg = parse_config(acc.SETTINGS[setting](), f"<bench {setting}>")
    cfg = with_overrides(cfg, seed=seed)
    resolved = resolve_model(replace(cfg, model=replace(cfg.model, split="auto")))
    assert resolved.estimate is not None, f"{setting}: no modality pair held"
    held = set(pairs_held(cfg))
    used = [p.estimate.point for p in resolved.estimate.pairs if (p.a, p.b) in held]
    latent = resolved.estimate.latent
    widths = {name: rule(used, latent) for name, rule in RULES.items()}
    # The current rule here is the one `split: auto` ran with.
    assert widths["proportional (current)"] == resolved.estimate.split
    return {"atoms": [e.as_dict() for e in used], "latent": latent, "widths": widths}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first-seed", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--settings", default="mfeat-chordal,synthetic-synergy")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", default=str(BENCH / "results" / "split_rules.json"))
    args = parser.parse_args()
    started = time.perf_counter()
    settings = args.settings.split(",")
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    estimates = {(s, seed): rule_widths(s, seed) for s in settings for seed in seeds}
    print(f"estimates: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    jobs = []
    for s in settings:
        for seed in seeds:
            jobs += [j for j in acc.plan(s, seed, ("parse",))
                     if j.label == acc.PARSE or (j.label.startswith("parse[split ")
                                                 and "auto" not in j.label)]
            jobs += [acc.Job(s, seed, f"parse[rule {name}]/sliced", "parse", "sliced",
                             (("split", tuple(float(w) for w in widths)),))
                     for name, widths in estimates[(s, seed)]["widths"].items()]
    results, log = acc.run_all(jobs, args.workers)
    report: dict[str, Any] = {}
    lines = []
    for s in settings:
        rows = sorted((r for r in results if r["setting"] == s), key=lambda r: r["seed"])
        labels = list(rows[0]["runs"])
        mean = {k: float(np.mean([r["runs"][k]["overall"] for r in rows])) for k in labels}
        fixed = [acc._split_label(n) for n in acc.RATIOS]
        best = max(fixed, key=lambda k: mean[k])

        def paired(a: str, b: str, rows: list[dict[str, Any]] = rows) -> tuple[float, float]:
            return acc._mean_se([r["runs"][a]["overall"] - r["runs"][b]["overall"] for r in rows])

        report[s] = {"seeds": [r["seed"] for r in rows], "best fixed": best, "mean": mean,
                     "rules": {}}
        lines += [f"### {s} (seeds {rows[0]['seed']}-{rows[-1]['seed']}; best fixed ratio "
                  f"{best}, {100 * mean[best]:.1f})", "",
                  "| rule | widths per seed | mean | − best fixed | − 1:1:1 |", "|---|---|---|---|---|"]
        for name in RULES:
            label = f"parse[rule {name}]/sliced"
            d_best, se_best = paired(label, best)
            d_eq, se_eq = paired(label, acc.PARSE)
            widths = [estimates[(s, r["seed"])]["widths"][name] for r in rows]
            report[s]["rules"][name] = {"widths": widths, "mean": mean[label],
                                        "minus_best_fixed": [d_best, se_best],
                                        "minus_1_1_1": [d_eq, se_eq]}
            lines.append(f"| {name} | {' '.join(':'.join(map(str, w)) for w in widths)} | "
                         f"{100 * mean[label]:.2f} | {100 * d_best:+.2f} ± {100 * se_best:.2f} | "
                         f"{100 * d_eq:+.2f} ± {100 * se_eq:.2f} |")
        lines += ["", "fixed ratios: " + ", ".join(f"{k} {100 * mean[k]:.2f}" for k in fixed), ""]
    print("\n".join(lines))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"wall_s": time.perf_counter() - started,
                               "estimates": {f"{s} {seed}": v for (s, seed), v in estimates.items()},
                               "report": report, "budget": acc.budget(log), "jobs": log,
                               "runs": results}, indent=2))
    print(f"wrote {out} ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
