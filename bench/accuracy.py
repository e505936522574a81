"""Accuracy benchmark: every strategy on both architectures, paired over seeds (not a test).

    python bench/accuracy.py [--seeds 5] [--first-seed 0] [--settings mfeat-chordal,...]
                             [--workers 2] [--quick]

Each (setting, seed) runs every strategy on the same partitions, so differences are paired.
One job is one run (setting, seed, strategy or variant, architecture): every run seeds torch
itself (edge.learning.simulate.simulate_strategy) and the partitions depend on the seed only, so
a run gives the same figures in whichever job or order it runs. Jobs are submitted longest first
(estimated from COST_S) so that no worker idles at the end behind one long (setting, seed).
Runs that are identical by construction (same model config, architecture and schedule, and every
agent averaging the same units with the same agents: parse and dsgd-hybrid on the sliced
architecture with one modality pair, parse with shared heads and monolithic, parse with s_m by
modality and dsgd-hybrid) are trained once; the report marks the copy "same run" (`same_as`).
Every job's wall and CPU time is printed and written into the JSON (`jobs`), with the sums per
setting (`budget`).

PID-guided slices (the settings of SPLIT_SETTINGS: mfeat fou+zer, the synergy-heavy synthetic
set, and mfeat fou+zer+kar with unimodal, bimodal and trimodal agents): parse also runs with
every fixed ratio of RATIOS and with `model.split: auto` (widths from the fleet's decentralized
PID estimate, resolved per seed by simulate before round 0: edge.learning.auto_model); with
three modalities also with the synergy projections s_m shared by modality and with
`synergy_scope: auto` (per modality from the estimate). "best fixed" is the ratio with the best
mean over the same seeds, so "auto - best fixed" is, if anything, biased against auto.

`--quick`: only parse and those variants on the SPLIT_SETTINGS, 3 seeds unless --seeds is given.
`--first-seed N`: seeds N .. N + seeds - 1 (held-out seeds for trying rules).
Prints a markdown table per setting and writes bench/results/accuracy.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from edge.learning.strategies import STRATEGIES, strategy_names  # noqa: E402

if TYPE_CHECKING:
    from edge.records import StrategyBlock

EXAMPLES = REPO / "edge" / "examples"
# Decentralized strategies that share something (the ones parse is compared with).
DFL = tuple(s.name for s in STRATEGIES.values() if s.networked and set(s.sharing) != {"-"})


def _mfeat(topology: dict[str, Any], counts: dict[str, int] | None = None) -> dict[str, Any]:
    import yaml

    raw: dict[str, Any] = yaml.safe_load((EXAMPLES / "mfeat.yaml").read_text())
    raw["topology"] = topology
    if counts:
        raw["agents"] = {"counts": counts, "device": "rpi4"}
    return raw


def _synthetic_synergy() -> dict[str, Any]:
    # 3 label bits: 1 redundant (in both modalities), 2 synergistic (XOR across them): two
    # thirds of the label information is only in the combination; 8 classes.
    return {
        "fleet": "bench-synergy",
        "data": {"dataset": "synthetic-pid",
                 "synthetic": {"n_samples": 6000, "dim": 16, "redundant_bits": 1,
                               "unique_bits": 0, "synergy_bits": 2, "noise": 0.3},
                 "partition": {"kind": "iid", "test_fraction": 0.25}},
        "families": {"a": {"hidden": [64], "latent": 48}, "b": {"hidden": [64], "latent": 48}},
        "agents": {"count": 12, "multimodal_fraction": 0.34},
        "topology": {"kind": "chordal-ring", "chords": [1, 3]},
        "training": {"rounds": 30, "local_epochs": 1, "batch_size": 32, "lr": 0.003},
    }


def _basic_motions() -> dict[str, Any]:
    import yaml

    raw: dict[str, Any] = yaml.safe_load((EXAMPLES / "basic-motions.yaml").read_text())
    return raw


def _mfeat3() -> dict[str, Any]:
    # Three views, unimodal, bimodal and trimodal agents: a modality's synergy projection has
    # more partners by modality (dsgd-hybrid) than by combination (parse).
    raw = _mfeat({"kind": "chordal-ring", "chords": [1, 3]},
                 {"fou": 2, "zer": 2, "kar": 2, "fou+zer": 2, "fou+kar": 2, "zer+kar": 2,
                  "fou+zer+kar": 3})
    raw["fleet"] = "mfeat-fou-zer-kar"
    raw["data"]["modalities"] = ["fou", "zer", "kar"]
    raw["families"]["kar"] = {"kind": "mlp", "hidden": [64], "latent": 48}
    return raw


SETTINGS = {
    "mfeat-chordal": lambda: _mfeat({"kind": "chordal-ring", "chords": [1, 3]}),
    "mfeat-ring": lambda: _mfeat({"kind": "ring"}),
    "mfeat-2-5-5": lambda: _mfeat({"kind": "chordal-ring", "chords": [1, 3]},
                                  {"fou": 5, "zer": 5, "fou+zer": 2}),
    "synthetic-synergy": _synthetic_synergy,
    "basic-motions": _basic_motions,
    "mfeat-3": _mfeat3,
}

# Fixed redundant:unique:synergy ratios swept beside `split: auto` (1:1:1 is parse's default).
RATIOS: dict[str, tuple[int, int, int]] = {
    "1:1:1": (1, 1, 1), "2:1:1": (2, 1, 1), "1:2:1": (1, 2, 1), "1:1:2": (1, 1, 2),
    "3:2:1": (3, 2, 1), "1:1:4": (1, 1, 4),
}
SPLIT_SETTINGS = ("mfeat-chordal", "synthetic-synergy", "mfeat-3")
# Settings run on the sliced architecture only (the budget: 40 minutes on 2 cores): with three
# modalities the question is parse against dsgd-hybrid, which differ only there.
SLICED_ONLY = ("mfeat-3",)
PARSE = "parse/sliced"  # parse with the config's split 1:1:1 and s_m by combination


def _split_label(ratio: str) -> str:
    return PARSE if ratio == "1:1:1" else f"parse[split {ratio}]/sliced"


def _pid_variants(setting: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """parse with every fixed ratio and auto; with three modalities, the synergy scopes too."""
    if setting not in SPLIT_SETTINGS:
        return {}
    out: dict[str, tuple[str, dict[str, Any]]] = {
        f"split {name}": ("parse", {"split": tuple(float(v) for v in ratio)})
        for name, ratio in RATIOS.items() if name != "1:1:1"}
    out["split auto"] = ("parse", {"split": "auto"})
    if len(SETTINGS[setting]()["data"].get("modalities", [])) > 2:
        out["scope modality"] = ("parse", {"synergy_scope": "modality"})
        out["scope auto"] = ("parse", {"synergy_scope": "auto"})
        out["split auto, scope auto"] = ("parse", {"split": "auto", "synergy_scope": "auto"})
    return out


# Design ablations run beside the strategies: parse with another combiner or shared heads.
# setting -> label -> (the strategy it varies, model overrides)
VARIANTS: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {
    "mfeat-chordal": {"share_heads": ("parse", {"share_heads": True})},
    "synthetic-synergy": {"mean": ("parse", {"combiner": "mean"}),
                          "gate": ("parse", {"combiner": "gate"})},
}


def _row(block: StrategyBlock) -> dict[str, Any]:
    return {
        "overall": block["accuracy"]["overall"],
        "by_kind": block["accuracy"]["by_kind"],
        "per_head": block["per_head"],
        "bytes_per_round": block["bytes_dense"]["per_round"],
        "wall_s": block["wall_s"],
        "gradient_conflict": block.get("gradient_conflict", {}),
    }


class Job(NamedTuple):
    """One run: a strategy (or a variant of one) on one architecture, for one (setting, seed)."""

    setting: str
    seed: int
    label: str                  # the report's row, e.g. "parse[split auto]/sliced"
    strategy: str
    arch: str                   # sliced | plain
    overrides: tuple[tuple[str, Any], ...]  # model overrides of a variant (empty: the config's)


# CPU seconds per run, mean over a setting's runs (`--seeds 1 --workers 1`, bench/RESULTS.md
# "Job plan and timing"); only the order of submission depends on them, never a result.
COST_S = {"mfeat-chordal": 2.6, "mfeat-ring": 2.0, "mfeat-2-5-5": 2.1,
          "synthetic-synergy": 5.6, "basic-motions": 1.5, "mfeat-3": 4.6}
AUTO_COST_S = 1.5  # the fleet PID estimate a `split: auto` / `synergy_scope: auto` run makes first


def plan(setting: str, seed: int, strategies: tuple[str, ...]) -> list[Job]:
    """Every run of one (setting, seed), in report order: strategies per architecture, then variants."""
    jobs = []
    for arch in ("sliced",) if setting in SLICED_ONLY else ("sliced", "plain"):
        jobs += [Job(setting, seed, f"{name}/{arch}", name, arch, ())
                 for name in strategy_names(arch=arch) if name in strategies]
    variants = {**VARIANTS.get(setting, {}), **_pid_variants(setting)}
    jobs += [Job(setting, seed, f"{base}[{label}]/sliced", base, "sliced",
                 tuple(overrides.items()))
             for label, (base, overrides) in variants.items() if base in strategies]
    return jobs


def run_key(job: Job) -> tuple[Any, ...] | None:
    """What a run's figures depend on besides the seed: equal keys, identical runs.

    The model config, the architecture trained, the schedule, and for every agent its branches
    as the units each carries and the agents it is averaged with (those holding the same branch
    key, edge.learning.gossip.mixing_plan). The strategy reaches training only through these
    (edge.learning.learner.branches_of and holdings, simulate_strategy), and the key's name does
    not matter: with one modality pair, s_m by modality and by combination group the same
    agents. None (compare with nothing) when something is resolved per seed from the PID estimate.
    """
    from dataclasses import replace

    from edge.config.load import parse_config
    from edge.learning.auto_model import is_auto
    from edge.learning.sharing import branches_for

    cfg = parse_config(SETTINGS[job.setting](), f"<bench {job.setting}>")
    model = replace(cfg.model, **dict(job.overrides))
    if is_auto(model):
        return None
    strategy = STRATEGIES[job.strategy]
    arch = strategy.arch(job.arch)
    branches = {spec.id: branches_for(strategy.sharing, spec.modalities, arch, model.share_heads,
                                      model.synergy_scope) for spec in cfg.agent_specs}
    groups = tuple(
        (agent, tuple(sorted((tuple(units), tuple(sorted(a for a, b in branches.items() if key in b)))
                             for key, units in own.items())))
        for agent, own in branches.items())
    # share_heads and synergy_scope act only through the branches, compared above.
    model = replace(model, share_heads=False, synergy_scope="combination")
    return (repr(model), arch, strategy.pooled,
            strategy.schedule(cfg.training.rounds, cfg.training.local_epochs), groups)


def run_job(job: Job) -> dict[str, Any]:
    """Train one run; its report row plus the job's wall time (data, PID estimate and training)."""
    from dataclasses import replace

    import torch

    from edge.config.load import parse_config
    from edge.learning.simulate import simulate_fleet

    started, cpu = time.perf_counter(), time.process_time()
    torch.set_num_threads(1)
    cfg = parse_config(SETTINGS[job.setting](), f"<bench {job.setting}>")
    if job.overrides:
        cfg = replace(cfg, model=replace(cfg.model, **dict(job.overrides)))
    summary = simulate_fleet(cfg, [job.strategy], job.arch, seed=job.seed)
    row = _row(summary["strategies"][job.strategy])
    if job.overrides:
        row["model"] = summary.get("model", {})
    # CPU seconds too: on cores shared with other work they, not wall seconds, say what the job
    # costs on a free core (one torch thread: wall ~ CPU there).
    return {"row": row, "job_wall_s": time.perf_counter() - started,
            "job_cpu_s": time.process_time() - cpu}


def _model_block(job: Job) -> dict[str, Any]:
    """The summary's `model` block of a variant with nothing auto (no estimate to run)."""
    from dataclasses import replace

    from edge.config.load import parse_config
    from edge.learning.auto_model import resolve_model

    cfg = parse_config(SETTINGS[job.setting](), f"<bench {job.setting}>")
    return resolve_model(replace(cfg, model=replace(cfg.model, **dict(job.overrides)))).as_dict()


def _cost(job: Job) -> float:
    auto = any(v == "auto" for _, v in job.overrides)
    return COST_S.get(job.setting, 5.0) + (AUTO_COST_S if auto else 0.0)


def run_all(jobs: list[Job], workers: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run the jobs (duplicates once), longest first; per (setting, seed) results and the job log.

    Returns
    -------
    results : list of dict
        One {"setting", "seed", "runs"} per (setting, seed), runs in plan order; a run identical
        by construction to an earlier one of the same (setting, seed) is a copy of it with
        `same_as` naming it.
    log : list of dict
        One entry per planned run: setting, seed, label, wall_s (None for a copy), same_as.
    """
    same_as: dict[Job, Job] = {}
    first: dict[tuple[Any, ...], Job] = {}
    for job in jobs:
        key = run_key(job)
        if key is None:
            continue
        full = (job.setting, job.seed, key)
        if full in first:
            same_as[job] = first[full]
        else:
            first[full] = job
    todo = sorted((j for j in jobs if j not in same_as), key=_cost, reverse=True)
    done: dict[Job, dict[str, Any]] = {}
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(run_job, job): job for job in todo}
        for i, future in enumerate(as_completed(futures)):
            job = futures[future]
            done[job] = future.result()
            print(f"[{i + 1}/{len(todo)}] {job.setting} seed {job.seed} {job.label}: "
                  f"{done[job]['job_wall_s']:.1f} s wall, {done[job]['job_cpu_s']:.1f} s CPU "
                  f"({time.perf_counter() - started:.0f} s)",
                  file=sys.stderr, flush=True)
    results: dict[tuple[str, int], dict[str, Any]] = {}
    log = []
    for job in jobs:
        source = same_as.get(job, job)
        row = dict(done[source]["row"])
        if job in same_as:
            row["same_as"] = source.label
            if job.overrides:  # a variant's row says how its model was set, as a trained one does
                row["model"] = _model_block(job)
        results.setdefault((job.setting, job.seed), {"setting": job.setting, "seed": job.seed,
                                                     "runs": {}})["runs"][job.label] = row
        log.append({"setting": job.setting, "seed": job.seed, "label": job.label,
                    "wall_s": None if job in same_as else done[job]["job_wall_s"],
                    "cpu_s": None if job in same_as else done[job]["job_cpu_s"],
                    "same_as": source.label if job in same_as else None})
    return list(results.values()), log


def budget(log: list[dict[str, Any]]) -> dict[str, Any]:
    """Job seconds per setting and in all, runs trained and copied (the 40-minute budget)."""
    out: dict[str, Any] = {}
    for entry in log:
        per = out.setdefault(entry["setting"], {"runs": 0, "copies": 0, "job_s": 0.0,
                                                "cpu_s": 0.0})
        if entry["wall_s"] is None:
            per["copies"] += 1
        else:
            per["runs"] += 1
            per["job_s"] += entry["wall_s"]
            per["cpu_s"] += entry["cpu_s"]
    out["total job_s"] = sum(v["job_s"] for v in out.values() if isinstance(v, dict))
    out["total cpu_s"] = sum(v["cpu_s"] for v in out.values() if isinstance(v, dict))
    return out


def _mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def aggregate(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per setting: mean accuracy per run, by kind, and paired parse-vs-best differences."""
    by_setting: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_setting.setdefault(r["setting"], []).append(r)
    report: dict[str, Any] = {}
    for setting, rows in by_setting.items():
        rows.sort(key=lambda r: r["seed"])
        names = list(rows[0]["runs"])
        table: dict[str, dict[str, Any]] = {}
        for name in names:
            overall = [r["runs"][name]["overall"] for r in rows]
            kinds = rows[0]["runs"][name]["by_kind"]
            table[name] = {
                "overall": _mean_se(overall)[0],
                "overall_se": _mean_se(overall)[1],
                "by_kind": {k: _mean_se([r["runs"][name]["by_kind"][k] for r in rows])[0]
                            for k in kinds},
                "per_head": {h: _mean_se([r["runs"][name]["per_head"].get(h, float("nan"))
                                          for r in rows])[0]
                             for h in rows[0]["runs"][name]["per_head"]},
                "bytes_per_round": _mean_se([r["runs"][name]["bytes_per_round"] for r in rows])[0],
            }
            if rows[0]["runs"][name].get("same_as"):
                table[name]["same_as"] = rows[0]["runs"][name]["same_as"]
        paired = {}
        parse = [r["runs"]["parse/sliced"]["overall"] for r in rows]
        groups = {
            "best other DFL (sliced)": [f"{s}/sliced" for s in DFL[1:]],
            "best plain": [n for n in names if n.endswith("/plain") and not n.startswith("centr")],
            "local (sliced)": ["local/sliced"],
        }
        for label, candidates in groups.items():
            candidates = [c for c in candidates if c in table]
            if not candidates:  # --strategies left them out
                continue
            best = max(candidates, key=lambda n: table[n]["overall"])
            diffs = [p - r["runs"][best]["overall"] for p, r in zip(parse, rows, strict=True)]
            mean, se = _mean_se(diffs)
            paired[label] = {"against": best, "mean_diff": mean, "se": se}
        report[setting] = {"seeds": [r["seed"] for r in rows], "table": table, "paired": paired,
                           "pid": _pid_paired(rows, table)}
    return report


def _pid_paired(rows: list[dict[str, Any]], table: dict[str, Any]) -> dict[str, Any]:
    """split auto against 1:1:1 and the best fixed ratio; the synergy scopes (three modalities)."""
    auto = "parse[split auto]/sliced"
    if auto not in table:
        return {}

    def diff(a: str, b: str) -> dict[str, Any]:
        mean, se = _mean_se([r["runs"][a]["overall"] - r["runs"][b]["overall"] for r in rows])
        return {"a": a, "b": b, "mean_diff": mean, "se": se}

    fixed = [_split_label(n) for n in RATIOS if _split_label(n) in table]
    best = max(fixed, key=lambda n: table[n]["overall"])
    out: dict[str, Any] = {
        "auto widths per seed": [r["runs"][auto]["model"].get("split") for r in rows],
        "split auto - best fixed ratio": diff(auto, best),
        "split auto - 1:1:1": diff(auto, PARSE),
    }
    scoped = "parse[scope modality]/sliced"
    if scoped in table:
        out["auto scopes per seed"] = [r["runs"]["parse[scope auto]/sliced"]["model"].get(
            "synergy_scope") for r in rows]
        best_scope = max((PARSE, scoped), key=lambda n: table[n]["overall"])
        out["s by modality - by combination (1:1:1)"] = diff(scoped, PARSE)
        out["scope auto - best scope (1:1:1)"] = diff("parse[scope auto]/sliced", best_scope)
        everything = [*fixed, scoped, auto, "parse[scope auto]/sliced"]
        best_all = max(everything, key=lambda n: table[n]["overall"])
        out["split auto, scope auto - best of the sweep"] = diff(
            "parse[split auto, scope auto]/sliced", best_all)
    return out


def markdown(report: dict[str, Any]) -> str:
    """One table per setting plus the paired differences."""
    lines = []
    for setting, rep in report.items():
        table = rep["table"]
        kinds = list(next(iter(table.values()))["by_kind"])
        lines += [f"### {setting} ({len(rep['seeds'])} seeds)", "",
                  "| strategy/arch | overall | " + " | ".join(kinds) + " | KB/round |",
                  "|---|---|" + "---|" * len(kinds) + "---|"]
        for name, row in sorted(table.items(), key=lambda kv: -kv[1]["overall"]):
            if row.get("same_as"):
                name = f"{name} (= {row['same_as']}, same run)"
            cells = " | ".join(f"{100 * row['by_kind'][k]:.1f}" for k in kinds)
            lines.append(f"| {name} | {100 * row['overall']:.1f} ± {100 * row['overall_se']:.1f} | "
                         f"{cells} | {row['bytes_per_round'] / 1024:.0f} |")
        lines.append("")
        for label, p in rep["paired"].items():
            lines.append(f"- parse − {label} ({p['against']}): "
                         f"{100 * p['mean_diff']:+.2f} ± {100 * p['se']:.2f} points (paired SE)")
        lines.append("")
        for label, p in rep.get("pid", {}).items():
            if isinstance(p, dict) and "mean_diff" in p:
                lines.append(f"- {label} ({p['a']} − {p['b']}): "
                             f"{100 * p['mean_diff']:+.2f} ± {100 * p['se']:.2f} points (paired SE)")
            else:
                lines.append(f"- {label}: {p}")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=None, help="default 5 (--quick: 3)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds FIRST .. FIRST + seeds - 1 (default 0; e.g. 100 held out)")
    parser.add_argument("--settings", default=None, help="default all (--quick: SPLIT_SETTINGS)")
    parser.add_argument("--strategies", default=None, help="default all (--quick: parse)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true",
                        help="only parse with the fixed ratios, split: auto and the synergy scopes")
    parser.add_argument("--out", default=None,
                        help="default bench/results/accuracy.json (--quick: accuracy_quick.json)")
    args = parser.parse_args()
    quick = args.quick
    args.seeds = args.seeds or (3 if quick else 5)
    args.settings = args.settings or ",".join(SPLIT_SETTINGS if quick else SETTINGS)
    args.strategies = args.strategies or ("parse" if quick else ",".join(STRATEGIES))
    args.out = args.out or str(REPO / "bench" / "results" /
                               ("accuracy_quick.json" if quick else "accuracy.json"))
    settings = args.settings.split(",")
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        parser.error(f"--settings: unknown {unknown}; expected some of {', '.join(SETTINGS)}")
    strategies = tuple(args.strategies.split(","))
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    jobs = [job for s in settings for seed in seeds for job in plan(s, seed, strategies)]
    started = time.perf_counter()
    results, log = run_all(jobs, args.workers)
    report = aggregate(results)
    print(markdown(report))
    spent = budget(log)
    print(f"job seconds: {spent['total job_s']:.0f} wall, {spent['total cpu_s']:.0f} CPU in all; "
          + "; ".join(f"{k} {v['job_s']:.0f} wall, {v['cpu_s']:.0f} CPU ({v['runs']} runs, "
                      f"{v['copies']} copies)"
        for k, v in spent.items() if isinstance(v, dict)), file=sys.stderr)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"wall_s": time.perf_counter() - started, "workers": args.workers,
                               "budget": spent, "jobs": log, "report": report, "runs": results},
                              indent=2))
    print(f"wrote {out} ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
