"""Helpers for the broker tests: polling, and private Mosquitto/amqtt brokers on free ports."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from broker.embedded import free_port
from broker.mosquitto import MosquittoProcess, MosquittoSettings, write_mosquitto_config


def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0, step_s: float = 0.02) -> bool:
    """Poll `predicate` until true or the timeout passes; return its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step_s)
    return predicate()


@contextmanager
def private_mosquitto(out_dir: Path, fleet: str, agent_ids: list[str], username: str | None = None,
                      password: str | None = None, prefer_tool: bool = True) -> Iterator[MosquittoProcess]:
    """Mosquitto running the configuration parse-edge generates, on a free loopback port."""
    settings = MosquittoSettings(fleet=fleet, agent_ids=agent_ids, port=free_port(),
                                 bind_address="127.0.0.1", username=username, password=password,
                                 persistence=False)
    files = write_mosquitto_config(settings, out_dir, prefer_tool=prefer_tool)
    with MosquittoProcess(files.conf, settings.port) as process:
        yield process
