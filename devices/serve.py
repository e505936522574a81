"""The inference-only board service: predictions over MQTT with onnxruntime (no torch).

What an ``--role infer`` bundle runs under its supervisor or systemd unit::

    python -m devices.serve --model DIR --config FLEET.yaml --agent ID --out STATE [--provider P]

It announces itself (retained JSON on ``parse/<fleet>/infer/<agent>/status``, last will
``online: false``), answers every ``.../request`` message (an ``.npz`` archive, one array per
modality, at most :data:`MAX_REQUEST_BYTES`) with a JSON prediction on ``.../prediction``, and
appends one metrics line per request to ``STATE/agents/<agent>/metrics.jsonl``. A bad request is
answered with ``{"error": ...}`` and never stops the service.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from broker import topics
from broker.client import MqttClient, TlsFiles
from devices.runtime import InputError, Predictor, load_npz_inputs
from exporters.manifest import ManifestError

MAX_REQUEST_BYTES = 16 * 1024 * 1024  # a window batch is KBs; anything this large is bad input
MAX_INPUT_BYTES = 4 * MAX_REQUEST_BYTES  # arrays once decompressed (npz members may be deflated)


def broker_settings(config_path: Path) -> dict[str, Any]:
    """Fleet name and broker settings from a fleet config (only the keys the service needs).

    Raises
    ------
    ValueError
        ``<file>: <field>: <expected>`` when the fleet name or broker URL is missing.
    """
    doc = yaml.safe_load(config_path.read_text()) or {}
    broker = doc.get("broker") or {}
    fleet, url = doc.get("fleet"), broker.get("url", "embedded")
    if not isinstance(fleet, str):
        raise ValueError(f"{config_path}: fleet: expected the fleet name")
    if not isinstance(url, str) or not url.startswith("mqtt"):
        raise ValueError(f"{config_path}: broker.url: expected mqtt://host:port, got {url!r}")
    tls = broker.get("tls") or None
    return {"fleet": fleet, "url": url, "username": broker.get("username"),
            "password": broker.get("password"),
            "tls": TlsFiles(tls.get("ca_file"), tls.get("cert_file"), tls.get("key_file"))
            if tls else None}


class InferenceService:
    """Answers prediction requests for one agent's exported model."""

    def __init__(self, predictor: Predictor, settings: dict[str, Any], agent: str,
                 out_dir: Path) -> None:
        self.predictor = predictor
        self.agent = agent
        self.fleet = settings["fleet"]
        self.metrics_path = out_dir / "agents" / agent / "metrics.jsonl"
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        self.requests = 0
        self._lock = threading.Lock()
        status = topics.infer_topic(self.fleet, agent, "status")
        self.client = MqttClient(
            settings["url"], f"{self.fleet}-infer-{agent}", on_message=self._on_message,
            username=settings["username"], password=settings["password"], tls=settings["tls"],
            will=(status, json.dumps({"agent": agent, "online": False}).encode()))

    def start(self) -> None:
        """Connect, subscribe to requests, announce."""
        self.client.start()
        self.client.subscribe(topics.infer_topic(self.fleet, self.agent, "request"))
        self.client.wait_subscribed()
        self.client.publish(topics.infer_topic(self.fleet, self.agent, "status"), json.dumps({
            "agent": self.agent, "online": True, "role": "infer",
            "modalities": self.predictor.modalities, "providers": self.predictor.providers,
        }).encode(), retain=True)

    def stop(self) -> None:
        """Announce offline and disconnect."""
        self.client.stop()

    def answer(self, payload: bytes) -> dict[str, Any]:
        """Compute the JSON reply to one request payload."""
        if len(payload) > MAX_REQUEST_BYTES:
            return {"error": f"request: {len(payload)} bytes, expected at most "
                             f"{MAX_REQUEST_BYTES}"}
        try:
            # The bounded npz reader works on files: the request goes through a private one.
            with tempfile.NamedTemporaryFile(suffix=".npz") as f:
                f.write(payload)
                f.flush()
                inputs = load_npz_inputs(f.name, max_bytes=MAX_INPUT_BYTES)
            prediction = self.predictor.predict(inputs)
        except (InputError, ManifestError) as exc:
            return {"error": str(exc)}
        return prediction.to_dict(self.predictor.labels)

    def _on_message(self, topic: str, payload: bytes) -> None:
        started = time.perf_counter()
        reply = self.answer(payload)
        latency_ms = (time.perf_counter() - started) * 1e3
        self.client.publish(topics.infer_topic(self.fleet, self.agent, "prediction"),
                            json.dumps(reply).encode())
        with self._lock:
            self.requests += 1
            row = {"agent": self.agent, "role": "infer", "requests": self.requests,
                   "latency_ms": round(latency_ms, 3), "ok": "error" not in reply,
                   "graph": reply.get("graph"), "provider": self.predictor.providers[0],
                   "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            with self.metrics_path.open("a") as f:
                f.write(json.dumps(row) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m devices.serve", description=__doc__)
    parser.add_argument("--model", required=True, type=Path, help="parse-edge export folder")
    parser.add_argument("--config", required=True, type=Path, help="fleet config (YAML)")
    parser.add_argument("--agent", required=True)
    parser.add_argument("--out", required=True, type=Path, help="state folder (metrics)")
    parser.add_argument("--provider", default=None, help="onnxruntime execution provider")
    parser.add_argument("--profile", default=None, help="device profile (limits providers)")
    args = parser.parse_args(argv)
    try:
        settings = broker_settings(args.config)
        predictor = Predictor(args.model, provider=args.provider, profile=args.profile)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    service = InferenceService(predictor, settings, args.agent, args.out)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    service.start()
    print(f"serving {args.agent} on {settings['url']} with {predictor.providers[0]}", flush=True)
    stop.wait()
    service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
