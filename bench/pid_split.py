"""PID-guided slices benchmark: `split: auto` against 1:1:1 and a sweep of fixed ratios, and the
synergy-sharing scope with three modalities (not a test).

    python bench/pid_split.py [--seeds 5] [--settings mfeat-fou-zer,...] [--workers 2]

Per (setting, seed): the fleet PID estimate (edge.learning.pid_fleet.fleet_pid: gossip-summed
joint counts, no pooled data) gives the auto widths and per-modality synergy scopes; then parse
runs with every fixed ratio and with auto on the same partitions (paired). With three modalities
it also runs the synergy projections shared by modality (dsgd-hybrid's scope on the sliced
architecture) and, when the estimate picks different scopes for different modalities, that mix.
Prints markdown tables, writes bench/results/pid_split.json.
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
EXAMPLES = REPO / "edge" / "examples"
RATIOS: dict[str, tuple[int, int, int]] = {
    "1:1:1": (1, 1, 1), "2:1:1": (2, 1, 1), "1:2:1": (1, 2, 1), "1:1:2": (1, 1, 2),
    "3:2:1": (3, 2, 1), "1:1:4": (1, 1, 4),
}


def _mfeat() -> dict[str, Any]:
    import yaml

    raw: dict[str, Any] = yaml.safe_load((EXAMPLES / "mfeat.yaml").read_text())
    return raw


def _synthetic_synergy() -> dict[str, Any]:
    # bench/accuracy.py's synergy-heavy set: 1 redundant + 2 synergistic label bits.
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


def _mfeat3() -> dict[str, Any]:
    # Three views: unimodal, bimodal and trimodal agents, so a modality's synergy projection
    # has more partners by modality (parse: by combination) — where parse and dsgd-hybrid differ.
    raw = _mfeat()
    raw["fleet"] = "mfeat-fou-zer-kar"
    raw["data"]["modalities"] = ["fou", "zer", "kar"]
    raw["families"]["kar"] = {"kind": "mlp", "hidden": [64], "latent": 48}
    raw["agents"] = {"counts": {"fou": 2, "zer": 2, "kar": 2, "fou+zer": 2, "fou+kar": 2,
                                "zer+kar": 2, "fou+zer+kar": 3}, "device": "rpi4"}
    return raw


SETTINGS = {"mfeat-fou-zer": _mfeat, "synthetic-synergy": _synthetic_synergy, "mfeat-3": _mfeat3}


def _with_scopes(by_modality: frozenset[str]) -> None:
    """Share s_m by modality for the modalities in `by_modality`, by combination otherwise
    (this process only: parse's row of the sharing table has one scope for every s_m)."""
    import edge.learning.learner
    from edge.learning.sharing import Scope, SharingRow, Unit, scope_of
    from edge.learning.strategies import get_strategy

    parse_row = get_strategy("parse").sharing

    def scoped(row: SharingRow, unit: Unit, share_heads: bool) -> Scope:
        if row == parse_row and unit.kind == "syn":
            return Scope.MODALITY if unit.modality in by_modality else Scope.COMBINATION
        return scope_of(row, unit, share_heads)

    edge.learning.learner.scope_of = scoped  # type: ignore[attr-defined]


def run_one(setting: str, seed: int) -> dict[str, Any]:
    """Every ratio, auto and (three modalities) the synergy scopes for one (setting, seed)."""
    from dataclasses import replace

    import torch

    from edge.config.load import parse_config
    from edge.config.overrides import with_overrides
    from edge.learning.pid import SynergyScope
    from edge.learning.pid_fleet import PidOptions, fleet_pid
    from edge.learning.simulate import simulate_fleet

    torch.set_num_threads(1)
    cfg = with_overrides(parse_config(SETTINGS[setting](), f"<bench {setting}>"), seed=seed)
    started = time.perf_counter()
    estimate = fleet_pid(cfg, PidOptions(k=10, draws=0, seed=seed))
    pid_s = time.perf_counter() - started
    runs: dict[str, float] = {}

    def parse_with(split: tuple[int, ...], strategy: str = "parse") -> float:
        variant = replace(cfg, model=replace(cfg.model, split=tuple(float(s) for s in split)))
        block = simulate_fleet(variant, [strategy], "sliced")["strategies"][strategy]
        return float(block["accuracy"]["overall"])

    for name, ratio in RATIOS.items():
        runs[name] = parse_with(ratio)
    runs["auto"] = parse_with(estimate.split)
    by_modality = frozenset(m for m, s in estimate.scopes.items() if s is SynergyScope.MODALITY)
    if len(cfg.modalities) > 2:
        runs["1:1:1 s by modality (dsgd-hybrid)"] = parse_with((1, 1, 1), "dsgd-hybrid")
        runs["auto s by modality"] = parse_with(estimate.split, "dsgd-hybrid")
        if 0 < len(by_modality) < len(cfg.modalities):
            _with_scopes(by_modality)
            runs["auto s by PID scope"] = parse_with(estimate.split)
            _with_scopes(frozenset())
    return {"setting": setting, "seed": seed, "runs": runs, "pid_s": pid_s,
            "split": list(estimate.split), "scopes": {m: s.value for m, s in estimate.scopes.items()},
            "pairs": [{"pair": f"{p.a}/{p.b}", **p.estimate.point.as_dict()} for p in estimate.pairs]}


def _mean_se(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))


def aggregate(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per setting: mean accuracy per variant and paired differences of auto."""
    report: dict[str, Any] = {}
    for setting in dict.fromkeys(r["setting"] for r in results):
        rows = sorted((r for r in results if r["setting"] == setting), key=lambda r: r["seed"])
        names = [n for n in rows[0]["runs"] if all(n in r["runs"] for r in rows)]
        table = {n: _mean_se([r["runs"][n] for r in rows]) for n in names}
        fixed = [n for n in RATIOS if n in table]
        best = max(fixed, key=lambda n: table[n][0])
        paired = {}
        for label, other in (("auto - best fixed", best), ("auto - 1:1:1", "1:1:1")):
            paired[label] = {"against": other,
                             "diff": _mean_se([r["runs"]["auto"] - r["runs"][other] for r in rows])}
        if "1:1:1 s by modality (dsgd-hybrid)" in table:
            paired["s by modality - by combination (1:1:1)"] = {
                "against": "1:1:1",
                "diff": _mean_se([r["runs"]["1:1:1 s by modality (dsgd-hybrid)"] - r["runs"]["1:1:1"]
                                  for r in rows])}
        report[setting] = {"seeds": [r["seed"] for r in rows], "table": table, "paired": paired,
                           "splits": [r["split"] for r in rows], "scopes": [r["scopes"] for r in rows],
                           "pid_s": [r["pid_s"] for r in rows]}
    return report


def markdown(report: dict[str, Any]) -> str:
    """One table per setting and the paired differences."""
    lines = []
    for setting, rep in report.items():
        lines += [f"### {setting} ({len(rep['seeds'])} seeds)", "",
                  f"auto widths per seed: {rep['splits']}", "",
                  "| parse split | accuracy |", "|---|---|"]
        for name, (mean, se) in sorted(rep["table"].items(), key=lambda kv: -kv[1][0]):
            lines.append(f"| {name} | {100 * mean:.2f} ± {100 * se:.2f} |")
        lines.append("")
        for label, p in rep["paired"].items():
            mean, se = p["diff"]
            lines.append(f"- {label} ({p['against']}): {100 * mean:+.2f} ± {100 * se:.2f} points (paired SE)")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "pid_split.json"))
    args = parser.parse_args()
    settings = args.settings.split(",")
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        parser.error(f"--settings: unknown {unknown}; expected some of {', '.join(SETTINGS)}")
    jobs = [(s, seed) for s in settings for seed in range(args.seeds)]
    started = time.perf_counter()
    results = []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = [pool.submit(run_one, s, seed) for s, seed in jobs]
        for i, future in enumerate(futures):
            results.append(future.result())
            print(f"[{i + 1}/{len(jobs)}] {results[-1]['setting']} seed {results[-1]['seed']} "
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
