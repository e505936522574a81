"""Reliability benchmark (issue 14): faults survived, hostile inputs refused, receiver memory.

1. faults: one 8-agent field trial (real agent processes, mfeat fou+zer, chordal ring, robust
   mixing `median`) through a Mosquitto broker with persistence, with every fault at once: the
   broker restarted mid-trial (by this script: the runner restarts only its embedded broker),
   one agent SIGKILLed (the runner restarts it; it resumes from its checkpoint), 10% loss on one
   agent's updates, one agent leaving and returning, and one byzantine neighbour sending 5 x its
   parameters. Survived: every agent ran its rounds to the end with no round lost;
2. robust mixing: the same 8-agent fleet in the simulator (same round loop and codecs), one
   byzantine neighbour sending scaled parameters, each mixing rule beside the clean run: the
   honest agents' accuracy, mean over seeds;
3. hostile inputs through the command line (configs, npz files, checkpoints) and through the
   mixing gate (neighbour copies): tried, accepted (must be 0), crashes (must be 0);
4. the chunk flood: forged first chunks of two-chunk updates with distinct sha256 fed to
   `broker.receiver.UpdateReceiver`: peak traced memory, CPU seconds, reassemblies pending.

    python bench/reliability.py [--rounds 8] [--seeds 3] [--flood 14000] [--skip-trial]
                                [--out bench/results/reliability.json]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import math
import os
import signal
import socket
import sys
import tempfile
import threading
import time
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from broker.mosquitto import MosquittoProcess  # noqa: E402
from edge.cli import main as cli  # noqa: E402
from edge.config.load import load_config, parse_config  # noqa: E402

MFEAT = REPO / "edge" / "examples" / "mfeat.yaml"
LIAR = "a0"


def _mfeat(agents: int, rounds: int, comm: dict[str, Any], faults: list[dict[str, Any]],
           seed: int = 0) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(MFEAT.read_text())
    doc["agents"]["count"] = agents
    doc["training"].update(rounds=rounds, seed=seed)
    doc["comm"] = {**doc.get("comm", {}), **comm}
    doc["faults"] = faults
    return doc


# --- 1. faults in a field trial ----------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rows(out: Path) -> dict[str, list[dict[str, Any]]]:
    rows: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((out / "agents").glob("*/metrics.jsonl")):
        rows[path.parent.name] = [json.loads(line) for line in path.read_text().splitlines()
                                  if line.strip()]
    return rows


def _round_of(out: Path, agent: str) -> int:
    path = out / "agents" / agent / "metrics.jsonl"
    if not path.exists():
        return -1
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return json.loads(lines[-1])["round"] if lines else -1


class Injector(threading.Thread):
    """Restarts Mosquitto when the fleet reaches a round, SIGKILLs an agent after another."""

    def __init__(self, out: Path, broker: MosquittoProcess, agents: list[str],
                 restart_after: int, kill: str, kill_after: int) -> None:
        super().__init__(daemon=True)
        self.out, self.broker, self.agents = out, broker, agents
        self.restart_after, self.kill, self.kill_after = restart_after, kill, kill_after
        self.done = threading.Event()
        self.log: dict[str, Any] = {"broker_restart": None, "sigkill": None}

    def run(self) -> None:
        while not self.done.is_set():
            rounds = {a: _round_of(self.out, a) for a in self.agents}
            if self.log["broker_restart"] is None and max(rounds.values()) >= self.restart_after:
                t0 = time.monotonic()
                self.broker.stop()
                self.broker.start()
                self.log["broker_restart"] = {"after_round": max(rounds.values()),
                                              "down_s": round(time.monotonic() - t0, 2)}
            pid_file = self.out / "agents" / self.kill / "agent.pid"
            if (self.log["sigkill"] is None and rounds[self.kill] >= self.kill_after
                    and pid_file.exists()):
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
                    self.log["sigkill"] = {"agent": self.kill, "after_round": rounds[self.kill]}
            time.sleep(0.2)


def fault_trial(work: Path, rounds: int) -> dict[str, Any]:
    """One trial with every fault; what each fault did and whether the fleet survived it."""
    from edge.trial.runner import TrialOptions, run_trial

    port = _free_port()
    persist = work / "mosquitto-db"
    persist.mkdir(parents=True, exist_ok=True)
    conf = work / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                    f"persistence_location {persist}/\nautosave_interval 1\n"
                    "max_packet_size 300000\n")
    faults = [{"kind": "loss", "agents": ["a1"], "loss_percent": 10.0},
              {"kind": "leave", "agent": "a2", "round": 3, "return_round": 5},
              {"kind": "byzantine", "agents": [LIAR], "mode": "scale", "round": 1}]
    doc = _mfeat(8, rounds, {"mixing": "median", "deadline_s": 20}, faults)
    doc["fleet"] = f"reliability-{int(time.time())}"
    doc["broker"] = {"url": f"mqtt://127.0.0.1:{port}"}
    config = work / "trial.yaml"
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    cfg = load_config(config)
    out = work / "trial"
    broker = MosquittoProcess(conf, port).start()
    injector = Injector(out, broker, cfg.agent_ids, restart_after=2, kill="a3", kill_after=4)
    injector.start()
    started = time.monotonic()
    try:
        result = run_trial(cfg, TrialOptions(out=out, config_path=str(config), plots=False))
    finally:
        injector.done.set()
        injector.join(5)
        broker.stop()
    wall_s = time.monotonic() - started
    rows = _rows(out)
    finals = {a: json.loads((out / "agents" / a / "final.json").read_text())
              for a in cfg.agent_ids if (out / "agents" / a / "final.json").exists()}
    lost = _rounds_lost(rows, rounds, away={"a2": 3})
    everyone = all(finals.get(a, {}).get("rounds_completed") == rounds for a in cfg.agent_ids)
    clean = result.status == "completed" and everyone and lost == 0
    honest = [r["accuracy"] for a, rs in rows.items() if a != LIAR for r in rs
              if r["round"] == rounds - 1]
    refused = sum(len(v) for rs in rows.values() for r in rs for v in r.get("refused", {}).values())
    kill_rows = rows.get("a3", [])
    records = {
        "broker restart (Mosquitto, persistence)": injector.log["broker_restart"] is not None,
        "agent SIGKILL and resume": injector.log["sigkill"] is not None,
        "10% loss on one agent": True,
        "agent leaves and returns": True,
        "byzantine neighbour (5 x parameters, median mixing)": True,
    }
    return {
        "status": result.status, "reason": result.summary["trial"].get("reason", ""),
        "wall_s": wall_s, "rounds": rounds, "rounds_lost": lost,
        "faults": [{"fault": name, "injected": injected, "survived": injected and clean}
                   for name, injected in records.items()],
        "injections": injector.log,
        "killed_agent_resumed": any(f.get("resumed_from_round", 0) > 0 for f in [finals.get("a3", {})]),
        "killed_agent_rows": len(kill_rows),
        "updates_dropped_by_loss": finals.get("a1", {}).get("updates_dropped_by_fault", 0),
        "copies_refused_by_gate": refused,
        "honest_final_accuracy": float(np.mean(honest)) if honest else math.nan,
    }


def _rounds_lost(rows: dict[str, list[dict[str, Any]]], rounds: int, away: dict[str, int]) -> int:
    """Rounds an agent should have run but has no metrics row for. An agent that left on
    purpose is not expected to run the rounds from its leave round to its first round back.
    """
    lost = 0
    for agent, agent_rows in rows.items():
        done = {r["round"] for r in agent_rows}
        expected = set(range(rounds))
        if agent in away:
            back = min((r for r in done if r >= away[agent]), default=rounds)
            expected -= set(range(away[agent], back))
        lost += len(expected - done)
    return lost


# --- 2. robust mixing against one byzantine neighbour (simulator) -------------------------------

def robust_mixing(rounds: int, seeds: int) -> list[dict[str, Any]]:
    """Honest agents' accuracy per mixing rule, clean and with one byzantine neighbour."""
    from edge.learning.simulate import simulate_strategy

    liar = [{"kind": "byzantine", "agents": [LIAR], "mode": "scale", "round": 1}]
    table = []
    for rule in ("gossip", "median", "trimmed-mean", "clipped-gossip"):
        row: dict[str, Any] = {"mixing": rule}
        for label, faults in (("clean", []), ("byzantine", liar)):
            accs = []
            for seed in range(seeds):
                cfg = parse_config(_mfeat(8, rounds, {"mixing": rule}, copy.deepcopy(faults), seed),
                                   "bench.yaml")
                block = simulate_strategy(cfg, "parse", "sliced")
                per = block["accuracy"]["per_agent"]
                accs.append(float(np.mean([v for a, v in per.items() if a != LIAR])))
            row[label] = float(np.mean(accs))
            row[f"{label}_seeds"] = accs
        table.append(row)
        print(f"# mixing {rule}: clean {row['clean']:.3f} byzantine {row['byzantine']:.3f}",
              file=sys.stderr, flush=True)
    base = table[0]["clean"]
    for row in table:
        row["points_vs_clean_gossip"] = 100 * (row["byzantine"] - base)
    return table


# --- 3. hostile inputs --------------------------------------------------------------------------

def _run_cli(argv: list[str]) -> tuple[int | None, str]:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code: int | None = cli(argv)
    except BaseException as exc:  # a crash is what this section counts
        return None, f"{type(exc).__name__}: {exc}"
    return code, err.getvalue()


def hostile_inputs(work: Path) -> dict[str, Any]:
    """Every hostile input tried: (kind, name, exit code, accepted, crashed)."""
    import torch

    from edge.data.fleet_data import agent_data, fleet_info
    from edge.learning.checkpoint import save_checkpoint
    from edge.learning.learner import make_learner
    from edge.learning.strategies import get_strategy
    from tests.hostile_files import four_gib_bomb, npy_header

    base: dict[str, Any] = {
        "fleet": "hostile", "agents": {"counts": {"a": 1, "a+b": 1}},
        "data": {"dataset": "synthetic-pid", "synthetic": {"n_samples": 300, "dim": 6}},
        "topology": {"kind": "ring"}}
    cases: list[tuple[str, str, Callable[[], tuple[int | None, str]]]] = []

    def config_case(name: str, text: str | bytes) -> None:
        path = work / f"config-{name}.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        cases.append(("config", name, lambda: _run_cli(["config", "check", str(path), "--no-data"])))

    def with_value(section: str, key: str, value: Any) -> str:
        doc = copy.deepcopy(base)
        doc.setdefault(section, {})[key] = value
        return yaml.safe_dump(doc)

    config_case("split-nan", with_value("model", "split", [1, math.nan, 1]))
    config_case("weight-decay-nan", with_value("training", "weight_decay", math.nan))
    config_case("deadline-nan", with_value("comm", "deadline_s", math.nan))
    config_case("seed-huge", with_value("training", "seed", 99999999999999999999999999))
    config_case("latent-huge", yaml.safe_dump(base | {"families": {"a": {"latent": 999999999999}}}))
    config_case("non-utf8", "fleet: caf\u00e9\n".encode("latin-1"))
    config_case("alias-bomb", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10)))
    config_case("deep-nesting", "fleet: " + "[" * 5000 + "]" * 5000 + "\n")
    config_case("int-5000-digits", "fleet: x\ntraining: {seed: " + "9" * 5000 + "}\n")
    config_case("impossible-date", "fleet: 2001-02-30\n")

    def npz_case(name: str, make: Callable[[Path], Path]) -> None:
        data = make(work / f"{name}.npz")
        doc = {"fleet": "npz", "agents": {"count": 2}, "topology": {"kind": "ring"},
               "data": {"dataset": "npz", "modalities": ["accel"], "path": str(data)}}
        config = work / f"npz-{name}.yaml"
        config.write_text(yaml.safe_dump(doc))
        cases.append(("npz", name, lambda: _run_cli(["config", "check", str(config)])))

    def good(path: Path) -> Path:
        with path.open("wb") as fh:
            np.savez(fh, y=np.arange(40) % 2, x_accel=np.ones((40, 3, 10)))
        return path

    def truncated(path: Path) -> Path:
        data = good(path).read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path

    def flipped(path: Path) -> Path:
        data = bytearray(good(path).read_bytes())
        data[len(data) // 3] ^= 0x10
        path.write_bytes(bytes(data))
        return path

    def renamed(path: Path) -> Path:
        with path.open("wb") as fh:
            np.save(fh, np.zeros((40, 3, 10), np.float32))
        return path

    def declared(path: Path) -> Path:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("y.npy", npy_header((2,), "<i8") + bytes(16))
            archive.writestr("x_accel.npy", npy_header((10**12, 3, 50)) + bytes(600))
        return path

    def gib4(path: Path) -> Path:
        # The 3.9 MB archive holding a 4 GiB array, as the labels column `y`
        # (the member name has the same length, so the zip offsets stay valid).
        path.write_bytes(four_gib_bomb().read_bytes().replace(b"x.npy", b"y.npy"))
        return path

    for name, make in (("truncated", truncated), ("bit-flipped", flipped),
                       ("npy-renamed-npz", renamed), ("declared-1e12-rows", declared),
                       ("4-GiB-zip64", gib4)):
        npz_case(name, make)

    cfg = parse_config(copy.deepcopy(base), "inline")
    spec = cfg.agent_specs[1]
    learner = make_learner(cfg, spec, agent_data(cfg)[spec.id], fleet_info(cfg),
                           get_strategy("parse").sharing, "sliced")
    ckpt = work / "good.pt"
    save_checkpoint(ckpt, cfg, learner, spec.id, 0, "parse")
    payload = torch.load(ckpt, weights_only=True)

    def ckpt_case(name: str, edit: Callable[[dict[str, Any]], Any] | None, raw: bytes = b"") -> None:
        path = work / f"ckpt-{name}.pt"
        if edit is not None:
            torch.save(edit(copy.deepcopy(payload)), path)
        else:
            path.write_bytes(raw)
        cases.append(("checkpoint", name,
                      lambda: _run_cli(["export", str(path), "--out", str(work / f"b-{name}")])))

    def drop_one(p: dict[str, Any]) -> dict[str, Any]:
        p["model_state"].pop(sorted(p["model_state"])[0])
        return p

    def nan_all(p: dict[str, Any]) -> dict[str, Any]:
        p["model_state"] = {k: v.float().fill_(math.nan) for k, v in p["model_state"].items()}
        return p

    ckpt_case("format-only", lambda p: {"format": 1})
    ckpt_case("missing-weight", drop_one)
    ckpt_case("nan-weights", nan_all)
    ckpt_case("truncated", None, ckpt.read_bytes()[:2000])
    ckpt_case("not-a-checkpoint", None, b"garbage" * 100)

    own = learner.branch_vector(next(iter(learner.branches)))
    for name, copy_ in (("update-1e30", np.full_like(own, 1e30)),
                        ("update-nan", np.where(np.arange(own.size) % 7 == 0, np.nan, own)),
                        ("update-100x", own * 100), ("update-wrong-shape", own[:-1])):
        cases.append(("neighbour copy", name, _gate(own, copy_.astype(np.float32),
                                                    cfg.comm.max_norm_ratio)))

    results = []
    for kind, name, run in cases:
        code, err = run()
        one_line = err.count("\n") <= 1 and "Traceback" not in err
        results.append({"kind": kind, "input": name, "exit": code, "accepted": code == 0,
                        "crashed": code not in (0, 2) or not one_line, "message": err.strip()[:160]})
    return {"cases": results, "tried": len(results),
            "accepted": sum(r["accepted"] for r in results),
            "crashes": sum(r["crashed"] for r in results)}


def _gate(own: np.ndarray, copy_: np.ndarray,
          ratio: float) -> Callable[[], tuple[int | None, str]]:
    from edge.learning.gossip import screen

    def run() -> tuple[int | None, str]:
        admitted, refused = screen(own, None, {"x": copy_}, ratio)
        return (0 if admitted else 2), f"refused: {refused.get('x')}"
    return run


# --- 4. the chunk flood -------------------------------------------------------------------------

def chunk_flood(n: int) -> dict[str, Any]:
    """Forged first chunks (of two-chunk updates, distinct sha256) fed to the receiver."""
    from broker.exchange import UpdateReceiver
    from edge.learning.transport import update_sender

    doc = _mfeat(8, 2, {"chunk_kib": 1}, [])
    cfg = parse_config(doc, "flood.yaml")
    sender = update_sender(cfg, "a1")
    size = 400  # 1600 bytes of fp32: two 1 KiB chunks
    receiver = UpdateReceiver(cfg.fleet, lambda key: ("0" * 16, size))
    rng = np.random.default_rng(0)
    firsts = []
    for i in range(n):
        vector = rng.standard_normal(size).astype(np.float32)
        messages = sender.encode(i, "enc/fou", "0" * 16, vector)
        firsts.append(messages[0])
    wire_bytes = sum(len(p) for _, p in firsts)
    tracemalloc.start()
    cpu0 = time.process_time()
    for topic, payload in firsts:
        receiver.feed(topic, payload)
    cpu_s = time.process_time() - cpu0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    rejected = {str(getattr(k, "value", k)): v for k, v in receiver.rejections.items()}
    return {"forged_first_chunks": n, "wire_mb": wire_bytes / 1e6,
            "peak_traced_mib": peak / 2**20, "cpu_s": cpu_s, "pending": receiver.pending,
            "rejected": rejected}


# --- report -------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8, help="rounds of the fault trial")
    parser.add_argument("--mix-rounds", type=int, default=15, help="rounds of the mixing runs")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the mixing runs")
    parser.add_argument("--flood", type=int, default=14_000, help="forged first chunks")
    parser.add_argument("--skip-trial", action="store_true", help="no field trial")
    parser.add_argument("--keep", default=None, help="keep the work folder here")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "reliability.json"))
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        print("# hostile inputs", file=sys.stderr, flush=True)
        hostile = hostile_inputs(work)
        print("# chunk flood", file=sys.stderr, flush=True)
        flood = chunk_flood(args.flood)
        print("# robust mixing (simulator)", file=sys.stderr, flush=True)
        mixing = robust_mixing(args.mix_rounds, args.seeds)
        trial = None
        if not args.skip_trial:
            print("# fault trial", file=sys.stderr, flush=True)
            trial = fault_trial(work, args.rounds)
    wall_s = time.monotonic() - started

    print("\n## Reliability (bench/reliability.py)\n")
    print("| measure | value |")
    print("|---|---|")
    if trial is not None:
        injected = sum(f["injected"] for f in trial["faults"])
        survived = sum(f["survived"] for f in trial["faults"])
        print(f"| faults injected / survived (one 8-agent trial, {trial['rounds']} rounds, "
              f"{trial['status']}) | {injected} / {survived} |")
        for f in trial["faults"]:
            print(f"| &nbsp; {f['fault']} | {'survived' if f['survived'] else 'NOT survived'} |")
        print(f"| rounds lost | {trial['rounds_lost']} |")
    print(f"| hostile inputs tried / accepted / crashes | {hostile['tried']} / "
          f"{hostile['accepted']} / {hostile['crashes']} |")
    print(f"| chunk flood: {flood['forged_first_chunks']} forged first chunks "
          f"({flood['wire_mb']:.1f} MB): peak receiver memory (traced) | "
          f"{flood['peak_traced_mib'] * 1024:.0f} KiB, {flood['cpu_s']:.1f} s CPU, "
          f"{flood['pending']} pending, dropped {flood['rejected']} |")
    print("\n### One byzantine neighbour (a0 sends 5 x its parameters from round 1), "
          f"honest agents' accuracy, 8 agents, {args.mix_rounds} rounds, {args.seeds} seeds\n")
    print("| mixing | clean | byzantine | byzantine vs clean gossip (points) |")
    print("|---|---|---|---|")
    for row in mixing:
        print(f"| {row['mixing']} | {row['clean']:.3f} | {row['byzantine']:.3f} "
              f"| {row['points_vs_clean_gossip']:+.1f} |")
    bad = [c for c in hostile["cases"] if c["accepted"] or c["crashed"]]
    for c in bad:
        print(f"\nNOT REFUSED: {c['kind']} {c['input']}: exit {c['exit']}: {c['message']}")
    print(f"\nwall {wall_s:.0f} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"trial": trial, "hostile": hostile, "flood": flood,
                               "mixing": mixing, "wall_s": wall_s}, indent=2, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
