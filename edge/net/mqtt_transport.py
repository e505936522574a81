"""The networked agent's transport: its branches published over MQTT, an inbox of its neighbours'.

Implements `edge.learning.transport.Transport`; trial impairments wrap it (edge.net.impaired).
The retained status says where the agent is: the round it runs (`round`, -1 while it waits for
the quorum; the next round as soon as this round's updates are published) and the first round
this process runs (`first_round`). Neighbours read both: the
quorum and the join round (edge.net.quorum), and whom to wait for in a round (`_missing`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable

import numpy as np

from broker import topics
from broker.client import MqttClient, TlsFiles
from broker.discovery import AgentStatus, NeighbourTable, encode_status, offline_status
from broker.exchange import (
    KeyframeRequest,
    UpdateReceiver,
    encode_keyframe_request,
    parse_keyframe_request,
)
from edge.config.schema import AgentSpec, FleetConfig
from edge.learning.gossip import Graph, Holdings, Plan
from edge.learning.learner import Branch
from edge.learning.transport import Received, update_sender
from edge.records import MetricsRow
from edge.version import software_version

log = logging.getLogger(__name__)


class MqttTransport:
    """One agent's connection: status, its updates out, neighbours' updates in (by round)."""

    def __init__(self, cfg: FleetConfig, spec: AgentSpec, branches: dict[str, Branch],
                 url: str, graph: Graph, holdings: Holdings, first_round: int = 0,
                 on_event: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.agent_id = spec.id
        self.spec = spec
        self.branches = branches
        comm = cfg.comm
        hmac_key = cfg.broker.hmac_key.encode() if cfg.broker.hmac_key else None
        self.sender = update_sender(cfg, spec.id)
        self.bytes_offset = (0, 0)  # (sent, received) counted by earlier processes of this agent
        self.receiver = UpdateReceiver(cfg.fleet, self._expected, hmac_key=hmac_key,
                                       reassembly_timeout_s=max(30.0, comm.deadline_s))
        self.neighbours = NeighbourTable(cfg.fleet, graph)
        self.holdings = holdings
        self._inbox: dict[tuple[int, str], dict[str, np.ndarray]] = defaultdict(dict)
        self._latest_round: dict[str, int] = {}  # newest round seen from each sender
        self._arrived = threading.Condition()
        self._announced_on = 0
        self.round_idx = -1               # announced in the status; -1 until round 0 starts
        self.first_round = first_round    # the first round this process runs
        self.say = on_event or (lambda line: None)
        self._seen_offline: set[str] = set()   # neighbours we saw leave (for "back" events)
        self._returning: set[str] = set()      # back online, not yet running a round
        self._broker_lost = False
        tls = cfg.broker.tls
        self.client = MqttClient(
            url, f"{cfg.fleet}-{spec.id}", on_message=self._on_message,
            # With a password set, the generated Mosquitto ACL knows each agent by its id.
            username=spec.id if cfg.broker.password else cfg.broker.username,
            password=cfg.broker.password,
            tls=TlsFiles(tls.ca_file, tls.cert_file, tls.key_file) if tls else None,
            will=(topics.status_topic(cfg.fleet, spec.id), offline_status(spec.id)))

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self, timeout_s: float = 30.0) -> None:
        """Connect, subscribe (before announcing, so no update meant for us is missed), announce."""
        fleet = self.cfg.fleet
        self.client.subscribe(topics.status_filter(fleet))
        # Only the branches we can average, from the agents that can be our neighbours: a wider
        # subscription would make every agent receive updates it must throw away.
        for other in sorted(self.senders()):
            for key, branch in self.branches.items():
                if self.holdings.get(other, {}).get(key) == branch.signature:
                    self.client.subscribe(topics.update_topic(fleet, other, key))
        self.client.subscribe(topics.control_topic(fleet))
        self.client.start(timeout_s=timeout_s)
        # Announce only once the broker has the subscriptions: neighbours start round 0 on our
        # announcement, and their round 0 updates must find us subscribed (edge.net.quorum).
        if not self.client.wait_subscribed(timeout_s):
            log.warning("%s: subscriptions not acknowledged after %g s", self.agent_id, timeout_s)
        self.announce()

    def senders(self) -> set[str]:
        """The agents whose updates we can mix: possible neighbours holding one of our branches."""
        candidates = (set(self.holdings) - {self.agent_id}
                      if self.cfg.topology.resample_each_round
                      else self.neighbours.configured_neighbours(self.agent_id))
        return {other for other in candidates
                if any(self.holdings.get(other, {}).get(key) == branch.signature
                       for key, branch in self.branches.items())}

    def announce(self) -> None:
        """Publish our retained status.

        Again after a reconnect: a restarted broker without persistence has forgotten it.
        """
        status = AgentStatus(self.agent_id, True, self.spec.modalities,
                             {k: b.signature for k, b in self.branches.items()},
                             self.spec.device, software_version(), self.round_idx, self.first_round)
        self.client.publish(topics.status_topic(self.cfg.fleet, self.agent_id),
                            encode_status(status), retain=True)
        self._announced_on = self.client.connect_count

    def stop(self) -> None:
        """Mark ourselves offline, flush, disconnect."""
        self.client.stop(publish_will=True)

    def begin_round(self, round_idx: int) -> None:
        """Announce that we run round `round_idx` (retained status: joiners read it)."""
        self.round_idx = round_idx
        self.announce()

    # --- updates ------------------------------------------------------------------------------
    def publish(self, round_idx: int, outbox: dict[str, np.ndarray]) -> None:
        """Encode and publish this round's branches, then announce the next round.

        From here on round `round_idx`'s updates are out: an agent joining now must mix the next
        round's, so the status says `round_idx + 1` (edge.learning.rounds.join_round).
        """
        for key, vector in outbox.items():
            branch = self.branches[key]
            self.client.publish_many(self.sender.encode(round_idx, key, branch.signature, vector))
        self.round_idx = round_idx + 1
        self.announce()

    def collect(self, round_idx: int, plan: Plan, wait: bool) -> Received:
        """Collect the neighbours' updates of `round_idx` for every planned branch.

        With `wait`, wait at most `comm.deadline_s` for online neighbours that ran that round;
        late or offline ones are simply absent.
        """
        if self.client.connect_count != self._announced_on:
            self.announce()
        deadline = time.monotonic() + (self.cfg.comm.deadline_s if wait else 0.0)
        with self._arrived:
            while True:
                self._watch_broker()
                missing = self._missing(round_idx, plan)
                remaining = deadline - time.monotonic()
                if not missing or remaining <= 0:
                    break
                self._arrived.wait(min(remaining, 0.25))
            received = {key: {j: v for j, v in self._inbox.get((round_idx, key), {}).items()
                              if j in weights}
                        for key, weights in plan.items()}
            for r, key in [k for k in self._inbox if k[0] <= round_idx]:
                del self._inbox[(r, key)]
        return received

    def held_from(self) -> dict[str, int]:
        """The earliest round of which the inbox holds an update of each neighbour."""
        with self._arrived:
            earliest: dict[str, int] = {}
            for (round_idx, _), vectors in self._inbox.items():
                for sender in vectors:
                    earliest[sender] = min(round_idx, earliest.get(sender, round_idx))
            return earliest

    def _missing(self, round_idx: int, plan: Plan) -> list[tuple[str, str]]:
        # Wait only for neighbours that are online *and* announce the branch at our signature:
        # anything else would be rejected on arrival anyway.
        live = {key: self.neighbours.live_neighbours(self.agent_id, key, self.branches[key].signature)
                for key in plan}
        # A neighbour already past this round sent its update of it, or it was lost (e.g. we
        # were not subscribed yet after a restart): either way there is nothing to wait for.
        # One that joined after this round (its status' first_round) never sends it.
        return [(key, j) for key, weights in plan.items() for j in weights
                if j in live[key] and self._latest_round.get(j, -1) <= round_idx
                and self._first_round(j) <= round_idx
                and j not in self._inbox.get((round_idx, key), {})]

    def _first_round(self, agent: str) -> int:
        status = self.neighbours.status(agent)
        return status.first_round if status is not None else 0

    def _watch_broker(self) -> None:
        # Narrate the connection: paho reconnects by itself, the agent only says what happens.
        connected = self.client.is_connected
        if not connected and not self._broker_lost:
            self._broker_lost = True
            self.say(f"broker connection lost ({self.client.address.url}); reconnecting")
        elif connected and self._broker_lost:
            self._broker_lost = False
            self.say(f"broker connection back ({self.client.address.url})")
            if self.client.connect_count != self._announced_on:
                self.announce()

    def public_copies(self, keys: Iterable[str]) -> dict[str, np.ndarray]:
        """Our branches as the neighbours decoded them (for CHOCO-style mixing)."""
        copies = {key: self.sender.public_copy(key) for key in keys}
        return {key: copy for key, copy in copies.items() if copy is not None}

    def publish_metrics(self, row: MetricsRow) -> None:
        """Publish a metrics row on our metrics topic (the trial runner's live view)."""
        self.client.publish(topics.metrics_topic(self.cfg.fleet, self.agent_id),
                            json.dumps(row).encode())

    # --- network thread -----------------------------------------------------------------------
    def _expected(self, key: str) -> tuple[str, int] | None:
        branch = self.branches.get(key)
        return (branch.signature, branch.size) if branch else None

    def _on_message(self, topic: str, payload: bytes) -> None:
        info = topics.parse_topic(topic)
        if info is None or info.fleet != self.cfg.fleet:
            return
        if info.kind == "status":
            before = self.neighbours.status(info.agent or "")
            self.neighbours.observe(topic, payload)
            status = self.neighbours.status(info.agent or "")
            self._narrate_presence(before, status)
            if status is not None and not status.online:
                # It may come back from an older checkpoint: its next update must not be
                # judged against what it sent before it left.
                self.receiver.forget(status.agent)
                with self._arrived:
                    self._latest_round.pop(status.agent, None)
            with self._arrived:
                self._arrived.notify_all()  # an agent going offline ends a wait for it
        elif info.kind == "update" and info.agent != self.agent_id:
            update = self.receiver.feed(topic, payload)
            if update is not None:
                with self._arrived:
                    self._inbox[(update.round_idx, update.branch_key)][update.sender] = update.vector
                    self._latest_round[update.sender] = max(
                        update.round_idx, self._latest_round.get(update.sender, -1))
                    self._arrived.notify_all()
            for sender, key in self.receiver.pop_keyframe_requests():
                request = KeyframeRequest(self.agent_id, sender, key)
                self.client.publish(topics.control_topic(self.cfg.fleet),
                                    encode_keyframe_request(request))
        elif info.kind == "control":
            asked = parse_keyframe_request(payload)
            if asked is not None and asked.target == self.agent_id:
                self.sender.request_keyframe(asked.branch_key)

    def _narrate_presence(self, before: AgentStatus | None, after: AgentStatus | None) -> None:
        """Say when one of our configured neighbours goes offline or comes back."""
        if after is None or after.agent not in self.neighbours.configured_neighbours(self.agent_id):
            return
        was_online = before is not None and before.online
        if was_online and not after.online:
            assert before is not None
            if before.round_idx >= self.cfg.training.rounds - 1:
                self.say(f"neighbour {after.agent} finished")
                return
            self._seen_offline.add(after.agent)
            self._returning.discard(after.agent)
            self.say(f"neighbour {after.agent} offline (it was in round {before.round_idx})")
        elif after.online and not was_online and after.agent in self._seen_offline:
            self._seen_offline.discard(after.agent)
            self._returning.add(after.agent)
            self.say(f"neighbour {after.agent} back online")
        elif after.agent in self._returning and after.round_idx >= 0:
            self._returning.discard(after.agent)
            self.say(f"neighbour {after.agent} joins at round {after.first_round}")

    # --- accounting ---------------------------------------------------------------------------
    def wire_bytes(self) -> tuple[int, int]:
        """(sent, received) MQTT bytes, payload plus header: this process's count on top of what
        the agent had counted before a restart (`bytes_offset`, from its checkpoint).
        """
        counters = self.client.counters
        return (self.bytes_offset[0] + counters.sent.total_bytes,
                self.bytes_offset[1] + counters.received.total_bytes)
