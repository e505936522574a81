"""Field-trial benchmark: real agent processes on this machine, through the embedded broker.

1. start-up: 8, 16 and 32 agents started from the fork server and as isolated interpreters,
   side by side: seconds from the first process started (the fork server, or the first agent)
   until every agent runs round 0, and each agent's peak unique memory (USS) beside its RSS and
   PSS, in MiB. Each trial is a `parse-edge trial` process of its own, so every fork-server run
   pays for its server's imports (a cold start);
2. scaling: 8, 16 and 32 agents (one process each) on mfeat: wall seconds per round split into
   training and everything else, peak RSS per agent process, MB per round, and bytes on the wire
   per agent-round as a multiple of that agent's encoded update;
3. accuracy versus bytes for parse with codecs fp32 / fp16 / int8 / topk+EF / stc+EF on mfeat
   (the example fleet: 12 agents, fou + zer, Dirichlet 0.5), side by side in one run; "x2" rows
   exchange every second local epoch (half the rounds, two local epochs each: the same 30
   epochs of training as fp32's 30 x 1);
4. the codec sweep over seeds: the same codecs in the simulator, paired with fp32 on the same
   partitions (mean and paired standard error of the accuracy difference, update bytes ratio).
   The simulator runs every agent's real round loop and real codec state (edge.learning.simulate;
   tests/test_edge_trial.py checks that a trial's per-agent accuracies equal the simulator's),
   so a seed sweep need not start processes; its bytes are the update messages in our wire
   format (header included) without MQTT's own headers, so its ratios read higher than a
   trial's "MB of updates" ratio (which counts them).

    python bench/trial.py [--startup 8,16,32] [--agents 8,16,32] [--rounds 6] [--codec-rounds 30]
                          [--sweep-seeds 10] [--quick] [--out bench/results/trial.json]

A section given '' is skipped; the JSON keeps the sections of earlier runs that were skipped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge.config.load import load_config  # noqa: E402
from edge.trial.runner import TrialOptions, run_trial  # noqa: E402

if TYPE_CHECKING:
    from edge.records import SummaryDoc

MFEAT = REPO / "edge" / "examples" / "mfeat.yaml"
STC: dict[str, Any] = {"codec": "stc", "topk_fraction": 0.08, "error_feedback": True,
                       "keyframe_every": 0, "keyframe_codec": "int8", "consensus_step": 0.5}
CODECS: dict[str, dict[str, Any]] = {
    "fp32": {"codec": "fp32"}, "fp16": {"codec": "fp16"}, "int8": {"codec": "int8"},
    # Top-k deltas against the copy receivers hold (error feedback), keyframes only on
    # first contact or request, sent as int8 (topk's damped consensus step by default):
    # the low-bandwidth setting.
    "topk+EF": {"codec": "topk", "topk_fraction": 0.02, "error_feedback": True,
                "keyframe_every": 0, "keyframe_codec": "int8"},
    # The config default: an fp32 keyframe every 10 rounds, which dominates the bytes.
    "topk+EF-kf10": {"codec": "topk", "topk_fraction": 0.02, "error_feedback": True},
    # Sparse ternary compression (Sattler et al. 2019; broker.codecs.encode_stc) of 8% or 15%
    # of the entries with error feedback, an int8 keyframe on first contact, consensus step
    # 0.5 (0.3 lost 0.6 points more, 0.7 no better: bench/RESULTS.md).
    "stc8+EF": STC,
    "stc8+EF x2": STC,
    "stc15+EF x2": {**STC, "topk_fraction": 0.15},
    "fp32 x2": {"codec": "fp32"}}
# Local epochs per exchange of a codec row ("x2": rounds halved, two local epochs a round).
LOCAL_EPOCHS = {"stc8+EF x2": 2, "stc15+EF x2": 2, "fp32 x2": 2}
# The codec sweep (section 4) by default: fp32 is the reference every row is paired with.
SWEEP = ("fp32", "topk+EF", "stc8+EF", "fp32 x2", "stc8+EF x2", "stc15+EF x2")


def write_config(folder: Path, name: str, agents: int | None, rounds: int, comm: dict[str, Any],
                 topology: dict[str, Any] | None = None, local_epochs: int = 1) -> Path:
    """The mfeat example with another agent count, round count, codec (and topology, epochs)."""
    doc = yaml.safe_load(MFEAT.read_text())
    doc["training"]["local_epochs"] = local_epochs
    if topology is not None:
        doc["topology"] = topology
    doc["fleet"] = f"bench-{name}-{int(time.time())}"
    if agents is not None:
        doc["agents"]["count"] = agents
    doc["training"]["rounds"] = rounds
    doc["comm"] = {**doc.get("comm", {}), **comm}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def run(config: Path, out: Path) -> tuple[SummaryDoc | dict[str, Any], list[dict[str, Any]]]:
    """One trial; its summary and metrics rows."""
    result = run_trial(load_config(config), TrialOptions(out=out, config_path=str(config)))
    if result.exit_code != 0:
        raise RuntimeError(f"trial {config.name} {result.status}: {result.summary['trial']['reason']} "
                           f"failed agents {result.failed_agents}; record in {out}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return result.summary, rows


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def scaling_row(n_agents: int, summary: SummaryDoc | dict[str, Any], rows: list[dict[str, Any]]
                ) -> dict[str, Any]:
    """What one fleet size measured. The per-round split uses the steady rounds: round 0 has
    nothing to mix, round 1 absorbs the start-up skew (agents finish importing torch up to tens of
    seconds apart on 2 cores and wait for their neighbours' first update), and the last round
    publishes nothing. Means and medians over agent-rounds."""
    block = summary["strategies"]["parse"]
    agents = block["agents"]
    rounds = summary["trial"]["rounds_planned"]
    steady = [r for r in rows if 2 <= r["round"] < rounds - 1]
    round_s = [r["round_s"] for r in steady]
    train_s = [r["train_s"] for r in steady]
    wait_s = [r["wait_s"] for r in steady]
    non_train = [r["round_s"] - r["train_s"] for r in steady]
    ratios = [a["bytes"]["wire_per_round_over_update"] for a in agents.values()
              if a["bytes"]["wire_per_round_over_update"]]
    wire_total = block["bytes_sent"]["total"] + block["bytes_received"]["total"]
    return {
        "agents": n_agents,
        "rounds": rounds,
        "trial_wall_s": summary["trial"]["wall_s"],
        "round_s": _mean(round_s),
        "train_s": _mean(train_s),
        "non_train_s": _mean(non_train),
        "non_train_s_median": statistics.median(non_train) if non_train else float("nan"),
        "wait_s": _mean(wait_s),
        "other_s": _mean(non_train) - _mean(wait_s),
        "round1_wait_s_max": max((r["wait_s"] for r in rows if r["round"] == 1), default=float("nan")),
        "peak_rss_mb_max": max(a["peak_rss_mb"] for a in agents.values()),
        "peak_rss_mb_mean": _mean([a["peak_rss_mb"] for a in agents.values()]),
        "mb_sent_per_round": block["bytes_sent"]["total"] / rounds / 1e6,
        "mb_wire_per_round": wire_total / rounds / 1e6,
        "wire_over_update_mean": _mean(ratios),
        "wire_over_update_max": max(ratios) if ratios else float("nan"),
        "update_kb_mean": _mean([a["bytes"]["update_bytes"] / 1e3 for a in agents.values()
                                 if a["bytes"]["update_bytes"]]),
        "accuracy": block["accuracy"]["overall"],
        "mix_coverage": summary["trial"]["mix_coverage"]["overall"],
    }


def startup_row(n_agents: int, mode: str, summary: dict[str, Any], wall_s: float) -> dict[str, Any]:
    """Start-up phases and per-agent memory of one trial (MiB)."""
    agents = summary["strategies"]["parse"]["agents"].values()
    startup = summary["trial"]["startup"]
    uss = [a["peak_uss_mib"] for a in agents]
    return {
        "agents": n_agents, "mode": mode,
        "startup_s": startup["round0_s"], "connected_s": startup["connected_s"],
        "quorum_s": startup["quorum_s"], "launched_s": startup["launched_s"],
        "uss_mib_mean": _mean(uss), "uss_mib_max": max(uss),
        "pss_mib_mean": _mean([a["peak_pss_mib"] for a in agents]),
        "rss_mib_mean": _mean([a["peak_rss_mb"] for a in agents]),
        "pss_mib_total": sum(a["peak_pss_mib"] for a in agents),
        "trial_wall_s": wall_s,
    }


def run_startup(work: Path, n_agents: int, rounds: int, isolated: bool) -> dict[str, Any]:
    """One `parse-edge trial` process (its own fork server when not isolated)."""
    mode = "isolated" if isolated else "fork server"
    name = f"startup{n_agents}-{'iso' if isolated else 'fork'}"
    config = write_config(work, name, n_agents, rounds, {"codec": "fp32"}, {"kind": "ring"})
    out = work / name
    cmd = [str(Path(sys.executable).with_name("parse-edge")), "trial", str(config), "--out", str(out),
           "--plain", "--no-plots", "--force"] + (["--isolated"] if isolated else [])
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall_s = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} {n_agents} agents: exit {proc.returncode}: {proc.stderr[-1500:]}")
    return startup_row(n_agents, mode, json.loads((out / "summary.json").read_text()), wall_s)


def print_startup(rows: list[dict[str, Any]], rounds: int) -> None:
    """The start-up table, with the side-by-side ratios per fleet size."""
    print(f"\n## Start-up and memory (mfeat fou+zer, ring, {rounds} rounds; one `parse-edge trial` "
          "per row)\n")
    print("Start-up: first process started (fork server or first agent) until every agent runs "
          "round 0. Memory per agent process, peak, MiB.\n")
    print("| agents | agent processes | start-up s | all connected s | USS MiB (mean, max) "
          "| PSS MiB (mean) | RSS MiB (mean) | PSS total MiB | trial s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['agents']} | {r['mode']} | {r['startup_s']:.1f} | {r['connected_s']:.1f} "
              f"| {r['uss_mib_mean']:.0f}, {r['uss_mib_max']:.0f} | {r['pss_mib_mean']:.0f} "
              f"| {r['rss_mib_mean']:.0f} | {r['pss_mib_total']:.0f} | {r['trial_wall_s']:.0f} |")
    print("\n| agents | start-up isolated / fork server | fork-server USS / isolated RSS |")
    print("|---|---|---|")
    for n in sorted({r["agents"] for r in rows}):
        fork = next((r for r in rows if r["agents"] == n and r["mode"] == "fork server"), None)
        iso = next((r for r in rows if r["agents"] == n and r["mode"] == "isolated"), None)
        if fork and iso:
            print(f"| {n} | {iso['startup_s'] / fork['startup_s']:.1f}x "
                  f"| {fork['uss_mib_mean'] / iso['rss_mib_mean']:.2f} |")


def update_bytes_sent(agent: dict[str, Any]) -> float:
    """Bytes of branch updates an agent sent (update topics only, MQTT headers included)."""
    return sum(float(b.get("sent_bytes", 0)) for b in agent["bytes"]["per_branch"].values())


def codec_row(name: str, summary: SummaryDoc | dict[str, Any]) -> dict[str, Any]:
    block = summary["strategies"]["parse"]
    agents = block["agents"]
    return {
        "codec": name,
        "accuracy": block["accuracy"]["overall"],
        "by_kind": block["accuracy"]["by_kind"],
        "mb_sent": block["bytes_sent"]["total"] / 1e6,
        "mb_updates": sum(update_bytes_sent(a) for a in agents.values()) / 1e6,
        "update_kb_mean": _mean([a["bytes"]["update_bytes"] / 1e3 for a in agents.values()
                                 if a["bytes"]["update_bytes"]]),
        "wire_over_update_mean": _mean([a["bytes"]["wire_per_round_over_update"] for a in agents.values()
                                        if a["bytes"]["wire_per_round_over_update"]]),
        "trial_wall_s": summary["trial"]["wall_s"],
        "mix_coverage": summary["trial"]["mix_coverage"]["overall"],
    }


def _mean_se(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan"))


def sweep_one(seed: int, names: list[str], rounds: int) -> list[dict[str, Any]]:
    """Every codec row of `names` in the simulator on one seed's partitions (paired)."""
    from dataclasses import replace

    import torch

    from edge.config.overrides import with_overrides
    from edge.learning.simulate import simulate_fleet

    torch.set_num_threads(1)
    base = with_overrides(load_config(MFEAT), seed=seed)
    out = []
    for name in names:
        epochs = LOCAL_EPOCHS.get(name, 1)
        cfg = replace(base, comm=replace(base.comm, **CODECS[name]),
                      training=replace(base.training, rounds=rounds // epochs, local_epochs=epochs))
        block = simulate_fleet(cfg, ["parse"], "sliced")["strategies"]["parse"]
        out.append({"codec": name, "seed": seed, "accuracy": block["accuracy"]["overall"],
                    "update_bytes": block["bytes_sent"]["total"]})
    return out


def codec_sweep(names: list[str], seeds: int, rounds: int, workers: int,
                first_seed: int = 0) -> list[dict[str, Any]]:
    """Per codec: accuracy difference from fp32 (mean, paired SE) and update bytes ratio."""
    from concurrent.futures import ProcessPoolExecutor

    names = ["fp32", *[n for n in names if n != "fp32"]]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        runs = [r for rs in pool.map(sweep_one, range(first_seed, first_seed + seeds), [names] * seeds,
                                     [rounds] * seeds)
                for r in rs]
    ref = {r["seed"]: r for r in runs if r["codec"] == "fp32"}
    rows = []
    for name in names:
        mine = [r for r in runs if r["codec"] == name]
        diff = _mean_se([100 * (r["accuracy"] - ref[r["seed"]]["accuracy"]) for r in mine])
        ratio = _mean_se([ref[r["seed"]]["update_bytes"] / r["update_bytes"] for r in mine])
        rows.append({"codec": name, "local_epochs": LOCAL_EPOCHS.get(name, 1), "seeds": len(mine),
                     "accuracy": statistics.fmean(r["accuracy"] for r in mine),
                     "accuracy_vs_fp32_points": diff[0], "paired_se_points": diff[1],
                     "update_bytes_vs_fp32": ratio[0], "update_mb": statistics.fmean(
                         r["update_bytes"] for r in mine) / 1e6, "runs": mine})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--startup", default="8,16,32",
                        help="fleet sizes of the start-up comparison (default %(default)s; '' skips)")
    parser.add_argument("--startup-rounds", type=int, default=3, help="rounds of the start-up trials")
    parser.add_argument("--agents", default="8,16,32", help="fleet sizes (default %(default)s; '' skips)")
    parser.add_argument("--rounds", type=int, default=8, help="rounds of the scaling trials")
    parser.add_argument("--codec-rounds", type=int, default=30, help="rounds of the codec trials")
    parser.add_argument("--codecs", default=",".join(CODECS), help="codecs (default %(default)s; '' skips)")
    parser.add_argument("--sweep-seeds", type=int, default=10,
                        help="seeds of the simulator codec sweep (default %(default)s; 0 skips)")
    parser.add_argument("--sweep-codecs", default=",".join(SWEEP),
                        help="codecs of the sweep, each paired with fp32 (default %(default)s)")
    parser.add_argument("--sweep-first-seed", type=int, default=0,
                        help="first seed of the sweep (a fresh range checks a setting chosen on others)")
    parser.add_argument("--workers", type=int, default=2, help="processes of the sweep")
    parser.add_argument("--quick", action="store_true", help="8 agents only, 4 + 8 rounds, 2 sweep seeds")
    parser.add_argument("--keep", default=None, help="keep the trial folders here")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "trial.json"))
    args = parser.parse_args(argv)
    sizes = [8] if args.quick else [int(n) for n in args.agents.split(",") if n.strip()]
    startup_sizes = [8] if args.quick else [int(n) for n in args.startup.split(",") if n.strip()]
    rounds, codec_rounds = (5, 8) if args.quick else (args.rounds, args.codec_rounds)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        startup = []
        for n in startup_sizes:
            for isolated in (False, True):
                print(f"# start-up: {n} agents, {'isolated' if isolated else 'fork server'}",
                      file=sys.stderr, flush=True)
                try:
                    startup.append(run_startup(work, n, args.startup_rounds, isolated))
                except RuntimeError as exc:
                    startup.append({"agents": n, "error": str(exc)})
        scaling = []
        for n in sizes:
            print(f"# scaling: {n} agents, {rounds} rounds", file=sys.stderr, flush=True)
            config = write_config(work, f"scale{n}", n, rounds, {"codec": "fp32"}, {"kind": "ring"})
            try:
                scaling.append(scaling_row(n, *run(config, work / f"scale{n}")))
            except RuntimeError as exc:  # reported, and the other sizes still run
                scaling.append({"agents": n, "error": str(exc)})
        codecs = []
        for name in [c for c in args.codecs.split(",") if c.strip()]:
            print(f"# codec {name}: mfeat example, {codec_rounds} rounds", file=sys.stderr, flush=True)
            epochs = LOCAL_EPOCHS.get(name, 1)
            config = write_config(work, f"codec-{name.replace('+', '').replace(' ', '')}", None,
                                  codec_rounds // epochs, CODECS[name], local_epochs=epochs)
            try:
                codecs.append(codec_row(name, run(config, config.with_suffix(""))[0]))
            except RuntimeError as exc:
                codecs.append({"codec": name, "error": str(exc)})

    sweep_seeds = 2 if args.quick else args.sweep_seeds
    sweep = []
    if sweep_seeds > 0:
        print(f"# codec sweep: simulator, {sweep_seeds} seeds", file=sys.stderr, flush=True)
        sweep = codec_sweep([c for c in args.sweep_codecs.split(",") if c.strip()], sweep_seeds,
                            codec_rounds, args.workers, args.sweep_first_seed)

    failed = [r for r in startup + scaling + codecs if "error" in r]
    startup = [r for r in startup if "error" not in r]
    scaling = [r for r in scaling if "error" not in r]
    codecs = [c for c in codecs if "error" not in c]
    base = next((c for c in codecs if c["codec"] == "fp32"), None)
    for c in codecs:
        c["bytes_vs_fp32"] = base["mb_sent"] / c["mb_sent"] if base and c["mb_sent"] else float("nan")
        c["update_bytes_vs_fp32"] = (base["mb_updates"] / c["mb_updates"] if base and c["mb_updates"]
                                     else float("nan"))
        c["accuracy_vs_fp32_points"] = 100 * (c["accuracy"] - base["accuracy"]) if base else float("nan")
    if startup:
        print_startup(startup, args.startup_rounds)
    if scaling:
        print("\n## Scaling (mfeat fou+zer, fp32, ring, one process per agent)\n")
        print(f"Per agent-round, steady rounds 2..{rounds - 2}; round 1's worst wait shows the "
              "start-up skew.\n")
        print("| agents | round s | training s | non-training s: mean (wait + other), median "
              "| round-1 wait max s | peak RSS MiB (max) | MB/round (wire) | wire / update (mean, max) "
              "| accuracy | trial s |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in scaling:
            print(f"| {r['agents']} | {r['round_s']:.2f} | {r['train_s']:.2f} | {r['non_train_s']:.2f} "
                  f"({r['wait_s']:.2f} + {r['other_s']:.2f}), {r['non_train_s_median']:.2f} "
                  f"| {r['round1_wait_s_max']:.1f} | {r['peak_rss_mb_max']:.0f} "
                  f"| {r['mb_wire_per_round']:.2f} | {r['wire_over_update_mean']:.2f}, "
                  f"{r['wire_over_update_max']:.2f} | {r['accuracy']:.3f} | {r['trial_wall_s']:.0f} |")
    if codecs:
        print(f"\n## Codecs (mfeat example, parse, {codec_rounds} rounds; x2 rows "
              f"{codec_rounds // 2} rounds x 2 local epochs)\n")
        print("| codec | accuracy | vs fp32 (points) | MB sent (all topics) | x fewer | MB of updates "
              "| x fewer | update kB | wire / update |")
        print("|---|---|---|---|---|---|---|---|---|")
        for c in codecs:
            print(f"| {c['codec']} | {c['accuracy']:.3f} | {c['accuracy_vs_fp32_points']:+.1f} | "
                  f"{c['mb_sent']:.2f} | {c['bytes_vs_fp32']:.1f} | {c['mb_updates']:.2f} | "
                  f"{c['update_bytes_vs_fp32']:.1f} | {c['update_kb_mean']:.1f} | "
                  f"{c['wire_over_update_mean']:.2f} |")
    if sweep:
        print(f"\n## Codec sweep (simulator, mfeat example, parse, {codec_rounds} local epochs, "
              f"seeds {args.sweep_first_seed}-{args.sweep_first_seed + sweep_seeds - 1}, paired with "
              f"fp32 {codec_rounds} x 1)\n")
        print("| codec | local epochs per exchange | accuracy | vs fp32 (points, paired SE) "
              "| update MB | x fewer update bytes |")
        print("|---|---|---|---|---|---|")
        for c in sweep:
            print(f"| {c['codec']} | {c['local_epochs']} | {c['accuracy']:.3f} | "
                  f"{c['accuracy_vs_fp32_points']:+.2f} ± {c['paired_se_points']:.2f} | "
                  f"{c['update_mb']:.3f} | {c['update_bytes_vs_fp32']:.1f} |")
    for r in failed:
        print(f"\nFAILED: {r['error']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = json.loads(out.read_text()) if out.exists() else {}
    if startup_sizes:
        doc.update(startup=startup, startup_rounds=args.startup_rounds)
    if sizes:
        doc.update(scaling=scaling, rounds=rounds)
    if args.codecs.strip():
        doc.update(codecs=codecs, codec_rounds=codec_rounds)
    if sweep:
        doc.update(codec_sweep=sweep)
    doc["failed"] = failed
    out.write_text(json.dumps(doc, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
