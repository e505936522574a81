"""Presence and discovery: the retained status payload, and live neighbour sets per branch.

Each agent publishes a retained JSON status on `parse/<fleet>/agents/<id>/status`; its MQTT last
will replaces it with `{"agent": id, "online": false}`. `NeighbourTable` folds those messages into
"which of my configured neighbours are online and hold this branch with the same signature".

In a signed fleet the JSON travels in a signed envelope (`broker.envelope`): `status_message` and
`offline_will` seal it, and a `NeighbourTable` given a `Verifier` opens it, so a forged or leftover
retained `{"online": false}` (another run, an older epoch, no valid HMAC) is rejected and counted
instead of keeping an agent "offline" for a whole trial.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from broker import topics
from broker.envelope import Kind, Signer, Verifier

log = logging.getLogger(__name__)

# Upper bound of a round index in a status (far beyond any trial; rejects absurd values).
MAX_ROUND = 1_000_000


@dataclass(frozen=True)
class AgentStatus:
    """What one agent announces about itself."""

    agent: str
    online: bool = True
    modalities: tuple[str, ...] = ()
    branches: dict[str, str] = field(default_factory=dict)  # branch key -> signature
    device_profile: str = ""
    software_version: str = ""
    # Where the agent is in its rounds (0-based indices): the round it is running (-1 while it
    # waits for the fleet's quorum), and the first round this process runs (a restarted agent
    # joins at the fleet's round: it never sends the rounds before this one).
    round_idx: int = -1
    first_round: int = 0


def encode_status(status: AgentStatus) -> bytes:
    """Serialise `status` as JSON: the payload itself, or an envelope's body in a signed fleet."""
    return json.dumps({
        "agent": status.agent, "online": status.online, "modalities": list(status.modalities),
        "branches": dict(status.branches), "device_profile": status.device_profile,
        "software_version": status.software_version,
        "round": status.round_idx, "first_round": status.first_round,
    }, sort_keys=True).encode()


def offline_status(agent: str) -> bytes:
    """Return the unsigned last-will payload: the agent is gone."""
    return encode_status(AgentStatus(agent=agent, online=False))


def status_message(signer: Signer, status: AgentStatus) -> tuple[str, bytes]:
    """(topic, payload) of our retained status, sealed by `signer` (publish it with retain)."""
    return topics.status_topic(signer.fleet, signer.sender), signer.seal(Kind.STATUS, encode_status(status))


def offline_will(signer: Signer) -> Callable[[], tuple[str, bytes]]:
    """Return a last-will factory for `MqttClient(will=...)`: a freshly sealed offline status each time.

    Sealed with `Signer.seal_will`: still accepted after any number of later statuses.
    """
    return lambda: (topics.status_topic(signer.fleet, signer.sender),
                    signer.seal_will(Kind.STATUS, offline_status(signer.sender)))


def parse_status(payload: bytes, agent: str | None = None) -> AgentStatus:
    """Parse a status document; `agent` (from the topic) must match.

    Raises
    ------
    ValueError
        Naming the field that is wrong.
    """
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"status: not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ValueError("status: expected a JSON object")
    name = doc.get("agent", agent)
    if not isinstance(name, str) or not name or (agent is not None and name != agent):
        raise ValueError(f"status: agent {name!r} does not match topic agent {agent!r}")
    online = doc.get("online", True)
    modalities = doc.get("modalities", [])
    branches = doc.get("branches", {})
    if not isinstance(online, bool):
        raise ValueError("status: online must be true or false")
    if not isinstance(modalities, list) or not all(isinstance(m, str) for m in modalities):
        raise ValueError("status: modalities must be a list of strings")
    if not isinstance(branches, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in branches.items()):
        raise ValueError("status: branches must map branch keys to signature strings")
    profile = doc.get("device_profile", "")
    version = doc.get("software_version", "")
    if not isinstance(profile, str) or not isinstance(version, str):
        raise ValueError("status: device_profile and software_version must be strings")
    round_idx = _round_field(doc, "round", -1)
    first_round = _round_field(doc, "first_round", 0)
    return AgentStatus(name, online, tuple(modalities), dict(branches), profile, version,
                       round_idx, first_round)


def _round_field(doc: dict[str, object], key: str, default: int) -> int:
    # Absent in statuses of older agents; bounded so a hostile payload cannot claim round 10^30.
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not -1 <= value < MAX_ROUND:
        raise ValueError(f"status: {key} must be an integer in [-1, {MAX_ROUND})")
    return value


class NeighbourTable:
    """Live neighbour sets per branch, from retained status messages (thread-safe).

    Parameters
    ----------
    fleet : str
        Our fleet.
    topology : mapping
        agent -> configured neighbours (made symmetric).
    verifier : Verifier or None
        Opens signed status envelopes (rejections counted in `verifier.rejections`); None: the
        payloads are plain JSON.
    """

    def __init__(self, fleet: str, topology: Mapping[str, Iterable[str]],
                 verifier: Verifier | None = None) -> None:
        self.fleet = topics.check_name("fleet", fleet)
        self.verifier = verifier
        self.bad_payloads = 0
        self._epochs: dict[str, int] = {}
        self._lock = threading.Lock()
        self._statuses: dict[str, AgentStatus] = {}
        self._topology: dict[str, frozenset[str]] = {}
        self.set_topology(topology)

    def set_topology(self, topology: Mapping[str, Iterable[str]]) -> None:
        """Replace the configured graph (made symmetric: an edge is usable both ways)."""
        graph: dict[str, set[str]] = {}
        for agent, neighbours in topology.items():
            for other in neighbours:
                if other != agent:
                    graph.setdefault(agent, set()).add(other)
                    graph.setdefault(other, set()).add(agent)
        with self._lock:
            self._topology = {a: frozenset(n) for a, n in graph.items()}

    def observe(self, topic: str, payload: bytes, retained: bool = True) -> bool:
        """Fold one message in; True when it was a status message of this fleet that parsed."""
        info = topics.parse_topic(topic)
        if info is None or info.kind != "status" or info.fleet != self.fleet or info.agent is None:
            return False
        epoch = None
        if self.verifier is not None:
            envelope = self.verifier.open(topic, payload, retained)
            if envelope is None:
                return False
            payload, epoch = envelope.body, envelope.epoch
        elif not payload:  # a cleared retained status: forget the agent
            with self._lock:
                self._statuses.pop(info.agent, None)
            return True
        try:
            status = parse_status(payload, info.agent)
        except ValueError as exc:
            self.bad_payloads += 1
            log.warning("ignoring status on %s: %s", topic, exc)
            return False
        with self._lock:
            self._statuses[info.agent] = status
            if epoch is not None:
                self._epochs[info.agent] = epoch
        return True

    def epoch(self, agent: str) -> int | None:
        """Epoch of `agent`'s last verified status (a restart bumps it), or None."""
        with self._lock:
            return self._epochs.get(agent)

    def status(self, agent: str) -> AgentStatus | None:
        """Return the last status `agent` announced, or None."""
        with self._lock:
            return self._statuses.get(agent)

    def online_agents(self) -> set[str]:
        """Agents whose last status says online."""
        with self._lock:
            return {a for a, s in self._statuses.items() if s.online}

    def online_statuses(self) -> dict[str, AgentStatus]:
        """Return the last status of every agent that says it is online (a snapshot)."""
        with self._lock:
            return {a: s for a, s in self._statuses.items() if s.online}

    def configured_neighbours(self, agent: str) -> frozenset[str]:
        """`agent`'s neighbours in the configured graph."""
        with self._lock:
            return self._topology.get(agent, frozenset())

    def live_neighbours(self, agent: str, branch_key: str, signature: str) -> set[str]:
        """Return `agent`'s configured neighbours that are online and hold `branch_key` at `signature`."""
        with self._lock:
            return {
                other for other in self._topology.get(agent, frozenset())
                if (s := self._statuses.get(other)) is not None and s.online
                and s.branches.get(branch_key) == signature
            }

    def live_neighbours_by_branch(self, agent: str, branches: Mapping[str, str]) -> dict[str, set[str]]:
        """`live_neighbours` for each of `agent`'s own branches (key -> signature)."""
        return {key: self.live_neighbours(agent, key, sig) for key, sig in branches.items()}
