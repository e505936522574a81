"""Virtual-field benchmark: a 16-board field in 2 sites beside the same fleet on plain loopback.

1. field: `parse-edge trial FIELD.yaml` on a field of 16 boards (2 sites of 8, every board a
   network namespace with its own 2000 kbit/s link, the sites' Mosquittos bridged over a
   4000 kbit/s backhaul), every board bundled and flashed over SSH and run by its supervisor:
   seconds per round (median over rounds of the time from the last agent's row of one round to
   the last agent's row of the next), and per board the bytes its eth0 counted beside the MQTT
   layer's;
2. loopback: the same fleet config and seed as a plain trial (`parse-edge trial`, one process
   per agent from the fork server, Mosquitto on 127.0.0.1:1883): the same numbers, and the
   field / loopback ratio of seconds per round;
3. accuracy: the field trial's per-agent accuracy beside `parse-edge simulate`'s on the same
   config and seed (no link drops anything: the mix coverage must be 100 %).

    sudo python bench/field.py [--boards 16] [--rounds 6] [--out bench/results/field.json]

Needs root (namespaces), Mosquitto on 127.0.0.1:1883 for the loopback run, sshd and nft.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge.config.load import load_config  # noqa: E402
from edge.trial.field import run_field_trial  # noqa: E402
from edge.trial.runner import TrialOptions, run_trial  # noqa: E402

DEFAULT_OUT = REPO / "bench" / "results" / "field.json"
LOOPBACK_BROKER = "mqtt://127.0.0.1:1883"


def write_fleet(folder: Path, n_boards: int, rounds: int) -> Path:
    """A synthetic-pid fleet: half bimodal, half one modality, on a chordal ring."""
    doc = {"fleet": f"bench-field-{int(time.time())}",
           "data": {"dataset": "synthetic-pid",
                    "synthetic": {"modalities": ["a", "b"], "n_samples": 4000, "dim": 8}},
           "agents": {"count": n_boards, "multimodal_fraction": 0.5},
           "topology": {"kind": "chordal-ring", "chords": [1, 3]},
           "training": {"rounds": rounds, "local_epochs": 2, "batch_size": 32, "seed": 0},
           # Generous: on 2 shared cores 16 agents train slowly; no update may miss its round.
           "comm": {"deadline_s": 60},
           "broker": {"url": LOOPBACK_BROKER}}
    path = folder / "fleet.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def write_field(folder: Path, n_boards: int) -> Path:
    """Two sites of n/2 boards, 2000 kbit/s per board, 4000 kbit/s backhaul, no loss."""
    ids = [f"a{i}" for i in range(n_boards)]
    half = n_boards // 2
    doc = {"field": "benchfld", "fleet": "fleet.yaml", "subnet": "10.213.0.0/16",
           "prefixes": str(folder / "prefixes"),
           "links": {"default": {"rate_kbit": 2000}}, "backhaul": {"rate_kbit": 4000},
           "sites": {"east": {"boards": ids[:half]}, "west": {"boards": ids[half:]}}}
    path = folder / "field.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def round_seconds(rows: list[dict[str, Any]]) -> float:
    """Median seconds between the last rows of consecutive rounds (the fleet's round time)."""
    last: dict[int, float] = {}
    for row in rows:
        t = datetime.fromisoformat(str(row["time_utc"]).replace("Z", "+00:00")).timestamp()
        last[int(row["round"])] = max(last.get(int(row["round"]), 0.0), t)
    ordered = [last[r] for r in sorted(last)]
    gaps = [b - a for a, b in itertools.pairwise(ordered)]
    return statistics.median(gaps) if gaps else float("nan")


def _rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]


def summarise(summary: dict[str, Any], rows: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    """Status, round time, accuracy, and MQTT bytes per agent of one trial."""
    block = summary["strategies"][summary["trial"]["strategy"]]
    agents = block["agents"]
    return {"status": summary["trial"]["status"], "wall_s": wall_s,
            "round_s": round_seconds(rows), "accuracy": block["accuracy"]["overall"],
            "per_agent_accuracy": block["accuracy"]["per_agent"],
            "mix_coverage": summary["trial"]["mix_coverage"]["overall"],
            "mqtt_bytes_per_agent": {a: {"sent": v["bytes"]["sent"], "received": v["bytes"]["received"]}
                                     for a, v in agents.items()}}


def main(argv: list[str] | None = None) -> int:
    """Run the three parts, print a table, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boards", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"boards": args.boards, "rounds": args.rounds, "sites": 2}
    with tempfile.TemporaryDirectory(prefix="bench-field-") as tmp:
        work = Path(tmp)
        fleet = write_fleet(work, args.boards, args.rounds)
        field_file = write_field(work, args.boards)
        cfg = load_config(fleet)

        t0 = time.monotonic()
        field_out = work / "field-run"
        result = run_field_trial(str(field_file), TrialOptions(out=field_out, plots=False),
                                 progress=lambda line: print(line, flush=True))
        field_wall = time.monotonic() - t0
        field_sum = json.loads((field_out / "summary.json").read_text())
        results["field"] = summarise(field_sum, _rows(field_out), field_wall)
        results["field"]["exit_code"] = result.exit_code
        results["field"]["boards"] = {
            b: {"site": v["site"], "eth0": v["interface"], "mqtt": v["mqtt"],
                "tx_overhead_ratio": (v.get("tx") or {}).get("overhead_ratio"),
                "rx_overhead_ratio": (v.get("rx") or {}).get("overhead_ratio")}
            for b, v in field_sum["trial"]["field"]["boards"].items()}
        results["field"]["startup_s"] = field_sum["trial"]["startup"].get("all_running_s")

        t0 = time.monotonic()
        loop_out = work / "loopback-run"
        loop = run_trial(cfg, TrialOptions(out=loop_out, config_path=str(fleet), plots=False,
                                           broker=LOOPBACK_BROKER),
                         progress=lambda line: None)
        loop_wall = time.monotonic() - t0
        loop_sum = json.loads((loop_out / "summary.json").read_text())
        results["loopback"] = summarise(loop_sum, _rows(loop_out), loop_wall)
        results["loopback"]["exit_code"] = loop.exit_code

        from edge.learning.simulate import simulate_fleet

        t0 = time.monotonic()
        simulated = simulate_fleet(cfg, [cfg.strategy], cfg.model.arch)["strategies"][cfg.strategy]
        results["simulate"] = {"accuracy": simulated["accuracy"]["overall"],
                               "per_agent_accuracy": simulated["accuracy"]["per_agent"],
                               "wall_s": time.monotonic() - t0}
    f, lo, sim = results["field"], results["loopback"], results["simulate"]
    diffs = [abs(f["per_agent_accuracy"][a] - acc) for a, acc in sim["per_agent_accuracy"].items()]
    results["accuracy_max_abs_diff_field_vs_simulate"] = max(diffs)
    results["round_s_ratio_field_over_loopback"] = f["round_s"] / lo["round_s"]
    eth0_tx = [b["eth0"]["tx_bytes"] for b in f["boards"].values() if b["eth0"]]
    mqtt_tx = [b["mqtt"]["sent_bytes"] for b in f["boards"].values() if b["mqtt"]]
    results["field"]["mean_eth0_tx_bytes_per_board"] = statistics.mean(eth0_tx)
    results["field"]["mean_mqtt_sent_bytes_per_board"] = statistics.mean(mqtt_tx)

    print(f"\n{'run':10} {'status':10} {'wall s':>8} {'s/round':>8} {'accuracy':>9} {'coverage':>9}")
    for name, r in (("field", f), ("loopback", lo)):
        print(f"{name:10} {r['status']:10} {r['wall_s']:8.1f} {r['round_s']:8.2f} "
              f"{r['accuracy']:9.4f} {r['mix_coverage']:9.3f}")
    print(f"{'simulate':10} {'-':10} {sim['wall_s']:8.1f} {'-':>8} {sim['accuracy']:9.4f}")
    print(f"\nfield / loopback seconds per round: {results['round_s_ratio_field_over_loopback']:.2f}; "
          f"max |field - simulate| per-agent accuracy: "
          f"{results['accuracy_max_abs_diff_field_vs_simulate']:.4f}")
    print(f"\n{'board':6} {'site':5} {'eth0 tx MB':>10} {'MQTT sent MB':>12} {'tx/MQTT':>8} "
          f"{'eth0 rx MB':>10} {'MQTT recv MB':>12} {'rx/MQTT':>8}")
    for b, v in f["boards"].items():
        e, m = v["eth0"] or {}, v["mqtt"] or {}
        print(f"{b:6} {v['site']:5} {e.get('tx_bytes', 0) / 1e6:10.3f} "
              f"{m.get('sent_bytes', 0) / 1e6:12.3f} {v['tx_overhead_ratio'] or 0:8.3f} "
              f"{e.get('rx_bytes', 0) / 1e6:10.3f} {m.get('received_bytes', 0) / 1e6:12.3f} "
              f"{v['rx_overhead_ratio'] or 0:8.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=float))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
