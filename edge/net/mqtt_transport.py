"""The networked agent's transport: its branches published over MQTT, an inbox of its neighbours'.

Implements `edge.learning.transport.Transport`; trial impairments wrap it (edge.net.impaired).
The retained status says where the agent is: the round it runs (`round`, -1 while it waits for
the quorum; the next round as soon as this round's updates are published) and the first round
this process runs (`first_round`). Neighbours read both: the
quorum and the join round (edge.net.quorum), and whom to wait for in a round (`_missing`).

Every message is bound to one run and signed (docs/security.md): updates carry the wire v2 header
(broker.wire), status, metrics and control travel in signed envelopes (broker.envelope), all with
the run id, this process's epoch and, when the config names a fleet key, an HMAC with the agent's
key. What arrives is verified: unsigned, forged, replayed, other-run, retained-update and
out-of-window messages are rejected and counted by reason (`rejections`). The agent logs in with
its own identity (edge.config.secrets) and proves at start that its publishes reach the broker
(broker.probe).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable

import numpy as np

from broker import topics
from broker.client import Inbound, MqttClient, parse_broker_url
from broker.discovery import AgentStatus, NeighbourTable, offline_will, status_message
from broker.envelope import Kind, Signer, Verifier
from broker.exchange import (
    KeyframeRequest,
    RunAnnouncement,
    UpdateReceiver,
    encode_keyframe_request,
    encode_run_announcement,
    parse_keyframe_request,
    parse_run_announcement,
)
from broker.keys import NO_RUN, new_run_id
from broker.probe import prove_publish_path
from broker.rejects import Reject
from edge.config.schema import AgentSpec, FleetConfig
from edge.config.secrets import fleet_keys, mqtt_login
from edge.learning.gossip import Graph, Holdings, Plan
from edge.learning.learner import Branch
from edge.learning.transport import Received, update_sender
from edge.records import MetricsRow
from edge.version import software_version

# How long a standalone agent (no --run-id) listens for the retained run announcement before it
# fixes the run itself: retained messages arrive right after the SUBACK.
RUN_SETTLE_S = 1.5

log = logging.getLogger(__name__)


class MqttTransport:
    """One agent's connection: status, its updates out, neighbours' updates in (by round)."""

    def __init__(self, cfg: FleetConfig, spec: AgentSpec, branches: dict[str, Branch],
                 url: str, graph: Graph, holdings: Holdings, first_round: int = 0,
                 on_event: Callable[[str], None] | None = None, *, run_id: bytes | None = None,
                 epoch: int = 0, protocol: int = 0) -> None:
        self.cfg = cfg
        self.agent_id = spec.id
        self.spec = spec
        self.branches = branches
        comm = cfg.comm
        keys = fleet_keys(cfg)        # UserError (one line) for a bad key file
        login = mqtt_login(cfg, spec.id)
        self.signing = keys is not None
        self.run_fixed = run_id is not None  # given by the trial runner; else learnt or made
        self.run_given = run_id is not None  # given: never changed by announcements
        run = run_id or NO_RUN
        self.signer = Signer(cfg.fleet, spec.id, keys, run, epoch)
        self.verifier = Verifier(cfg.fleet, keys, run_id)
        # Control messages are opened whatever their run: a run announcement of another run is
        # what a standalone agent converges on (`_converge`); anything else must be of ours.
        self.control_verifier = Verifier(cfg.fleet, keys)
        self.sender = update_sender(cfg, spec.id, keys, run, epoch)
        self.bytes_offset = (0, 0)  # (sent, received) counted by earlier processes of this agent
        self.receiver = UpdateReceiver(cfg.fleet, self._expected, hmac_key=keys,
                                       reassembly_timeout_s=max(30.0, comm.deadline_s),
                                       run_id=run_id, round_window=cfg.broker.round_window)
        self.neighbours = NeighbourTable(cfg.fleet, graph, verifier=self.verifier)
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
        self._link_returns = 0
        self._announcements: list[RunAnnouncement] = []
        # While the publish probe is out a run switch waits: the probe is sealed for the run we
        # had, and verifying it against another would fail it (edge.net.mqtt_transport._converge).
        self._switch_lock = threading.Lock()
        self._probing = False
        self._pending_switch: RunAnnouncement | None = None
        self._accepted_on: dict[str, bytes] = {}  # status/control topic -> last accepted payload
        self.metrics_dropped = 0
        self.client = MqttClient(
            url, f"{cfg.fleet}-{spec.id}", on_inbound=self._on_inbound,
            username=login.username, password=login.password,
            # TLS files only for mqtts:// (the trial's embedded broker listens on plain mqtt://).
            tls=login.tls if parse_broker_url(url).tls else None,
            # MQTT 5 where the broker speaks it (Mosquitto: refusals and the packet limit are
            # read), else 3.1.1 (amqtt); the trial runner says 4 for its embedded amqtt broker.
            protocol=protocol, will=offline_will(self.signer))

    @property
    def run_id(self) -> bytes:
        """The run this agent signs for (all zeros until it is known)."""
        return self.signer.run_id

    @property
    def rejections(self) -> Counter[str]:
        """Messages rejected so far, by reason: updates (receiver) and envelopes (verifier)."""
        counts: Counter[str] = Counter()
        # dict() copies in one step under the GIL: the network thread may be adding a reason.
        for counter in (self.receiver.rejections, self.verifier.rejections,
                        self.control_verifier.rejections):
            for reason, n in dict(counter).items():
                counts[reason.value] += n
        return counts

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self, timeout_s: float = 30.0) -> None:
        """Connect, subscribe, learn or fix the run, prove the publish path, then announce.

        Subscriptions come before the announcement, so no update meant for us is missed.

        Raises
        ------
        ConnectionError
            When the broker does not accept the connection (its reason in the message).
        broker.probe.PublishProbeError, broker.refusals.BrokerRefusedError
            When our publishes (or subscriptions) do not reach the broker: one line naming the
            topic and the likely cause.
        """
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
        if not self.run_fixed:
            self._settle_run()
        with self._switch_lock:
            self._probing = True
        try:
            chunk_bytes = prove_publish_path(
                self.client, self.signer, self.sender,
                [topics.update_topic(fleet, self.agent_id, key) for key in self.branches],
                timeout_s=min(timeout_s, 10.0))
        finally:
            with self._switch_lock:
                self._probing, pending = False, self._pending_switch
                self._pending_switch = None
        if pending is not None:
            self._converge(pending)
        limit = self.client.max_packet_bytes
        self.say(f"publish path proven (a signed probe came back on "
                 f"{topics.probe_topic(fleet, self.agent_id)}); update chunks of at most "
                 f"{chunk_bytes} bytes" + (f" (the broker's packet limit is {limit} bytes)"
                                            if limit is not None else ""))
        self.announce()

    def _settle_run(self) -> None:
        """A standalone agent: adopt the run announced (retained) on the control topic, or fix it.

        An agent the trial runner started was given the run id instead. Boards started together
        on an empty broker may each fix a run; until round 0 an agent that hears a smaller run id
        announced switches to it (`_converge`), so the fleet ends in one run.
        """
        deadline = time.monotonic() + RUN_SETTLE_S
        with self._arrived:
            while not self._announcements and time.monotonic() < deadline:
                self._arrived.wait(0.05)
            heard = list(self._announcements)
        if heard:
            run_id, by = min(heard).run_id, min(heard).announced_by
            self.set_run(run_id)
            self.say(f"joins run {run_id.hex()[:8]} (announced by {by})")
            return
        run_id = new_run_id()
        self.set_run(run_id)  # sealed for the new run: receivers check the envelope's run is the one named
        self.client.publish(topics.control_topic(self.cfg.fleet), self.signer.seal(
            Kind.CONTROL, encode_run_announcement(RunAnnouncement(run_id, self.agent_id))),
            retain=True)
        self.say(f"no run announced on the control topic: fixes run {run_id.hex()[:8]}")

    def set_run(self, run_id: bytes) -> None:
        """Sign for, and accept only, `run_id` from now on."""
        self.run_fixed = True
        self.signer.set_run(run_id)
        self.sender.set_run(run_id)
        self.verifier.set_run(run_id)
        self.receiver.set_run(run_id)

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
        topic, payload = status_message(self.signer, status)
        self.client.publish(topic, payload, retain=True)
        self._announced_on = self.client.connect_count

    def stop(self) -> None:
        """Mark ourselves offline, flush, disconnect."""
        self.client.stop(publish_will=True)

    def begin_round(self, round_idx: int) -> None:
        """Announce that we run round `round_idx` (retained status: joiners read it)."""
        self.round_idx = round_idx
        self._move_window()
        self.announce()

    def _move_window(self) -> None:
        # Updates may run `round_window` rounds ahead of the furthest round we know of: ours, or
        # one a neighbour announced in a verified status (a joiner hears the fleet's rounds).
        known = [s.round_idx for s in self.neighbours.online_statuses().values()]
        self.receiver.set_round(max([self.round_idx, *known]))

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
        # MQTT 5: a PUBACK refusing one of our publishes (the ACL changed under us) stops the
        # agent with one line instead of a trial that exchanges nothing.
        self.client.raise_for_refusals()

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
        if self.client.carrier_returns != self._link_returns:
            self._link_returns = self.client.carrier_returns
            self.say("link back after an outage: reconnected at once instead of waiting out "
                     "TCP's retransmission back-off")
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
        try:
            self.client.publish(topics.metrics_topic(self.cfg.fleet, self.agent_id),
                                self.signer.seal(Kind.METRICS, json.dumps(row).encode()))
        except ValueError as exc:
            # Live view only (the record is the metrics file): a row above the broker's packet
            # limit is left out, once said.
            if not self.metrics_dropped:
                log.warning("%s: metrics row not published: %s", self.agent_id, exc)
            self.metrics_dropped += 1

    # --- network thread -----------------------------------------------------------------------
    def _expected(self, key: str) -> tuple[str, int] | None:
        branch = self.branches.get(key)
        return (branch.signature, branch.size) if branch else None

    def _repeat(self, topic: str, payload: bytes) -> bool:
        # A retained status or run announcement delivered again (after a reconnect or a
        # resubscription) is the message already accepted, not a replay: skip it quietly.
        return self._accepted_on.get(topic) == payload

    def _on_inbound(self, message: Inbound) -> None:
        topic, payload = message.topic, message.payload
        info = topics.parse_topic(topic)
        if info is None or info.fleet != self.cfg.fleet:
            return
        if info.kind == "status":
            if self._repeat(topic, payload):
                return
            before = self.neighbours.status(info.agent or "")
            if not self.neighbours.observe(topic, payload, message.retained):
                return  # rejected (counted by the verifier) or unparsable
            self._accepted_on[topic] = payload
            status = self.neighbours.status(info.agent or "")
            self._narrate_presence(before, status)
            if status is not None and not status.online:
                # It may come back from an older checkpoint: its next update must not be
                # judged against what it sent before it left.
                self.receiver.forget(status.agent)
                with self._arrived:
                    self._latest_round.pop(status.agent, None)
            self._move_window()
            with self._arrived:
                self._arrived.notify_all()  # an agent going offline ends a wait for it
        elif info.kind == "update" and info.agent != self.agent_id:
            update = self.receiver.feed(topic, payload, message.retained)
            if update is not None:
                with self._arrived:
                    self._inbox[(update.round_idx, update.branch_key)][update.sender] = update.vector
                    self._latest_round[update.sender] = max(
                        update.round_idx, self._latest_round.get(update.sender, -1))
                    self._arrived.notify_all()
            for sender, key in self.receiver.pop_keyframe_requests():
                request = KeyframeRequest(self.agent_id, sender, key)
                self.client.publish(topics.control_topic(self.cfg.fleet),
                                    self.signer.seal(Kind.CONTROL, encode_keyframe_request(request)))
        elif info.kind == "control":
            self._on_control(topic, payload, message.retained)

    def _on_control(self, topic: str, payload: bytes, retained: bool) -> None:
        if self._repeat(topic, payload):
            return
        envelope = self.control_verifier.open(topic, payload, retained)
        if envelope is None:
            return
        if retained:
            self._accepted_on[topic] = payload
        announced = parse_run_announcement(envelope.body)
        if announced is not None:
            if announced.run_id == envelope.run_id:  # sealed for the run it names
                with self._arrived:
                    self._announcements.append(announced)
                    self._arrived.notify_all()
                self._converge(announced)
            return
        if self.run_fixed and envelope.run_id != self.run_id:
            self.control_verifier.rejections[Reject.OTHER_RUN] += 1
            return
        asked = parse_keyframe_request(envelope.body, envelope.sender)
        if asked is not None and asked.target == self.agent_id:
            self.sender.request_keyframe(asked.branch_key)

    def _converge(self, announced: RunAnnouncement) -> None:
        """Before round 0, switch to a smaller run id announced by another fleet member.

        Every agent that fixed a run of its own thus ends in the smallest one; the switcher
        announces that run again (retained: later agents read it), announces its status signed
        for it, and reads the retained statuses again (those it rejected as another run's).
        While the publish probe is out the switch is held and made when it is back: the probe
        was sealed for the run we had.
        """
        if (self.run_given or not self.run_fixed or self.round_idx >= 0
                or announced.run_id >= self.run_id):
            return
        with self._switch_lock:
            if self._probing:  # `start` switches once the probe is back
                if self._pending_switch is None or announced < self._pending_switch:
                    self._pending_switch = announced
                return
        self.say(f"switches to run {announced.run_id.hex()[:8]} (announced by "
                 f"{announced.announced_by}; the smaller run id of two fixed at the same time)")
        self.set_run(announced.run_id)
        fleet = self.cfg.fleet
        self.client.publish(topics.control_topic(fleet), self.signer.seal(
            Kind.CONTROL, encode_run_announcement(announced)), retain=True)
        self.announce()
        self.client.unsubscribe(topics.status_filter(fleet))
        self.client.subscribe(topics.status_filter(fleet))

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
