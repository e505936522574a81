"""Energy of one field trial, run twice: on a quiet machine and beside extra CPU load.

The trial is the built-in basic-motions example (8 agent processes, embedded broker, profile
estimate on rpi4 boards). The second run shares the machine with one busy-looping Python process
per core (`while True: pass`, started before the trial and killed after it), so every agent waits
longer for a core: wall time, and with it the idle baseline (idle power x wall seconds), grows;
the attributable energy (compute: the agents' own CPU seconds scaled to the board; radio: bytes
x J/B) should not. Issue 11's target: attributable energy of the two runs within 15%.

    python bench/energy.py [--rounds 12] [--out bench/results/energy.json]

Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge.config.load import load_config  # noqa: E402
from edge.trial.runner import TrialOptions, run_trial  # noqa: E402

DEFAULT_OUT = REPO / "bench" / "results" / "energy.json"
MAX_RATIO = 1.15  # issue 11: attributable energy within 15% with and without extra load
BUSY = "while True:\n    pass\n"


def run_once(rounds: int, load_processes: int, out: Path) -> dict[str, Any]:
    """One trial of the built-in example, with `load_processes` busy loops beside it."""
    busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(load_processes)]
    try:
        cfg = load_config(None)
        started = time.monotonic()
        result = run_trial(cfg, TrialOptions(out=out, rounds=rounds, plots=False, force=True))
        wall_s = time.monotonic() - started
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    block = result.summary["strategies"][result.summary["trial"]["strategy"]]
    agents = block["agents"]

    def total(key: str) -> float:
        return float(sum(a.get(key) or 0.0 for a in agents.values()))

    return {"status": result.status, "load_processes": load_processes, "wall_s": wall_s,
            "accuracy": block["accuracy"]["overall"], "energy_j": total("energy_j"),
            "idle_j": total("idle_j"), "compute_j": total("compute_j"),
            "radio_j": total("radio_j"), "attributable_j": total("attributable_j"),
            "cpu_s": total("cpu_s"), "sources": sorted({str(a["energy_source"])
                                                        for a in agents.values()})}


def main() -> int:
    """Run both conditions side by side, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        quiet = run_once(args.rounds, 0, Path(tmp) / "quiet")
        loaded = run_once(args.rounds, cores, Path(tmp) / "loaded")
    ratio = loaded["attributable_j"] / quiet["attributable_j"]
    print("| run | busy loops | wall s | agents' CPU s | idle J | compute J | radio J | "
          "attributable J | total J | accuracy |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in (("quiet", quiet), ("loaded", loaded)):
        print(f"| {name} | {r['load_processes']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
              f"{r['idle_j']:.1f} | {r['compute_j']:.1f} | {r['radio_j']:.2f} | "
              f"{r['attributable_j']:.1f} | {r['energy_j']:.1f} | {r['accuracy']:.3f} |")
    verdict = "within" if max(ratio, 1 / ratio) <= MAX_RATIO else "NOT within"
    print(f"attributable energy loaded / quiet: {ratio:.3f} ({verdict} 15%); idle baseline "
          f"loaded / quiet: {loaded['idle_j'] / quiet['idle_j']:.2f}; sources {quiet['sources']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"quiet": quiet, "loaded": loaded,
                                    "attributable_ratio": ratio, "cores": cores}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
