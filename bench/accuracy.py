"""Accuracy benchmark: every strategy on both architectures, paired over seeds (not a test).

    python bench/accuracy.py [--seeds 5] [--settings mfeat-chordal,...] [--workers 2]

Each (setting, seed) runs every strategy on the same partitions, so differences are paired.
Prints a markdown table per setting and writes bench/results/accuracy.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from edge.learning.strategies import STRATEGIES, strategy_names  # noqa: E402

EXAMPLES = REPO / "edge" / "examples"
# Decentralized strategies that share something (the ones parse is compared with).
DFL = tuple(s.name for s in STRATEGIES.values() if s.networked and set(s.sharing) != {"-"})


def _mfeat(topology: dict, counts: dict | None = None) -> dict:
    import yaml

    raw = yaml.safe_load((EXAMPLES / "mfeat.yaml").read_text())
    raw["topology"] = topology
    if counts:
        raw["agents"] = {"counts": counts, "device": "rpi4"}
    return raw


def _synthetic_synergy() -> dict:
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


def _basic_motions() -> dict:
    import yaml

    return yaml.safe_load((EXAMPLES / "basic-motions.yaml").read_text())


SETTINGS = {
    "mfeat-chordal": lambda: _mfeat({"kind": "chordal-ring", "chords": [1, 3]}),
    "mfeat-ring": lambda: _mfeat({"kind": "ring"}),
    "mfeat-2-5-5": lambda: _mfeat({"kind": "chordal-ring", "chords": [1, 3]},
                                  {"fou": 5, "zer": 5, "fou+zer": 2}),
    "synthetic-synergy": _synthetic_synergy,
    "basic-motions": _basic_motions,
}


# Design ablations run beside the strategies: parse with another combiner or shared heads.
# setting -> label -> (the strategy it varies, model overrides)
VARIANTS: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {
    "mfeat-chordal": {"share_heads": ("parse", {"share_heads": True})},
    "synthetic-synergy": {"mean": ("parse", {"combiner": "mean"}),
                          "gate": ("parse", {"combiner": "gate"})},
}


def _row(block: dict[str, Any]) -> dict[str, Any]:
    return {
        "overall": block["accuracy"]["overall"],
        "by_kind": block["accuracy"]["by_kind"],
        "per_head": block["per_head"],
        "bytes_per_round": block["bytes_dense"]["per_round"],
        "wall_s": block["wall_s"],
        "gradient_conflict": block.get("gradient_conflict", {}),
    }


def run_one(setting: str, seed: int, strategies: tuple[str, ...]) -> dict[str, Any]:
    """All strategies x both architectures for one (setting, seed); returns per-run results."""
    from dataclasses import replace

    import torch

    from edge.config.load import parse_config
    from edge.learning.simulate import simulate_fleet

    torch.set_num_threads(1)
    cfg = parse_config(SETTINGS[setting](), f"<bench {setting}>")
    out: dict[str, Any] = {}
    for arch in ("sliced", "plain"):
        names = [s for s in strategy_names(arch=arch) if s in strategies]
        summary = simulate_fleet(cfg, names, arch, seed=seed)
        for name, block in summary["strategies"].items():
            out[f"{name}/{arch}"] = _row(block)
    for label, (base, model_overrides) in VARIANTS.get(setting, {}).items():
        if base in strategies:
            variant = replace(cfg, model=replace(cfg.model, **model_overrides))
            block = simulate_fleet(variant, [base], "sliced", seed=seed)["strategies"][base]
            out[f"{base}[{label}]/sliced"] = _row(block)
    return {"setting": setting, "seed": seed, "runs": out}


def _mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def aggregate(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per setting: mean accuracy per run, by kind, and paired parse-vs-best differences."""
    by_setting: dict[str, list[dict]] = {}
    for r in results:
        by_setting.setdefault(r["setting"], []).append(r)
    report: dict[str, Any] = {}
    for setting, rows in by_setting.items():
        rows.sort(key=lambda r: r["seed"])
        names = list(rows[0]["runs"])
        table = {}
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
        paired = {}
        parse = [r["runs"]["parse/sliced"]["overall"] for r in rows]
        groups = {
            "best other DFL (sliced)": [f"{s}/sliced" for s in DFL[1:]],
            "best plain": [n for n in names if n.endswith("/plain") and not n.startswith("centr")],
            "local (sliced)": ["local/sliced"],
        }
        for label, candidates in groups.items():
            best = max(candidates, key=lambda n: table[n]["overall"])
            diffs = [p - r["runs"][best]["overall"] for p, r in zip(parse, rows, strict=True)]
            mean, se = _mean_se(diffs)
            paired[label] = {"against": best, "mean_diff": mean, "se": se}
        report[setting] = {"seeds": [r["seed"] for r in rows], "table": table, "paired": paired}
    return report


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
            cells = " | ".join(f"{100 * row['by_kind'][k]:.1f}" for k in kinds)
            lines.append(f"| {name} | {100 * row['overall']:.1f} ± {100 * row['overall_se']:.1f} | "
                         f"{cells} | {row['bytes_per_round'] / 1024:.0f} |")
        lines.append("")
        for label, p in rep["paired"].items():
            lines.append(f"- parse − {label} ({p['against']}): "
                         f"{100 * p['mean_diff']:+.2f} ± {100 * p['se']:.2f} points (paired SE)")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "accuracy.json"))
    args = parser.parse_args()
    settings = args.settings.split(",")
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        parser.error(f"--settings: unknown {unknown}; expected some of {', '.join(SETTINGS)}")
    strategies = tuple(args.strategies.split(","))
    jobs = [(s, seed) for s in settings for seed in range(args.seeds)]
    started = time.perf_counter()
    results = []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = [pool.submit(run_one, s, seed, strategies) for s, seed in jobs]
        for i, future in enumerate(futures):
            result = future.result()
            results.append(result)
            print(f"[{i + 1}/{len(jobs)}] {result['setting']} seed {result['seed']} "
                  f"({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    report = aggregate(results)
    print(markdown(report))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"wall_s": time.perf_counter() - started, "report": report,
                               "runs": results}, indent=2))
    print(f"wrote {out} ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
