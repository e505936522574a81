"""Issue 13's attacks through real brokers, against agents built from the broker/ API the agent uses:
with the attacker on a broker without an ACL (amqtt) every attack is rejected and counted while
every genuine update still arrives; over Mosquitto with TLS and client certificates the same fleet
proves its publish path and exchanges signed updates end to end."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from broker import topics
from broker.client import Inbound, MqttClient
from broker.discovery import AgentStatus, NeighbourTable, encode_status, offline_will, status_message
from broker.embedded import EmbeddedBroker
from broker.envelope import Signer, Verifier
from broker.exchange import UpdateReceiver, UpdateSender
from broker.keys import new_run_id
from broker.probe import prove_publish_path
from broker.rejects import Reject
from tests.broker_support import private_mosquitto, wait_for

FLEET, BRANCH, SIG, N = "atk", "enc/accel", "s1", 20_000
AGENTS = ["a1", "a2", "a3"]
FLEET_KEY = b"attack-test-fleet-key-000"
ROUNDS = 4


def _vector(agent: str, round_idx: int) -> np.ndarray:
    seed = 100 * AGENTS.index(agent) + round_idx
    return np.random.default_rng(seed).normal(size=N).astype(np.float32)


class MiniAgent:
    """What an agent wires together from broker/: signer, verifier, sender, receiver, table, client."""

    def __init__(self, agent: str, run_id: bytes, make_client: Callable[..., MqttClient]) -> None:
        self.agent = agent
        self.signer = Signer(FLEET, agent, FLEET_KEY, run_id)
        self.verifier = Verifier(FLEET, FLEET_KEY, run_id)
        self.table = NeighbourTable(FLEET, {a: [b for b in AGENTS if b != a] for a in AGENTS},
                                    verifier=self.verifier)
        self.sender = UpdateSender(FLEET, agent, "topk:0.1", keyframe_every=0, hmac_key=FLEET_KEY,
                                   chunk_bytes=16 * 1024, run_id=run_id)
        self.receiver = UpdateReceiver(FLEET, lambda b: (SIG, N) if b == BRANCH else None,
                                       hmac_key=FLEET_KEY, run_id=run_id, round_window=1)
        self.got: dict[int, set[str]] = {}
        self.arrived = threading.Condition()
        self.client = make_client(agent, on_inbound=self.on_inbound, will=offline_will(self.signer))

    def on_inbound(self, message: Inbound) -> None:
        info = topics.parse_topic(message.topic)
        if info is None:
            return
        if info.kind == "status":
            self.table.observe(message.topic, message.payload, message.retained)
        elif info.kind == "update":
            update = self.receiver.feed(message.topic, message.payload, message.retained)
            if update is not None:
                with self.arrived:
                    self.got.setdefault(update.round_idx, set()).add(update.sender)
                    self.arrived.notify_all()

    def start(self) -> None:
        self.client.subscribe(topics.status_filter(FLEET))
        for other in AGENTS:
            if other != self.agent:
                self.client.subscribe(topics.update_topic(FLEET, other, BRANCH))
        self.client.start(timeout_s=10)
        assert self.client.wait_subscribed(10)
        prove_publish_path(self.client, self.signer, self.sender,
                           [topics.update_topic(FLEET, self.agent, BRANCH)], timeout_s=5)
        self.client.publish(*status_message(self.signer, AgentStatus(self.agent, True, ("accel",),
                                                                     {BRANCH: SIG})), retain=True)

    def run_round(self, round_idx: int) -> set[str]:
        self.receiver.set_round(round_idx)
        self.client.publish_many(self.sender.encode(round_idx, BRANCH, SIG, _vector(self.agent, round_idx)))
        others = set(AGENTS) - {self.agent}
        with self.arrived:
            self.arrived.wait_for(lambda: self.got.get(round_idx, set()) >= others, 20)
            return set(self.got.get(round_idx, set()))


def _run_fleet(make_client: Callable[..., MqttClient], run_id: bytes,
               between_rounds: Callable[[int], None] = lambda r: None) -> list[MiniAgent]:
    agents = [MiniAgent(a, run_id, make_client) for a in AGENTS]
    try:
        for agent in agents:
            agent.start()
        for agent in agents:
            assert wait_for(lambda agent=agent: agent.table.live_neighbours(agent.agent, BRANCH, SIG)
                            == set(AGENTS) - {agent.agent}, 10), agent.agent
        for round_idx in range(ROUNDS):
            threads = [threading.Thread(target=a.run_round, args=(round_idx,)) for a in agents]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            between_rounds(round_idx)
    finally:
        for agent in agents:
            agent.client.stop()
    return agents


@pytest.fixture(scope="module")
def amqtt_url() -> Iterator[str]:
    with EmbeddedBroker() as broker:
        yield broker.url


def test_every_attack_is_rejected_and_every_genuine_update_arrives(amqtt_url: str) -> None:
    # Prepare: an attacker on the same broker (amqtt: no ACL, anyone writes anything) holding
    # signed traffic captured in an earlier run, and no fleet key
    earlier_run, run_id = new_run_id(), new_run_id()
    old_sender = UpdateSender(FLEET, "a1", "topk:0.1", keyframe_every=0, hmac_key=FLEET_KEY,
                              chunk_bytes=16 * 1024, run_id=earlier_run)
    captured = [m for r in range(ROUNDS) for m in old_sender.encode(r, BRANCH, SIG, _vector("a1", r))]
    old_status = status_message(Signer(FLEET, "a2", FLEET_KEY, earlier_run), AgentStatus("a2", False))
    attacker = MqttClient(amqtt_url, "attacker", username="a9").start()
    for agent in AGENTS:  # the forged retained {"online": false}
        attacker.publish(topics.status_topic(FLEET, agent), encode_status(AgentStatus(agent, False)),
                         retain=True)
    for topic, payload in captured[:3]:  # last run's updates, kept retained for newcomers
        attacker.publish(topic, payload, retain=True)
    attacker.publish(*old_status, retain=True)
    unsigned = UpdateSender(FLEET, "a1", "fp32", run_id=run_id)
    assert attacker.flush(10)

    def attack(round_idx: int) -> None:
        # live replays of the earlier run, an unsigned update from far ahead, a forged
        # signature, and a replay of this run's own round-0 updates
        attacker.publish_many(captured)
        attacker.publish_many(unsigned.encode(2**31 - 1, BRANCH, SIG, _vector("a1", 0)))
        forged = UpdateSender(FLEET, "a1", "fp32", hmac_key=b"guessed-key-00000000", run_id=run_id)
        attacker.publish_many(forged.encode(round_idx + 1, BRANCH, SIG, _vector("a1", 0)))
        attacker.publish_many(replay)
        assert attacker.flush(10)

    replay_source = UpdateSender(FLEET, "a2", "topk:0.1", keyframe_every=0, hmac_key=FLEET_KEY,
                                 chunk_bytes=16 * 1024, run_id=run_id)
    replay = replay_source.encode(0, BRANCH, SIG, _vector("a2", 0))  # what a2 sends in round 0
    try:
        # Execute
        agents = _run_fleet(lambda a, **kw: MqttClient(amqtt_url, f"{FLEET}-{a}", username=a, **kw),
                            run_id, attack)
    finally:
        for agent in AGENTS:  # leave nothing retained behind
            attacker.publish(topics.status_topic(FLEET, agent), b"", retain=True)
        for topic, _ in captured[:3]:
            attacker.publish(topic, b"", retain=True)
        attacker.stop(publish_will=False)
    # Assert: full coverage, every round from both neighbours
    for agent in agents:
        others = set(AGENTS) - {agent.agent}
        assert all(agent.got.get(r) == others for r in range(ROUNDS)), (agent.agent, agent.got)
        assert agent.receiver.internal_errors == 0
    # and each attack counted by its reason where it landed
    a2, a3 = agents[1], agents[2]
    for receiver in (a2.receiver, a3.receiver):  # both subscribe to a1's updates
        assert receiver.rejections[Reject.RETAINED] >= 1  # one topic: the broker keeps the last
        assert receiver.rejections[Reject.OTHER_RUN] >= ROUNDS * len(captured)
        assert receiver.rejections[Reject.UNSIGNED] >= ROUNDS
        assert receiver.rejections[Reject.BAD_HMAC] >= ROUNDS
    assert a3.receiver.rejections[Reject.STALE] + a3.receiver.rejections[Reject.DUPLICATE] >= ROUNDS - 1
    for agent in agents:
        assert agent.verifier.rejections[Reject.BAD_MAGIC] >= 2  # the forged JSON statuses
    assert sum(a.verifier.rejections[Reject.OTHER_RUN] for a in agents) >= 1  # a2's old status


def test_secure_stack_end_to_end_over_tls_with_client_certificates(tmp_path: Path) -> None:
    with private_mosquitto(tmp_path, FLEET, AGENTS, certificates=True) as broker:
        run_id = new_run_id()
        agents = _run_fleet(lambda a, **kw: broker.client(a, protocol=5, **kw), run_id)
    for agent in agents:
        others = set(AGENTS) - {agent.agent}
        assert all(agent.got.get(r) == others for r in range(ROUNDS)), (agent.agent, agent.got)
        assert sum(agent.receiver.rejections.values()) == 0
        assert agent.client.refusals == [] and agent.client.max_packet_bytes is not None
    # the last wills were signed for this run: an observer would have seen them verified
    assert all(a.verifier.rejections.get(Reject.BAD_HMAC, 0) == 0 for a in agents)
