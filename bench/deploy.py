"""Deploy benchmark: bundle sizes, flash time per board, a fleet sequential vs parallel.

Bundle sizes (train / infer, with and without a wheelhouse), flash time per board, and 8 local
sshd "boards" flashed one after another beside the same 8 flashed in parallel (ratio).

Boards are real sshd processes on 127.0.0.1 with throw-away keys (tests/deploy_support.py); the
board interpreter carries the heavy packages in its system site-packages (as JetPack's Python does
on a Jetson), so train releases are made `--system-site-packages`; the infer release installs
offline from the wheelhouse in its bundle. Wheelhouses are `pip download`ed from this machine's
local package sources (no network). Writes bench/results/deploy.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TypedDict

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devices.board import supervisor  # noqa: E402
from devices.bundle import BundleSpec, Role, TargetPlatform, write_bundle  # noqa: E402
from devices.flash import Board, flash  # noqa: E402
from devices.fleet import flash_fleet, table  # noqa: E402
from devices.inventory import Inventory, parse_inventory  # noqa: E402
from devices.wheel import build_wheel  # noqa: E402
from tests.deploy_support import Sshd, board_python, local_wheelhouse  # noqa: E402

DEFAULT_OUT = REPO / "bench" / "results" / "deploy.json"
PY = f"{sys.version_info[0]}.{sys.version_info[1]}"
INFER_REQS = ["numpy>=1.24", "onnxruntime>=1.18", "pyyaml>=6", "paho-mqtt>=2,<3", "msgspec>=0.18"]
TRAIN_REQS = ["torch==2.13.0", "onnx>=1.16", "onnxruntime>=1.18", "onnxscript>=0.2",
              "paho-mqtt>=2,<3", "pyyaml>=6", "psutil>=5.9", "numpy>=1.24", "amqtt>=0.11"]


class BundleSize(TypedDict):
    """One bundle of the size table."""

    bytes: int
    files: int
    write_s: float


class FleetTiming(TypedDict):
    """One way of flashing the fleet (sequential or parallel)."""

    wall_s: float
    per_board_s: list[float]


def config(fleet: str, rounds: int) -> str:
    """Return a small synthetic fleet config whose agents finish `rounds` rounds and exit."""
    return (f"fleet: {fleet}\ndata: {{dataset: synthetic-pid, synthetic: {{modalities: [a, b], "
            f"n_samples: 400, dim: 8}}}}\nagents: {{count: 8}}\ntopology: {{kind: ring}}\n"
            f"training: {{rounds: {rounds}}}\ncomm: {{deadline_s: 1}}\n"
            "broker: {url: 'mqtt://127.0.0.1:1883'}\n")


def spec(agent: str, role: Role, wheel: Path, fleet: str, **kw: Any) -> BundleSpec:
    """Describe a bundle for this machine's platform."""
    return BundleSpec(agent=agent, role=role, version="0.1.0", fleet=fleet,
                      config_text=config(fleet, 2), wheel=wheel,
                      target=TargetPlatform(platform.machine(), PY), **kw)


def main() -> int:
    """Run the benchmark, print the tables, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boards", type=int, default=8)
    parser.add_argument("--health-s", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    fleet = f"bench{int(time.time())}"
    results: dict[str, Any] = {"boards": args.boards, "health_s": args.health_s}
    with tempfile.TemporaryDirectory(prefix="parse-edge-bench-") as tmp:
        root = Path(tmp)
        wheel = build_wheel(root / "wheel")
        from tests.exporters_toy import toy_bundle

        export = toy_bundle("mlp", ("accel", "gyro")).dir
        infer_wh = local_wheelhouse(root / "wh-infer", INFER_REQS)
        train_wh = local_wheelhouse(root / "wh-train", TRAIN_REQS)
        sizes: dict[str, BundleSize] = {}
        for name, s in {
            "train (board packages)": spec("a0", Role.TRAIN, wheel, fleet),
            "train + wheelhouse": spec("a0", Role.TRAIN, wheel, fleet, wheelhouse=train_wh),
            "infer (board packages)": spec("a0", Role.INFER, wheel, fleet, export_dir=export),
            "infer + wheelhouse": spec("a0", Role.INFER, wheel, fleet, export_dir=export,
                                       wheelhouse=infer_wh),
        }.items():
            started = time.perf_counter()
            info = write_bundle(s, root / "bundles" / f"{len(sizes)}.tar.gz")
            sizes[name] = {"bytes": info.size_bytes, "files": info.n_files,
                           "write_s": time.perf_counter() - started}
        results["bundle_sizes"] = sizes
        print(table(["bundle", "MB", "files", "write s"],
                    [(k, f"{v['bytes'] / 1e6:.2f}", v["files"], f"{v['write_s']:.1f}")
                     for k, v in sizes.items()]))

        py = str(board_python(root / "boardpy"))
        boards = [Sshd(root / "sshd0")]
        boards += [Sshd(root / f"sshd{i}", boards[0].client_key) for i in range(1, args.boards)]
        prefixes: list[Path] = []
        try:
            results.update(run_flashes(root, boards, py, wheel, export, infer_wh, fleet, args,
                                       prefixes))
        finally:
            for prefix in prefixes:
                supervisor.stop(prefix / "run")
            for sshd in boards:
                sshd.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 0


def run_flashes(root: Path, boards: list[Sshd], py: str, wheel: Path, export: Path,
                infer_wh: Path, fleet: str, args: argparse.Namespace,
                prefixes: list[Path]) -> dict[str, Any]:
    """Single-board flash times, then the fleet sequentially and in parallel."""
    quiet = lambda line: None  # noqa: E731
    out: dict[str, Any] = {}
    bundles = {f"a{i}": write_bundle(spec(f"a{i}", Role.TRAIN, wheel, fleet),
                                     root / "fleet" / f"a{i}.tar.gz").path
               for i in range(len(boards))}
    infer = write_bundle(spec("a0", Role.INFER, wheel, fleet, export_dir=export,
                              wheelhouse=infer_wh), root / "infer.tar.gz").path
    single: dict[str, float] = {}
    sshd = boards[0]
    prefix = root / "single"
    prefixes.append(prefix)
    board = Board("a0", sshd.target, str(prefix), py)
    single["train install + start"] = flash(bundles["a0"], board, sshd.options(),
                                            health_s=args.health_s, log=quiet).seconds
    single["train re-flash (no-op)"] = flash(bundles["a0"], board, sshd.options(),
                                             health_s=args.health_s, log=quiet).seconds
    supervisor.stop(prefix / "run")
    prefix_i = root / "single-infer"
    prefixes.append(prefix_i)
    single["infer install (wheelhouse) + start"] = flash(
        infer, Board("a0", sshd.target, str(prefix_i), py), sshd.options(),
        health_s=args.health_s, log=quiet).seconds
    supervisor.stop(prefix_i / "run")
    out["flash_s"] = single
    print(table(["flash (one board)", "seconds"], [(k, f"{v:.1f}") for k, v in single.items()]))

    def inventory(tag: str) -> Inventory:
        dirs = {f"a{i}": root / f"{tag}-a{i}" for i in range(len(boards))}
        prefixes.extend(dirs.values())
        return parse_inventory({"defaults": {"user": "root", "python": py}, "boards": {
            a: {"host": "127.0.0.1", "port": boards[i].port, "prefix": str(d)}
            for i, (a, d) in enumerate(dirs.items())}}, tag)

    options = sshd.options(known_hosts=root / "known_hosts")
    (root / "known_hosts").write_text("".join(b.known_hosts.read_text() for b in boards))
    timings: dict[str, FleetTiming] = {}
    for tag, workers in (("sequential", 1), ("parallel", len(boards))):
        started = time.perf_counter()
        outcomes = flash_fleet(inventory(tag), bundles, options, workers=workers,
                               health_s=args.health_s, log=quiet)
        wall = time.perf_counter() - started
        assert all(o.ok for o in outcomes), [o.result for o in outcomes if not o.ok]
        timings[tag] = {"wall_s": wall, "per_board_s": [o.seconds for o in outcomes]}
    ratio = timings["sequential"]["wall_s"] / timings["parallel"]["wall_s"]
    out["fleet"] = {**timings, "speedup": ratio}
    print(table(["fleet of " + str(len(boards)), "wall s", "mean per board s"],
                [(k, f"{v['wall_s']:.1f}", f"{sum(v['per_board_s']) / len(boards):.1f}")
                 for k, v in timings.items()] + [("sequential / parallel", f"{ratio:.2f}x", "")]))
    return out


if __name__ == "__main__":
    sys.exit(main())
