"""What a trial runner sees of its fleet: metrics rows from files, presence over MQTT.

Metrics rows are tailed from the agents' JSONL files (the record); presence and live metrics
arrive over MQTT (the live view), in envelopes the monitor verifies like any agent (signed with
the sender's key, bound to the trial's run; rejections counted in `verifier.rejections`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from broker import topics
from broker.client import Inbound, MqttClient
from broker.envelope import Verifier
from broker.keys import KeyRing
from edge.records import MetricsRow

log = logging.getLogger(__name__)


# A row read back from a file must have every field of a metrics row, with the right types.
METRICS_ROW = TypeAdapter(MetricsRow)


class JsonlTail:
    """Reads the complete lines appended to a JSONL file since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.bad_lines = 0

    def read_new(self) -> list[MetricsRow]:
        """Complete, valid metrics rows appended since the last call."""
        try:
            with self.path.open("rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except OSError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []  # a line still being written
        self.offset += end + 1
        rows = []
        for line in data[: end + 1].splitlines():
            if not line.strip():
                continue
            try:
                rows.append(METRICS_ROW.validate_json(line))
            except ValidationError:
                self.bad_lines += 1
        return rows


@dataclass(frozen=True)
class Presence:
    """What an agent's last status says (broker.discovery).

    Online, the round it runs (-1 while it waits for the quorum) and the first round its current
    process runs.
    """

    online: bool
    round_idx: int = -1
    first_round: int = 0


class PresenceMonitor:
    """A runner-side MQTT client: who is online, at which round, and which rows arrived.

    Connects in the background and rides out broker restarts. Records (on `clock`) when each agent
    was first online and first ran a round: the start-up.
    """

    def __init__(self, url: str, fleet: str, client_id: str,
                 clock: Callable[[], float] = time.monotonic, *, keys: KeyRing | None = None,
                 run_id: bytes | None = None, **client_kwargs: object) -> None:
        self.fleet = fleet
        self.verifier = Verifier(fleet, keys, run_id)
        self._accepted_on: dict[str, bytes] = {}  # retained topic -> last accepted payload
        self.clock = clock
        self._lock = threading.Lock()
        self.online: dict[str, bool] = {}
        self.status: dict[str, dict[str, Any]] = {}
        self.metrics_seen: dict[str, set[int]] = defaultdict(set)
        self.first_online_at: dict[str, float] = {}
        self.first_running_at: dict[str, float] = {}
        self.client = MqttClient(url, client_id, on_inbound=self._on_inbound,
                                 reconnect_max_s=2.0, **client_kwargs)  # type: ignore[arg-type]

    def start(self, wait: bool = False, timeout_s: float = 10.0) -> PresenceMonitor:
        """Subscribe to status and metrics and connect (in the background unless `wait`).

        Raises
        ------
        ConnectionError
            With `wait`, when the broker did not accept the connection within `timeout_s`.
        """
        self.client.subscribe(topics.status_filter(self.fleet))
        self.client.subscribe(topics.metrics_filter(self.fleet))
        self.client.start(timeout_s=timeout_s, wait=wait)
        return self

    def stop(self) -> None:
        """Disconnect without waiting."""
        self.client.stop(publish_will=False, flush_timeout_s=0)

    @property
    def connected(self) -> bool:
        """Whether the monitor's MQTT connection is up."""
        return self.client.is_connected

    def online_count(self) -> int:
        """How many agents say they are online."""
        with self._lock:
            return sum(self.online.values())

    def snapshot(self) -> dict[str, Presence]:
        """Every agent's last status."""
        with self._lock:
            return {a: _presence(doc) for a, doc in self.status.items()}

    def _on_inbound(self, message: Inbound) -> None:
        topic = message.topic
        info = topics.parse_topic(topic)
        if info is None or info.fleet != self.fleet or info.agent is None:
            return
        if self._accepted_on.get(topic) == message.payload:
            return  # a retained status delivered again after a reconnect: already counted
        envelope = self.verifier.open(topic, message.payload, message.retained)
        if envelope is None:
            return
        if info.kind == "status":
            self._accepted_on[topic] = message.payload
        try:
            doc = json.loads(envelope.body)
        except ValueError:
            return
        if not isinstance(doc, dict):
            return
        with self._lock:
            if info.kind == "status":
                self.online[info.agent] = bool(doc.get("online"))
                self.status[info.agent] = doc
                presence = _presence(doc)
                if presence.online:
                    self.first_online_at.setdefault(info.agent, self.clock())
                    if presence.round_idx >= 0:
                        self.first_running_at.setdefault(info.agent, self.clock())
            elif info.kind == "metrics" and isinstance(doc.get("round"), int):
                self.metrics_seen[info.agent].add(doc["round"])


def _presence(doc: dict[str, Any]) -> Presence:
    # The runner only reads these fields; anything malformed reads as "not started".
    round_idx, first_round = doc.get("round", -1), doc.get("first_round", 0)
    return Presence(bool(doc.get("online")),
                    round_idx if isinstance(round_idx, int) and not isinstance(round_idx, bool) else -1,
                    first_round if isinstance(first_round, int) and not isinstance(first_round, bool)
                    else 0)


class FleetWatch:
    """Every agent's metrics rows in the order they were written, and per-agent progress."""

    def __init__(self, out: Path, agent_ids: list[str]) -> None:
        self.agent_ids = list(agent_ids)
        self.tails = {a: JsonlTail(out / "agents" / a / "metrics.jsonl") for a in agent_ids}
        self.rows: list[MetricsRow] = []
        self.rows_by_agent: dict[str, list[MetricsRow]] = {a: [] for a in agent_ids}
        self.completed: dict[str, int] = dict.fromkeys(agent_ids, -1)

    def poll(self) -> list[MetricsRow]:
        """Read the new rows since the last call (all agents)."""
        new = []
        for agent, tail in self.tails.items():
            for row in tail.read_new():
                self.rows_by_agent[agent].append(row)
                self.completed[agent] = max(self.completed[agent], int(row["round"]))
                new.append(row)
        self.rows.extend(new)
        return new

    def row_count(self, agent: str) -> int:
        """How many rows `agent` has written so far."""
        return len(self.rows_by_agent[agent])

    def latest(self) -> dict[str, MetricsRow]:
        """Each agent's most recent row."""
        return {a: rows[-1] for a, rows in self.rows_by_agent.items() if rows}

    @property
    def bad_lines(self) -> int:
        """Lines of the metrics files that were not valid metrics rows."""
        return sum(t.bad_lines for t in self.tails.values())

    def round_rows(self, round_idx: int) -> dict[str, MetricsRow]:
        """Each agent's (latest) row of round `round_idx`."""
        return {a: row for a, rows in self.rows_by_agent.items() for row in rows
                if int(row["round"]) == round_idx}
