"""Batch-1 inference: torch eager vs onnxruntime fp32 / int8, cold start and RSS of the runtime."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from edge.learning.checkpoint import Checkpoint

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "results" / "inference.json"
TARGETS = {"ort_fp32_speedup_min": 3.0, "runtime_peak_rss_mb_max": 120.0, "cold_start_s_max": 1.0}

# The runtime process measured for cold start and RSS: what a board runs, nothing else.
RUNTIME_CHILD = """
import sys, time, json
t_import = time.perf_counter()
import numpy as np
from devices.runtime import Predictor
bundle, npz, precision = sys.argv[1], sys.argv[2], sys.argv[3]
with np.load(npz) as data:
    x = {k: data[k] for k in data.files}
pred = Predictor(bundle, precision=precision).predict(x)
t_done = time.perf_counter()
peak_kb = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
print(json.dumps({"label": pred.labels[0], "peak_rss_mb": peak_kb / 1024,
                  "in_process_s": t_done - t_import, "torch_loaded": "torch" in sys.modules}))
"""


def make_checkpoint(config: str, workdir: Path) -> Path:
    """Train one round of `config` with checkpoints and return a multimodal agent's checkpoint."""
    out = workdir / "sim"
    subprocess.run([sys.executable, "-m", "edge", "simulate", config, "--rounds", "1",
                    "--save-checkpoints", "--quiet", "--out", str(out)], check=True,
                   stdout=subprocess.DEVNULL)
    from edge.learning.checkpoint import load_checkpoint

    candidates = sorted(out.glob("agents/*/checkpoint.pt"))
    for path in candidates:
        if len(load_checkpoint(path).modalities) > 1:
            return path
    return candidates[0]


def export_bundle(checkpoint: Path, bundle: Path) -> tuple[Checkpoint, float]:
    """Export with int8 through the same path as `parse-edge export`; returns (ck, seconds)."""
    from edge.learning.checkpoint import load_checkpoint
    from edge.learning.export import export_checkpoint

    ck = load_checkpoint(checkpoint)
    t0 = time.perf_counter()
    export_checkpoint(ck, bundle, quantize="int8")
    return ck, time.perf_counter() - t0


def time_calls(fn: Callable[[], Any], n: int) -> list[float]:
    """Wall seconds of `n` consecutive calls."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def latency(ck: Checkpoint, bundle: Path, iters: int, blocks: int) -> dict[str, dict[str, float]]:
    """p50/p99 per variant; variants run in interleaved blocks so drift hits them alike."""
    import onnxruntime as ort
    import torch

    from devices.runtime import Predictor
    from exporters.manifest import load_manifest, subset_key
    from exporters.norm import apply_norm

    torch.set_num_threads(1)  # onnxruntime sessions below are single-threaded too
    manifest = load_manifest(bundle)
    key = subset_key(ck.modalities, manifest.modalities)
    raw = {m: np.asarray(ck.examples["x"][m][:1], dtype=np.float32) for m in ck.modalities}
    xn = {m: apply_norm(raw[m], manifest.norm[m]) for m in ck.modalities}
    xt = {m: torch.from_numpy(x) for m, x in xn.items()}

    def session(precision: str) -> Callable[[], Any]:
        entry = manifest.graph(manifest.serves[key][precision])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(bundle / entry.file), opts,
                                    providers=["CPUExecutionProvider"])
        return lambda: sess.run(None, xn)

    def eager() -> Any:
        with torch.no_grad():
            return ck.model(xt)

    predictors = {p: Predictor(bundle, precision=p) for p in ("fp32", "int8")}
    variants: dict[str, Callable[[], Any]] = {
        "torch eager": eager,
        "ort fp32": session("fp32"),
        "ort int8": session("int8"),
        "Predictor fp32 (end to end)": lambda: predictors["fp32"].predict(raw),
        "Predictor int8 (end to end)": lambda: predictors["int8"].predict(raw),
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():
        time_calls(fn, 50)  # warm-up: allocator, lazy init
    for _ in range(blocks):
        for name, fn in variants.items():
            samples[name] += time_calls(fn, iters // blocks)
    return {name: {"p50_ms": 1e3 * float(np.percentile(s, 50)),
                   "p99_ms": 1e3 * float(np.percentile(s, 99)), "calls": len(s)}
            for name, s in samples.items()}


def cold_start(bundle: Path, npz: Path, precision: str, runs: int) -> dict[str, Any]:
    """Process start to first prediction, median over `runs` fresh processes."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    walls, rows = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", RUNTIME_CHILD, str(bundle), str(npz),
                               precision], capture_output=True, text=True, env=env, check=True)
        walls.append(time.perf_counter() - t0)
        rows.append(json.loads(proc.stdout))
    cli_walls = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "edge", "infer", str(bundle), str(npz),
                        "--precision", precision], capture_output=True, check=True, env=env)
        cli_walls.append(time.perf_counter() - t0)
    return {"cold_start_s": statistics.median(walls),
            "cli_cold_start_s": statistics.median(cli_walls),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rows),
            "torch_loaded": any(r["torch_loaded"] for r in rows)}


def sizes(bundle: Path, checkpoint: Path) -> dict[str, float]:
    """Bytes of the served graphs, the whole bundle and the source checkpoint, in KB."""
    from exporters.manifest import load_manifest

    manifest = load_manifest(bundle)
    full = max(manifest.serves, key=lambda k: len(k.split("+")))
    kb = {p: manifest.graph(manifest.serves[full][p]).size_bytes / 1024 for p in ("fp32", "int8")}
    return {"fused_fp32_kb": kb["fp32"], "fused_int8_kb": kb["int8"],
            "bundle_kb": sum(g.size_bytes for g in manifest.graphs) / 1024,
            "checkpoint_kb": checkpoint.stat().st_size / 1024}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="agent checkpoint (default: train basic-motions for one round)")
    parser.add_argument("--config", default=str(REPO / "edge/examples/basic-motions.yaml"))
    parser.add_argument("--iters", type=int, default=2000, help="timed calls per variant")
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--cold-runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        checkpoint = args.checkpoint or make_checkpoint(args.config, work)
        bundle = work / "bundle"
        ck, export_s = export_bundle(checkpoint, bundle)
        npz = work / "one.npz"
        arrays = {m: np.asarray(ck.examples["x"][m][:1]) for m in ck.modalities}
        # allow_pickle at its default, spelled out: mypy cannot tell that no key of **arrays is it.
        np.savez(npz, allow_pickle=True, **arrays)
        lat = latency(ck, bundle, args.iters, args.blocks)
        cold = {p: cold_start(bundle, npz, p, args.cold_runs) for p in ("fp32", "int8")}
        size = sizes(bundle, checkpoint)

    eager = lat["torch eager"]["p50_ms"]
    result: dict[str, Any] = {
        "agent": ck.agent_id, "modalities": list(ck.modalities),
        "checkpoint": str(checkpoint) if args.checkpoint else f"{args.config} (1 round)",
        "export_s": export_s, "latency_batch1": lat,
        "speedup_vs_torch_eager": {k: eager / v["p50_ms"] for k, v in lat.items()},
        "cold_start": cold, "sizes": size, "targets": TARGETS,
        "threads": 1, "cpu_count": os.cpu_count(),
    }
    ok = {
        "ort fp32 >= 3x torch eager": result["speedup_vs_torch_eager"]["ort fp32"] >= 3.0,
        "runtime peak RSS <= 120 MB": max(c["peak_rss_mb"] for c in cold.values()) <= 120.0,
        "cold start < 1 s": max(c["cold_start_s"] for c in cold.values()) < 1.0,
    }
    result["targets_met"] = ok
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"## Inference, agent {ck.agent_id} ({'+'.join(ck.modalities)}), batch 1, 1 thread\n")
    print("| variant | p50 ms | p99 ms | speedup vs torch eager (p50) |")
    print("|---|---:|---:|---:|")
    for name, row in lat.items():
        print(f"| {name} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} | "
              f"{result['speedup_vs_torch_eager'][name]:.1f}x |")
    print("\n| runtime process | cold start s (Predictor) | cold start s (`parse-edge infer`) "
          "| peak RSS MB | torch loaded |")
    print("|---|---:|---:|---:|---|")
    for p, c in cold.items():
        print(f"| {p} | {c['cold_start_s']:.3f} | {c['cli_cold_start_s']:.3f} | "
              f"{c['peak_rss_mb']:.1f} | {c['torch_loaded']} |")
    print(f"\nsizes: fused fp32 {size['fused_fp32_kb']:.1f} KB, fused int8 "
          f"{size['fused_int8_kb']:.1f} KB, whole bundle {size['bundle_kb']:.1f} KB, "
          f"checkpoint {size['checkpoint_kb']:.1f} KB; export (all graphs, fp32 + int8) took "
          f"{export_s:.1f} s")
    print("targets: " + ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in ok.items()))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
