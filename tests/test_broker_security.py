"""The attacks of issue 13 at the message layer: each rejected, counted by reason, and genuine
traffic still accepted afterwards (updates, signed status/metrics/control envelopes, replays)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from broker import topics
from broker.chunking import ReassemblyLimits
from broker.discovery import AgentStatus, NeighbourTable, encode_status, offline_will, status_message
from broker.envelope import FIXED_LEN, Envelope, Kind, Signer, Verifier, open_envelope, seal
from broker.exchange import (
    KeyframeRequest,
    RunAnnouncement,
    UpdateReceiver,
    UpdateSender,
    encode_keyframe_request,
    encode_run_announcement,
    parse_keyframe_request,
    parse_run_announcement,
)
from broker.keys import KeyRing, new_run_id
from broker.rejects import Reject, RejectedError
from broker.replay import ReplayWindows

FLEET, BRANCH, SIG, N = "sec", "enc/accel", "s1", 256
FLEET_KEY = b"0123456789abcdef-fleet"
RUN_A, RUN_B = new_run_id(), new_run_id()


def _vector(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=N).astype(np.float32)


def _receiver(key: bytes | None = FLEET_KEY, run_id: bytes | None = RUN_B,
              round_window: int | None = None) -> UpdateReceiver:
    return UpdateReceiver(FLEET, lambda b: (SIG, N) if b == BRANCH else None, hmac_key=key,
                          run_id=run_id, round_window=round_window)


def _deliver(receiver: UpdateReceiver, messages: list[tuple[str, bytes]], retained: bool = False) -> list:
    return [u for u in (receiver.feed(t, p, retained) for t, p in messages) if u is not None]


def test_replayed_retained_updates_of_an_earlier_run_do_not_block_the_genuine_ones() -> None:
    # Prepare: run A's signed updates of rounds 0..5, captured
    old = UpdateSender(FLEET, "a1", "fp32", hmac_key=FLEET_KEY, run_id=RUN_A)
    captured = [m for r in range(6) for m in old.encode(r, BRANCH, SIG, _vector(r))]
    receiver = _receiver()
    # Execute: replayed as retained messages (what a new subscriber gets first), and live
    assert _deliver(receiver, captured, retained=True) == []
    assert _deliver(receiver, captured) == []
    genuine = UpdateSender(FLEET, "a1", "fp32", hmac_key=FLEET_KEY, run_id=RUN_B)
    accepted = [u for r in range(4) for u in _deliver(receiver, genuine.encode(r, BRANCH, SIG, _vector(r)))]
    # Assert: every genuine round 0..3 arrives; the replays are counted by reason
    assert [u.round_idx for u in accepted] == [0, 1, 2, 3]
    assert receiver.rejections == {Reject.RETAINED: 6, Reject.OTHER_RUN: 6}


def test_a_restarted_sender_resumes_lower_and_its_old_epoch_is_a_replay() -> None:
    receiver = _receiver()
    before = UpdateSender(FLEET, "a1", "topk:0.1", hmac_key=FLEET_KEY, run_id=RUN_B, epoch=0)
    old = {r: before.encode(r, BRANCH, SIG, _vector(r)) for r in range(6)}
    for r in range(5):
        assert len(_deliver(receiver, old[r])) == 1
    # Execute: the sender restarts from its round-2 checkpoint with the next epoch
    after = UpdateSender(FLEET, "a1", "topk:0.1", hmac_key=FLEET_KEY, run_id=RUN_B, epoch=1)
    resumed = _deliver(receiver, after.encode(3, BRANCH, SIG, _vector(30)))
    replayed = _deliver(receiver, old[5])  # a message from before the restart arrives late
    # Assert: the resumed round 3 is taken (not "stale"), as a keyframe, and the old one is not
    assert [(u.round_idx, u.keyframe) for u in resumed] == [(3, True)]
    assert replayed == [] and receiver.rejections == {Reject.REPLAYED: 1}
    assert receiver.epoch("a1") == 1
    assert len(_deliver(receiver, after.encode(4, BRANCH, SIG, _vector(40)))) == 1


def test_a_round_far_ahead_is_out_of_window_and_does_not_make_later_rounds_stale() -> None:
    # Prepare: no HMAC at all (the case), a window of 2 rounds
    receiver = _receiver(key=None, run_id=None, round_window=2)
    sender = UpdateSender(FLEET, "a1", "fp32")
    receiver.set_round(0)
    # Execute
    forged = _deliver(receiver, sender.encode(4_000_000_000 % 2**31, BRANCH, SIG, _vector(0)))
    genuine = []
    for r in range(5):
        receiver.set_round(r)
        genuine += _deliver(receiver, sender.encode(r, BRANCH, SIG, _vector(r)))
    early = _deliver(receiver, sender.encode(7, BRANCH, SIG, _vector(7)))  # our round is 4: 3 ahead
    # Assert
    assert forged == [] and early == []
    assert [u.round_idx for u in genuine] == [0, 1, 2, 3, 4]
    assert receiver.rejections == {Reject.OUT_OF_WINDOW: 2}


@pytest.mark.parametrize("sender_key,reason", [(None, Reject.UNSIGNED),
                                               (b"guessed-fleet-key", Reject.BAD_HMAC)])
def test_unsigned_and_forged_updates_are_rejected(sender_key: bytes | None, reason: Reject) -> None:
    receiver = _receiver()
    forged = UpdateSender(FLEET, "a1", "fp32", hmac_key=sender_key, run_id=RUN_B)
    assert _deliver(receiver, forged.encode(0, BRANCH, SIG, _vector(0))) == []
    assert receiver.rejections == {reason: 1} and receiver.last_round("a1", BRANCH) is None


def test_an_agent_cannot_sign_for_another() -> None:
    # a2 holds the fleet key, so it can derive a1's key: the HMAC alone does not stop it. What
    # stops it is the broker's ACL (a2 cannot publish on a1's topics, test_broker_acl) plus this:
    # a message on a2's topic claiming sender a1 is refused, whoever signed it.
    receiver = _receiver()
    a1 = UpdateSender(FLEET, "a1", "fp32", hmac_key=FLEET_KEY, run_id=RUN_B)
    (_topic, payload), = a1.encode(0, BRANCH, SIG, _vector(0))
    assert receiver.feed(topics.update_topic(FLEET, "a2", BRANCH), payload) is None
    assert receiver.rejections == {Reject.TOPIC_MISMATCH: 1}
    # and a2's own key does not verify a message naming a1
    explicit = KeyRing(FLEET, agent_keys={"a1": b"a1-only-key-0123", "a2": b"a2-only-key-0123"})
    strict = UpdateReceiver(FLEET, lambda b: (SIG, N), hmac_key=explicit, run_id=RUN_B)
    impostor = UpdateSender(FLEET, "a1", "fp32", run_id=RUN_B,
                            hmac_key=KeyRing(FLEET, agent_keys={"a1": b"a2-only-key-0123"}))
    assert _deliver(strict, impostor.encode(0, BRANCH, SIG, _vector(0))) == []
    assert strict.rejections == {Reject.BAD_HMAC: 1}


def test_a_probe_on_the_update_tree_is_not_counted_as_a_bad_update() -> None:
    receiver = _receiver()
    signer = Signer(FLEET, "a1", FLEET_KEY, RUN_B)
    assert receiver.feed(topics.probe_topic(FLEET, "a1"), signer.seal(Kind.PROBE, b"x")) is None
    assert sum(receiver.rejections.values()) == 0


def test_forged_chunk_flood_stays_bounded_and_counted() -> None:
    # Prepare: issue 14 kind 2 -- 14,000 first chunks of 2-chunk updates with distinct digests
    n = 100_000
    receiver = UpdateReceiver(FLEET, lambda b: (SIG, n), limits=ReassemblyLimits(
        max_pending_bytes=8 * 1024 * 1024, max_pending_per_sender=16, max_pending_total=64))
    sender = UpdateSender(FLEET, "a1", "fp32", chunk_bytes=256 * 1024)
    first, second = sender.encode(0, BRANCH, SIG, _vector(0).repeat(n // N + 1)[:n])
    # Execute
    for i in range(14_000):
        forged = bytearray(first[1])
        forged[36:40] = i.to_bytes(4, "big")  # inside the sha256 field: another update each time
        receiver.feed(first[0], bytes(forged))
        assert receiver.pending <= 16 and receiver.pending_bytes <= 8 * 1024 * 1024
    genuine = [u for u in (receiver.feed(*first), receiver.feed(*second)) if u is not None]
    # Assert: bounded, every drop counted, and a genuine update still gets through
    assert receiver.rejections[Reject.EVICTED] == 14_000 - 16 + 1  # the genuine one took a slot too
    assert len(genuine) == 1 and receiver.internal_errors == 0


# --- envelopes -------------------------------------------------------------------------------------

def test_envelope_round_trip_and_layout() -> None:
    envelope = Envelope(Kind.METRICS, FLEET, "a1", RUN_A, 3, 9, b'{"round": 1}')
    key = KeyRing(FLEET, FLEET_KEY).key_for("a1")
    data = seal(envelope, key)
    assert data[:4] == b"PESG" and len(data) == FIXED_LEN + 2 + len(FLEET) + 2 + 32 + 12
    assert open_envelope(data, KeyRing(FLEET, FLEET_KEY)) == envelope
    assert open_envelope(seal(envelope, None), None) == envelope
    for offset in range(len(data)):  # every byte is covered: header, strings, HMAC, body
        tampered = bytearray(data)
        tampered[offset] ^= 0x40
        with pytest.raises(RejectedError):
            open_envelope(bytes(tampered), KeyRing(FLEET, FLEET_KEY))


STATUS_A1 = topics.status_topic(FLEET, "a1")


@pytest.mark.parametrize("topic,payload,retained,reason", [
    (STATUS_A1, encode_status(AgentStatus("a1", online=False)), True, Reject.BAD_MAGIC),
    (topics.status_topic(FLEET, "a1"), seal(Envelope(Kind.STATUS, FLEET, "a1", RUN_B, 0, 0, b"{}"), None),
     True, Reject.UNSIGNED),
    (STATUS_A1, Signer(FLEET, "a1", b"wrong-fleet-key!", RUN_B).seal(Kind.STATUS, b"{}"),
     True, Reject.BAD_HMAC),
    (topics.status_topic(FLEET, "a1"), Signer(FLEET, "a1", FLEET_KEY, RUN_A).seal(Kind.STATUS, b"{}"),
     True, Reject.OTHER_RUN),
    (topics.status_topic(FLEET, "a2"), Signer(FLEET, "a1", FLEET_KEY, RUN_B).seal(Kind.STATUS, b"{}"),
     True, Reject.TOPIC_MISMATCH),
    (topics.status_topic(FLEET, "a1"), Signer(FLEET, "a1", FLEET_KEY, RUN_B).seal(Kind.METRICS, b"{}"),
     False, Reject.WRONG_KIND),
    (topics.metrics_topic(FLEET, "a1"), Signer(FLEET, "a1", FLEET_KEY, RUN_B).seal(Kind.METRICS, b"{}"),
     True, Reject.RETAINED),
    (topics.control_topic(FLEET), Signer("other", "a1", FLEET_KEY, RUN_B).seal(Kind.CONTROL, b"{}"),
     False, Reject.BAD_HMAC),  # another fleet's HKDF context gives another key
    (topics.update_topic(FLEET, "a1", BRANCH), Signer(FLEET, "a1", FLEET_KEY, RUN_B).seal(Kind.STATUS, b"{}"),
     False, Reject.TOPIC_MISMATCH),
])
def test_verifier_rejects_with_a_reason(topic: str, payload: bytes, retained: bool, reason: Reject) -> None:
    verifier = Verifier(FLEET, FLEET_KEY, RUN_B)
    assert verifier.open(topic, payload, retained) is None
    assert verifier.rejections == {reason: 1}


def test_forged_offline_statuses_leave_the_agent_online() -> None:
    # Prepare: a2 announces itself, signed
    verifier = Verifier(FLEET, FLEET_KEY, RUN_B)
    table = NeighbourTable(FLEET, {"a1": ["a2"]}, verifier=verifier)
    a2 = Signer(FLEET, "a2", FLEET_KEY, RUN_B)
    topic, online = status_message(a2, AgentStatus("a2", True, ("accel",), {BRANCH: SIG}))
    assert table.observe(topic, online)
    # Execute: the forged retained {"online": false}, an empty (cleared) status, a
    # replay of a2's own genuine status and a leftover offline status of another run
    forged = encode_status(AgentStatus("a2", online=False))
    other_run = Signer(FLEET, "a2", FLEET_KEY, RUN_A).seal(Kind.STATUS, forged)
    for payload in (forged, b"", online, other_run):
        assert not table.observe(topic, payload)
    # Assert
    assert table.live_neighbours("a1", BRANCH, SIG) == {"a2"}
    assert verifier.rejections == {Reject.BAD_MAGIC: 1, Reject.TRUNCATED: 1, Reject.REPLAYED: 1,
                                   Reject.OTHER_RUN: 1}
    # while a2's genuine will still takes it offline
    assert table.observe(*offline_will(a2)())
    assert table.live_neighbours("a1", BRANCH, SIG) == set() and table.epoch("a2") == 0


def test_the_will_signed_at_connect_is_accepted_after_later_statuses() -> None:
    verifier = Verifier(FLEET, FLEET_KEY, RUN_B)
    signer = Signer(FLEET, "a1", FLEET_KEY, RUN_B)
    will_topic, will = offline_will(signer)()  # sealed at connect, numbered ahead of its stream
    for _ in range(500):  # far more statuses than the replay window holds (a long trial)
        status = status_message(signer, AgentStatus("a1"))[1]
        assert verifier.open(will_topic, status, retained=True) is not None
    assert verifier.open(will_topic, will, retained=True) is not None  # the agent died: accepted
    assert verifier.open(will_topic, will, retained=True) is None  # but only once
    assert verifier.rejections == {Reject.REPLAYED: 1}
    # It reconnects: a new will, and its statuses continue beyond the published one.
    _, second_will = offline_will(signer)()
    back = status_message(signer, AgentStatus("a1"))[1]
    assert verifier.open(will_topic, back, retained=True) is not None
    assert verifier.open(will_topic, second_will, retained=True) is not None


def test_replay_windows() -> None:
    windows = ReplayWindows(size=4)
    assert [windows.admit("s", 0, seq) for seq in (0, 2, 1)] == [None] * 3
    assert windows.admit("s", 0, 1) is Reject.REPLAYED  # seen
    assert windows.admit("s", 0, 9) is None
    assert windows.admit("s", 0, 5) is Reject.REPLAYED  # 4 behind the highest: out of the window
    assert windows.admit("s", 0, 6) is None and windows.admit("s", 0, 6) is Reject.REPLAYED
    assert windows.admit("s", 1, 0) is None  # a restart: the window starts again
    assert windows.admit("s", 0, 100) is Reject.REPLAYED  # the old epoch is over
    assert windows.admit("other", 0, 0) is None and windows.epoch("s") == 1
    bounded = ReplayWindows(max_streams=3)
    for i in range(10):
        bounded.admit(i, 0, 0)
    assert len(bounded._states) == 3


def test_signer_numbers_each_kind_and_follows_a_new_run() -> None:
    signer = Signer(FLEET, "a1", FLEET_KEY, RUN_A, epoch=5)
    keys = KeyRing(FLEET, FLEET_KEY)
    seqs = [open_envelope(signer.seal(kind, b"{}"), keys).seq
            for kind in (Kind.METRICS, Kind.METRICS, Kind.STATUS, Kind.METRICS)]
    assert seqs == [0, 1, 0, 2]
    signer.set_run(RUN_B)
    opened = open_envelope(signer.seal(Kind.CONTROL, b"{}"), keys)
    assert (opened.run_id, opened.epoch) == (RUN_B, 5)
    with pytest.raises(ValueError, match="run_id"):
        Signer(FLEET, "a1", FLEET_KEY, b"short")
    with pytest.raises(ValueError, match="epoch"):
        Signer(FLEET, "a1", FLEET_KEY, RUN_A, epoch=-1)


def test_control_messages_name_their_author() -> None:
    request = KeyframeRequest("a2", "a1", BRANCH)
    body = encode_keyframe_request(request)
    assert parse_keyframe_request(body, sender="a2") == request
    assert parse_keyframe_request(body, sender="a3") is None  # a3 asks in a2's name
    announcement = RunAnnouncement(RUN_B, "operator")
    assert parse_run_announcement(encode_run_announcement(announcement)) == announcement
    for bad in (b"{", b"[]", json.dumps({"type": "run", "run_id": "zz", "announced_by": "x"}).encode(),
                json.dumps({"type": "run", "run_id": "00", "announced_by": "x"}).encode(), body):
        assert parse_run_announcement(bad) is None
