"""Rules for `model.split: auto` compared on held-out seeds (not a test).

    python bench/split_rules.py [--first-seed 100] [--seeds 5]
                                [--settings mfeat-chordal,synthetic-synergy] [--workers 1]
    python bench/split_rules.py --report bench/results/split_rules.json

For every (setting, seed): the fleet's decentralized PID estimate, made exactly as `split: auto`
makes it (edge.learning.auto_model.resolve_model), the widths each rule of RULES gives from it,
and parse trained with every fixed ratio of accuracy.RATIOS and with each rule's widths (as a
fixed split; runs with equal widths are trained once, bench/accuracy.run_all). Per setting it
reports rule − best fixed ratio (the ratio with the best mean over the same seeds, and
cross-fitted: the ratio best on the other half of the seeds, with a one-sided 95 % lower bound)
and rule − 1:1:1, paired over seeds (mean ± SE), on overall accuracy and on the multimodal
agents alone, and writes bench/results/split_rules.json. `--report JSON` re-prints an earlier
run's tables without training.

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
    shares: np.ndarray = np.array([[e.redundancy, (e.unique_a + e.unique_b) / 2, e.synergy]
                                   for e in estimates]).mean(axis=0)
    return shares


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


def _accuracy(run: dict[str, Any], scope: str) -> float:
    """Overall accuracy, or (scope "multimodal") the mean over the agent kinds holding two or more
    modalities: on synthetic-synergy a one-modality agent is at its Bayes ceiling (1 of 3 label
    bits, 25 %) whatever the split, so its accuracy varies only by which of 4 equally likely
    classes it guesses, noise that no split can move."""
    if scope == "overall":
        return float(run["overall"])
    kinds = [v for k, v in run["by_kind"].items() if "+" in k]
    return float(np.mean(kinds))


def _lower95(mean: float, se: float, n: int) -> float:
    """One-sided 95 % lower confidence bound of a paired mean difference (Student t, n-1 dof)."""
    from scipy.stats import t

    return mean - float(t.ppf(0.95, n - 1)) * se


def _best_on(fixed: list[str], acc_of: dict[str, list[float]], seeds: list[int]) -> str:
    """The fixed ratio with the best mean accuracy over the seeds at positions `seeds`."""
    return max(fixed, key=lambda k: np.mean([acc_of[k][i] for i in seeds]))


def analyse(results: list[dict[str, Any]], estimates: dict[str, Any], settings: list[str],
            scope: str = "overall") -> tuple[dict[str, Any], list[str]]:
    """Per setting and rule: mean, rule - best fixed ratio (in-sample and cross-fitted), its
    one-sided 95 % lower bound, and rule - 1:1:1; differences in accuracy units (0-1).

    "Best fixed" in-sample is the ratio with the best mean over the same seeds: the largest of six
    noisy means, biased upwards. Cross-fitted (two folds, seeds alternately): each fold's rule is
    compared with the ratio that was best on the other fold, so the choice of the ratio and its
    measurement use different seeds (an unbiased estimate of what picking the best fixed ratio
    from a sweep achieves).
    """
    report: dict[str, Any] = {}
    lines: list[str] = []
    fixed = [acc._split_label(n) for n in acc.RATIOS]
    for s in settings:
        rows = sorted((r for r in results if r["setting"] == s), key=lambda r: r["seed"])
        labels = list(rows[0]["runs"])
        acc_of = {k: [_accuracy(r["runs"][k], scope) for r in rows] for k in labels}
        mean = {k: float(np.mean(v)) for k, v in acc_of.items()}
        best = max(fixed, key=lambda k: mean[k])
        folds = [list(range(0, len(rows), 2)), list(range(1, len(rows), 2))]
        best_of_other = [_best_on(fixed, acc_of, folds[1 - f]) for f in range(2)]
        report[s] = {"scope": scope, "seeds": [r["seed"] for r in rows], "best fixed": best,
                     "best fixed per fold (chosen on the other)": best_of_other, "mean": mean,
                     "rules": {}}
        lines += [f"### {s}, {scope} accuracy (seeds {rows[0]['seed']}-{rows[-1]['seed']}; best "
                  f"fixed {best}, {100 * mean[best]:.2f}; cross-fitted picks "
                  f"{' / '.join(best_of_other)})", "",
                  "| rule | mean | − best fixed | − best fixed, cross-fitted (95 % lower bound) "
                  "| − 1:1:1 |", "|---|---|---|---|---|"]
        for name in RULES:
            label = f"parse[rule {name}]/sliced"
            d_best, se_best = acc._mean_se([a - b for a, b in zip(acc_of[label], acc_of[best],
                                                                   strict=True)])
            cross = [acc_of[label][i] - acc_of[best_of_other[f]][i]
                     for f in range(2) for i in folds[f]]
            d_cross, se_cross = acc._mean_se(cross)
            low = _lower95(d_cross, se_cross, len(cross))
            d_eq, se_eq = acc._mean_se([a - b for a, b in zip(acc_of[label], acc_of[acc.PARSE],
                                                               strict=True)])
            report[s]["rules"][name] = {
                "widths": [estimates[f"{s} {r['seed']}"]["widths"][name] for r in rows],
                "mean": mean[label], "minus_best_fixed": [d_best, se_best],
                "minus_best_fixed_crossfit": [d_cross, se_cross], "crossfit_lower95": low,
                "minus_1_1_1": [d_eq, se_eq]}
            lines.append(f"| {name} | {100 * mean[label]:.2f} | {100 * d_best:+.2f} ± "
                         f"{100 * se_best:.2f} | {100 * d_cross:+.2f} ± {100 * se_cross:.2f} "
                         f"({100 * low:+.2f}) | {100 * d_eq:+.2f} ± {100 * se_eq:.2f} |")
        lines += ["", "fixed ratios: " + ", ".join(f"{k} {100 * mean[k]:.2f}" for k in fixed), ""]
    return report, lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first-seed", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--settings", default="mfeat-chordal,synthetic-synergy")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", default=str(BENCH / "results" / "split_rules.json"))
    parser.add_argument("--report", metavar="JSON",
                        help="only print the tables of an earlier run's JSON (no training)")
    args = parser.parse_args()
    if args.report:
        doc = json.loads(Path(args.report).read_text())
        settings = list(doc["report"])
        for scope in ("overall", "multimodal"):
            print("\n".join(analyse(doc["runs"], doc["estimates"], settings, scope)[1]))
        return 0
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
    flat = {f"{s} {seed}": v for (s, seed), v in estimates.items()}
    report, lines = analyse(results, flat, settings)
    report_mm, lines_mm = analyse(results, flat, settings, "multimodal")
    print("\n".join(lines + lines_mm))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"wall_s": time.perf_counter() - started, "estimates": flat,
                               "report": report, "report_multimodal": report_mm,
                               "budget": acc.budget(log), "jobs": log, "runs": results}, indent=2))
    print(f"wrote {out} ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
