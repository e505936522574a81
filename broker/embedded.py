"""The embedded broker: amqtt in a child process, bound to 127.0.0.1 on a free port by default.

amqtt 0.12 quirks this module works around:
- MQTT 3.1.1 only (clients must not ask for MQTT 5);
- no message size limit of its own (our chunks keep messages <= 256 KiB);
- it binds in `Broker.start()` inside a running asyncio loop, so it lives in its own process
  (no loop shared with the caller, and `stop()` can always kill it);
- the default plugin set adds $SYS publishing and per-packet logging; only anonymous auth is kept;
- on connect it replays retained messages matching *any* client's subscriptions (not only the
  connecting client's), so `MqttClient` drops messages on topics it did not subscribe to;
- QoS 1 redelivery happens in practice: receivers must (and `UpdateReceiver` does) tolerate duplicates.
A stopped broker can be started again on the same port (retained messages are not persisted).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from broker.process import terminate

READY_LINE = "amqtt-ready"


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def amqtt_config(host: str, port: int) -> dict[str, Any]:
    """Return the amqtt broker configuration we run (one TCP listener, anonymous clients)."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


async def serve(host: str, port: int, ready: str | None = None) -> None:
    """Run an amqtt broker until SIGTERM/SIGINT (or cancellation)."""
    from amqtt.broker import Broker  # imported here: only the broker process pays for it

    # amqtt logs bind failures and every client reset with tracebacks; the failures we care
    # about reach the caller as exceptions instead.
    logging.getLogger("amqtt").setLevel(logging.CRITICAL)
    broker = Broker(amqtt_config(host, port))
    await broker.start()
    if ready:
        print(ready, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await broker.shutdown()


class EmbeddedBroker:
    """amqtt in a subprocess. `url` is valid after `start()`; restart keeps the port."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, startup_timeout_s: float = 20.0) -> None:
        self.host = host
        self.port = port
        self.startup_timeout_s = startup_timeout_s
        self._process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        """`mqtt://host:port`; known only after `start()`."""
        if not self.port:
            raise RuntimeError("embedded broker: url is known only after start()")
        return f"mqtt://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> EmbeddedBroker:
        """Start the broker process and wait until it accepts connections."""
        if self.running:
            return self
        fixed_port = bool(self.port)
        attempts = 1 if fixed_port else 3
        error = ""
        for _ in range(attempts):
            port = self.port or free_port(self.host)
            process = subprocess.Popen(
                [sys.executable, "-m", "broker.embedded", "--host", self.host, "--port", str(port),
                 "--ready-line", READY_LINE],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            error = self._wait_ready(process, port)
            if not error:
                self._process, self.port = process, port
                return self
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait()
        raise RuntimeError(f"embedded broker on {self.host}:{self.port or 'free port'}: {error}")

    def _wait_ready(self, process: subprocess.Popen[str], port: int) -> str:
        deadline = time.monotonic() + self.startup_timeout_s
        assert process.stdout is not None
        line = process.stdout.readline()  # blocks until the child prints or exits
        if line.strip() != READY_LINE:
            stderr = process.stderr.read() if process.stderr else ""
            last = stderr.strip().splitlines()[-1:] or ["exited before it was ready"]
            return last[0]
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((self.host, port), 1.0):
                return ""
            time.sleep(0.05)
        return "did not accept connections in time"

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the broker process (SIGTERM, then SIGKILL)."""
        process, self._process = self._process, None
        terminate(process, timeout_s)

    def __enter__(self) -> EmbeddedBroker:
        """Start the broker."""
        return self.start()

    def __exit__(self, *exc: object) -> None:
        """Stop the broker."""
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """`python -m broker.embedded --host H --port P`: run amqtt in the foreground."""
    parser = argparse.ArgumentParser(description="Run the embedded amqtt broker.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--ready-line", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    asyncio.run(serve(args.host, args.port, args.ready_line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
