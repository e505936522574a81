"""Field-trial benchmark: real agent processes on this machine, through the embedded broker.

1. start-up: 8, 16 and 32 agents started from the fork server and as isolated interpreters,
   side by side: seconds from the first process started (the fork server, or the first agent)
   until every agent runs round 0, and each agent's peak unique memory (USS) beside its RSS and
   PSS, in MiB. Each trial is a `parse-edge trial` process of its own, so every fork-server run
   pays for its server's imports (a cold start);
2. scaling: 8, 16 and 32 agents (one process each) on mfeat: wall seconds per round split into
   training and everything else, peak RSS per agent process, MB per round, and bytes on the wire
   per agent-round as a multiple of that agent's encoded update;
3. accuracy versus bytes for parse with codecs fp32 / fp16 / int8 / topk+EF on mfeat (the
   example fleet: 12 agents, fou + zer, Dirichlet 0.5), side by side in one run.

    python bench/trial.py [--startup 8,16,32] [--agents 8,16,32] [--rounds 6] [--codec-rounds 30]
                          [--quick] [--out bench/results/trial.json]

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

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge.config.load import load_config  # noqa: E402
from edge.trial.runner import TrialOptions, run_trial  # noqa: E402

MFEAT = REPO / "edge" / "examples" / "mfeat.yaml"
CODECS = {"fp32": {"codec": "fp32"}, "fp16": {"codec": "fp16"}, "int8": {"codec": "int8"},
          # Top-k deltas against the copy receivers hold (error feedback), keyframes only on
          # first contact or request, sent as int8 (topk's damped consensus step by default):
          # the low-bandwidth setting.
          "topk+EF": {"codec": "topk", "topk_fraction": 0.02, "error_feedback": True,
                      "keyframe_every": 0, "keyframe_codec": "int8"},
          # The config default: an fp32 keyframe every 10 rounds, which dominates the bytes.
          "topk+EF-kf10": {"codec": "topk", "topk_fraction": 0.02, "error_feedback": True}}


def write_config(folder: Path, name: str, agents: int | None, rounds: int, comm: dict,
                 topology: dict | None = None) -> Path:
    """The mfeat example with another agent count, round count, codec (and topology)."""
    doc = yaml.safe_load(MFEAT.read_text())
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


def run(config: Path, out: Path) -> tuple[dict, list[dict]]:
    """One trial; its summary and metrics rows."""
    result = run_trial(load_config(config), TrialOptions(out=out, config_path=str(config)))
    if result.exit_code != 0:
        raise RuntimeError(f"trial {config.name} {result.status}: {result.summary['trial']['reason']} "
                           f"failed agents {result.failed_agents}; record in {out}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return result.summary, rows


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def scaling_row(n_agents: int, summary: dict, rows: list[dict]) -> dict:
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


def startup_row(n_agents: int, mode: str, summary: dict, wall_s: float) -> dict:
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


def run_startup(work: Path, n_agents: int, rounds: int, isolated: bool) -> dict:
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


def print_startup(rows: list[dict], rounds: int) -> None:
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


def update_bytes_sent(agent: dict) -> float:
    """Bytes of branch updates an agent sent (update topics only, MQTT headers included)."""
    return sum(float(b.get("sent_bytes", 0)) for b in agent["bytes"]["per_branch"].values())


def codec_row(name: str, summary: dict) -> dict:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--startup", default="8,16,32",
                        help="fleet sizes of the start-up comparison (default %(default)s; '' skips)")
    parser.add_argument("--startup-rounds", type=int, default=3, help="rounds of the start-up trials")
    parser.add_argument("--agents", default="8,16,32", help="fleet sizes (default %(default)s; '' skips)")
    parser.add_argument("--rounds", type=int, default=8, help="rounds of the scaling trials")
    parser.add_argument("--codec-rounds", type=int, default=30, help="rounds of the codec trials")
    parser.add_argument("--codecs", default=",".join(CODECS), help="codecs (default %(default)s; '' skips)")
    parser.add_argument("--quick", action="store_true", help="8 agents only, 4 + 8 rounds")
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
            config = write_config(work, f"codec-{name.replace('+', '')}", None, codec_rounds, CODECS[name])
            try:
                codecs.append(codec_row(name, run(config, work / f"codec-{name.replace('+', '')}")[0]))
            except RuntimeError as exc:
                codecs.append({"codec": name, "error": str(exc)})

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
        print(f"\n## Codecs (mfeat example, parse, {codec_rounds} rounds)\n")
        print("| codec | accuracy | vs fp32 (points) | MB sent (all topics) | x fewer | MB of updates "
              "| x fewer | update kB | wire / update |")
        print("|---|---|---|---|---|---|---|---|---|")
        for c in codecs:
            print(f"| {c['codec']} | {c['accuracy']:.3f} | {c['accuracy_vs_fp32_points']:+.1f} | "
                  f"{c['mb_sent']:.2f} | {c['bytes_vs_fp32']:.1f} | {c['mb_updates']:.2f} | "
                  f"{c['update_bytes_vs_fp32']:.1f} | {c['update_kb_mean']:.1f} | "
                  f"{c['wire_over_update_mean']:.2f} |")
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
    doc["failed"] = failed
    out.write_text(json.dumps(doc, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
