"""PID estimator benchmark: accuracy on planted structure, what discretisation costs, and the
wall time of `parse-edge pid` on the mfeat example (not a test).

    python bench/pid.py [--out bench/results/pid.json]

1. synthetic-pid, every (redundant, unique, synergy) permutation of (0, 1, 2) bits, noise 0.2:
   each BROJA atom against the planted bits, k = 8 clusters (enough for the 3 bits a modality
   shows);
2. discretisation cost on (1, 1, 1), at noise 0.2 and 0.5: I(Y; A, B) estimated with k = 2, 4,
   8, 16, 32 clusters against the 4 planted bits — too few clusters cut information off, many
   clusters on few samples inflate it (plug-in bias, which lands on synergy);
3. `parse-edge pid` on examples/mfeat.yaml in each mode, as a subprocess (imports included).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge.config.schema import SyntheticConfig  # noqa: E402
from edge.data.synthetic import synthetic_pool  # noqa: E402
from edge.learning.pid import assign, bootstrap_pid, joint_counts, kmeans, planted_pid  # noqa: E402

SETTINGS = [(2, 1, 0), (0, 1, 2), (1, 0, 2), (2, 0, 1), (1, 2, 0), (0, 2, 1), (1, 1, 1)]


def estimate(bits: tuple[int, int, int], k: int, noise: float, n: int, draws: int) -> dict[str, Any]:
    """The estimate for one planted setting."""
    r, u, s = bits
    pool = synthetic_pool(SyntheticConfig(n_samples=n, dim=16, redundant_bits=r, unique_bits=u,
                                          synergy_bits=s, noise=noise), 0)
    labels = {m: assign(pool.x[m], kmeans(pool.x[m], k, 0)) for m in ("a", "b")}
    table = joint_counts(labels["a"], labels["b"], pool.y, (k, k, pool.n_classes))
    est = bootstrap_pid(table, draws, 0)
    truth = planted_pid(r, u, s, True)
    errors = {a: getattr(est.point, a) - getattr(truth, a) for a in truth.as_dict()}
    return {"planted_bits": bits, "k": k, "noise": noise, "n": n, **est.as_dict(),
            "planted": truth.as_dict(), "error": errors,
            "max_abs_error": max(abs(e) for e in errors.values())}


def timed_cli(args: list[str]) -> dict[str, Any]:
    """Wall seconds of one `parse-edge pid` subprocess."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edge", "pid", *args], capture_output=True,
                          text=True, check=False)
    wall = time.perf_counter() - started
    return {"args": args, "wall_s": wall, "exit": proc.returncode, "stdout": proc.stdout}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "pid.json"))
    args = parser.parse_args()
    planted = [estimate(b, 8, 0.2, 1000, 10) for b in SETTINGS]
    print("## Planted structure (synthetic-pid, n = 1000, noise 0.2, k = 8, 10 bootstrap draws)\n")
    print("| planted R, U_a, U_b, S | R | U_a | U_b | S | max abs error |")
    print("|---|---|---|---|---|---|")
    for row in planted:
        p = row["bits"]
        print(f"| {tuple(row['planted'].values())} | {p['redundancy']:.3f} | {p['unique_a']:.3f} | "
              f"{p['unique_b']:.3f} | {p['synergy']:.3f} | {row['max_abs_error']:.3f} |")
    cost = [estimate((1, 1, 1), k, noise, n, 0) for noise in (0.2, 0.5) for n in (300, 3000)
            for k in (2, 4, 8, 16, 32)]
    print("\n## Discretisation cost (1, 1, 1): 4 planted bits of I(Y; A, B)\n")
    print("| noise | n | k | I(Y;A,B) | R | U_a | U_b | S |")
    print("|---|---|---|---|---|---|---|---|")
    for row in cost:
        p = row["bits"]
        print(f"| {row['noise']} | {row['n']} | {row['k']} | {row['total_bits']:.3f} | "
              f"{p['redundancy']:.3f} | {p['unique_a']:.3f} | {p['unique_b']:.3f} | {p['synergy']:.3f} |")
    mfeat = str(REPO / "edge" / "examples" / "mfeat.yaml")
    runs = [timed_cli([mfeat]), timed_cli([mfeat, "--pooled"]), timed_cli([mfeat, "--agent", "a2"])]
    print("\n## `parse-edge pid` on examples/mfeat.yaml (k = 10, 20 bootstrap draws)\n")
    print("| mode | wall s | exit | under 120 s |")
    print("|---|---|---|---|")
    for run in runs:
        mode = " ".join(run["args"][1:]) or "fleet (gossip)"
        print(f"| {mode} | {run['wall_s']:.1f} | {run['exit']} | {run['wall_s'] < 120} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"planted": planted, "discretisation": cost, "cli": runs}, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
