"""Sender/receiver: codecs end to end, keyframes and references, and that nothing bad gets through."""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest

from broker import topics, wire
from broker.codecs import CodecId
from broker.exchange import (
    KeyframeRequest,
    UpdateReceiver,
    UpdateSender,
    encode_keyframe_request,
    parse_keyframe_request,
)
from broker.keys import NO_RUN
from broker.rejects import Reject

FLEET, BRANCH, SIG = "f", "syn/accel@accel+gyro", "9c0ffee1"
KEY = b"k3y"


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def _vector(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=n).astype(np.float32)


def _receiver(n: int, key: bytes | None = None, clock: FakeClock | None = None) -> UpdateReceiver:
    return UpdateReceiver(FLEET, lambda b: (SIG, n) if b == BRANCH else None, hmac_key=key,
                          **({"clock": clock} if clock else {}))


def _deliver(r: UpdateReceiver, messages: list[tuple[str, bytes]]) -> list:
    return [u for u in (r.feed(t, p) for t, p in messages) if u is not None]


@pytest.mark.parametrize("spec,tolerance", [("fp32", 0.0), ("fp16", 2e-3), ("int8", 0.02),
                                            ("choco+int8", 0.02), ("choco+fp16", 2e-3),
                                            ("topk:0.05", None)])
def test_every_codec_delivers_the_senders_reference(spec: str, tolerance: float | None) -> None:
    # Prepare
    n = 5000
    sender = UpdateSender(FLEET, "a1", spec, keyframe_every=4, hmac_key=KEY, chunk_bytes=4096)
    receiver = _receiver(n, KEY)
    x = _vector(n)
    rng = np.random.default_rng(1)
    # Execute / Assert
    for round_idx in range(6):
        x = x + 0.05 * rng.normal(size=n).astype(np.float32)
        updates = _deliver(receiver, sender.encode(round_idx, BRANCH, SIG, x))
        assert len(updates) == 1
        u = updates[0]
        assert (u.sender, u.round_idx, u.branch_key, u.signature) == ("a1", round_idx, BRANCH, SIG)
        assert u.vector.dtype == np.float32 and u.vector.shape == (n,)
        assert u.keyframe == (round_idx % 4 == 0 or not sender.spec.difference)
        state = sender._branches[BRANCH]
        if state.reference is not None:  # difference coding: both sides hold the same x̂
            np.testing.assert_array_equal(u.vector, state.reference)
        if tolerance is not None:
            assert np.abs(u.vector - x).max() <= tolerance * np.abs(x).max() + 1e-6
    assert sum(receiver.rejections.values()) == 0
    assert receiver.accepted == 6


def test_multi_chunk_messages_stay_under_the_limit() -> None:
    sender = UpdateSender(FLEET, "a1", "fp32", hmac_key=KEY)
    messages = sender.encode(0, BRANCH, SIG, _vector(400_000))
    assert len(messages) == 7
    assert all(len(p) <= 256 * 1024 for _, p in messages)
    assert {t for t, _ in messages} == {topics.update_topic(FLEET, "a1", BRANCH)}
    stats = sender.stats[BRANCH]
    assert stats.payload_bytes == 1_600_000 and stats.messages == 7


def test_choco_topk_converges_to_a_fixed_vector_and_noef_does_not() -> None:
    n = 4000
    x = _vector(n, 3)
    errors = {}
    for spec in ("topk:0.05", "topk:0.05,noef"):
        sender = UpdateSender(FLEET, "a1", spec, keyframe_every=0)
        receiver = _receiver(n)
        _deliver(receiver, sender.encode(0, BRANCH, SIG, np.zeros(n, np.float32)))  # keyframe
        for round_idx in range(1, 60):
            (u,) = _deliver(receiver, sender.encode(round_idx, BRANCH, SIG, x))
        errors[spec] = float(np.abs(u.vector - x).max())
    assert errors["topk:0.05"] < 1e-2
    assert errors["topk:0.05,noef"] > 0.5


def test_missed_delta_is_refused_then_recovered_by_keyframe_request() -> None:
    n = 300
    sender = UpdateSender(FLEET, "a1", "topk:0.1", keyframe_every=0)
    receiver = _receiver(n)
    _deliver(receiver, sender.encode(0, BRANCH, SIG, _vector(n, 0)))
    sender.encode(1, BRANCH, SIG, _vector(n, 1))  # lost on the way
    assert _deliver(receiver, sender.encode(2, BRANCH, SIG, _vector(n, 2))) == []
    assert receiver.rejections[Reject.NO_REFERENCE] == 1
    assert receiver.reference_round("a1", BRANCH) == 0
    wanted = receiver.pop_keyframe_requests()
    assert wanted == [("a1", BRANCH)] and receiver.pop_keyframe_requests() == []
    request = parse_keyframe_request(encode_keyframe_request(KeyframeRequest("a2", *wanted[0])))
    assert request == KeyframeRequest("a2", "a1", BRANCH)
    sender.request_keyframe(request.branch_key)
    (u,) = _deliver(receiver, sender.encode(3, BRANCH, SIG, _vector(n, 3)))
    assert u.keyframe
    np.testing.assert_array_equal(u.vector, _vector(n, 3))


def test_receiver_never_applies_a_delta_to_another_senders_reference() -> None:
    n = 200
    s1 = UpdateSender(FLEET, "a1", "topk:0.1", keyframe_every=0)
    s2 = UpdateSender(FLEET, "a2", "topk:0.1", keyframe_every=0)
    receiver = _receiver(n)
    _deliver(receiver, s1.encode(0, BRANCH, SIG, _vector(n, 0)))
    s2.encode(0, BRANCH, SIG, _vector(n, 5))  # a2's keyframe never arrives
    assert _deliver(receiver, s2.encode(1, BRANCH, SIG, _vector(n, 6))) == []
    assert receiver.rejections[Reject.NO_REFERENCE] == 1


def test_duplicates_stale_and_interleaving() -> None:
    n = 20_000
    senders = [UpdateSender(FLEET, f"a{i}", "fp32", chunk_bytes=8192) for i in range(3)]
    receiver = _receiver(n)
    batches = [s.encode(5, BRANCH, SIG, _vector(n, i)) for i, s in enumerate(senders)]
    events = [m for batch in batches for m in batch] * 2
    random.Random(0).shuffle(events)
    updates = _deliver(receiver, events)
    assert sorted(u.sender for u in updates) == ["a0", "a1", "a2"]
    for u in updates:
        np.testing.assert_array_equal(u.vector, _vector(n, int(u.sender[1])))
    assert receiver.rejections[Reject.DUPLICATE] > 0
    duplicates_before = receiver.rejections[Reject.DUPLICATE]
    newer = senders[0].encode(6, BRANCH, SIG, _vector(n, 9))
    assert len(_deliver(receiver, newer)) == 1
    assert _deliver(receiver, batches[0][:1]) == []  # a late redelivery of round 5: a duplicate
    assert receiver.rejections[Reject.DUPLICATE] == duplicates_before + 1
    old = senders[0].encode(4, BRANCH, SIG, _vector(n, 0))
    assert _deliver(receiver, old) == []
    assert receiver.rejections[Reject.STALE] == len(old)


def test_incomplete_update_expires_with_a_count() -> None:
    clock = FakeClock()
    receiver = _receiver(10_000, clock=clock)
    messages = UpdateSender(FLEET, "a1", "fp32", chunk_bytes=4096).encode(0, BRANCH, SIG, _vector(10_000))
    _deliver(receiver, messages[:-1])
    assert receiver.pending == 1
    clock.now_s = 31.0
    assert receiver.expire() == 1
    assert receiver.rejections[Reject.INCOMPLETE] == 1 and receiver.pending == 0


def _forge(payload: bytes, n: int, codec: CodecId = CodecId.FP32, **fields: object) -> tuple[str, bytes]:
    """A well-formed message carrying an arbitrary payload (what a buggy or hostile sender sends)."""
    h = wire.Header(FLEET, "a1", 0, BRANCH, SIG, codec, -1, n, len(payload), 0, 1, 0, len(payload),
                    b"", NO_RUN, 0)._replace(**fields)
    h = h._replace(keep_reference=h.ref_round >= 0)
    h = h._replace(sha256=wire.update_digest(h, payload))
    return topics.update_topic(FLEET, h.sender, BRANCH), wire.encode_message(h, payload)


def test_named_bad_cases_are_rejected_with_their_reason(caplog: pytest.LogCaptureFixture) -> None:
    n = 100
    good_topic, good = UpdateSender(FLEET, "a1", "fp32").encode(0, BRANCH, SIG, _vector(n))[0]
    nan = _vector(n)
    nan[7] = np.nan
    bad_topk = b"\x00\x00\x00\x01\x00\x00\x01\x00" + b"\x00" * 5 + b"\x7f"  # index 127 >= n=100
    cases: dict[Reject, tuple[str, bytes, bytes | None]] = {
        Reject.TRUNCATED: (good_topic, good[:-5], None),
        Reject.OVERSIZED: (good_topic, good + b"\x00" * 300_000, None),
        Reject.BAD_MAGIC: (good_topic, b"MQTT" + good[4:], None),
        Reject.BAD_VERSION: (good_topic, good[:4] + b"\x09" + good[5:], None),
        Reject.WRONG_SIGNATURE: UpdateSender(FLEET, "a1", "fp32").encode(0, BRANCH, "other", _vector(n))[0]
        + (None,),
        Reject.WRONG_SHAPE: UpdateSender(FLEET, "a1", "fp32").encode(0, BRANCH, SIG, _vector(n + 1))[0]
        + (None,),
        Reject.BAD_SHA256: (good_topic, good[:-1] + bytes([good[-1] ^ 0xFF]), None),
        Reject.BAD_HMAC: UpdateSender(FLEET, "a1", "fp32", hmac_key=b"wrong").encode(
            0, BRANCH, SIG, _vector(n))[0] + (KEY,),
        Reject.UNSIGNED: (good_topic, good, KEY),
        Reject.NON_FINITE: (*_forge(nan.tobytes(), n), None),
        Reject.WRONG_FLEET: (good_topic,
                             UpdateSender("g", "a1", "fp32").encode(0, BRANCH, SIG, _vector(n))[0][1], None),
        Reject.TOPIC_MISMATCH: (topics.update_topic(FLEET, "a2", BRANCH), good, None),
        Reject.UNKNOWN_BRANCH: UpdateSender(FLEET, "a1", "fp32").encode(0, "enc/x", SIG, _vector(n))[0]
        + (None,),
        Reject.DECODE_FAILED: (*_forge(bad_topk, n, CodecId.TOPK), None),
        Reject.NO_REFERENCE: (*_forge(b"\x00" * 4 * n, n, ref_round=0, round_idx=1), None),
    }
    for reason, (topic, data, key) in cases.items():
        receiver = _receiver(n, key)
        with caplog.at_level(logging.WARNING, logger="broker.receiver"):
            assert receiver.feed(topic, data) is None, reason
        assert receiver.rejections == {reason: 1}, (reason, receiver.rejections)
        assert receiver.reference_round("a1", BRANCH) is None
        assert receiver.last_round("a1", BRANCH) is None
        assert reason.value in caplog.text
    assert sum(1 for r in caplog.records if r.levelno == logging.WARNING) == len(cases)


def _mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    op = rng.randrange(7)
    if op == 0:  # flip one bit
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    elif op == 1:  # overwrite a few bytes
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(len(out))] = rng.randrange(256)
    elif op == 2:  # truncate
        del out[rng.randrange(len(out)):]
    elif op == 3:  # append garbage
        out += rng.randbytes(rng.randint(1, 64))
    elif op == 4:  # insert garbage
        i = rng.randrange(len(out))
        out[i:i] = rng.randbytes(rng.randint(1, 16))
    elif op == 5:  # delete a range
        i = rng.randrange(len(out))
        del out[i:i + rng.randint(1, 16)]
    else:  # hit the header specifically
        i = rng.randrange(min(len(out), wire.FIXED_LEN + 40))
        out[i] = rng.randrange(256)
    return bytes(out)


def test_a_thousand_random_mutations_never_get_through() -> None:
    # Prepare: valid traffic of several kinds (keyframes, deltas, multi-chunk, signed)
    rng = random.Random(1234)
    n = 600
    outcomes = []
    for trial in range(1200):
        key = KEY if trial % 2 else None
        spec = ["fp32", "fp16", "int8", "topk:0.1"][trial % 4]
        chunk_bytes = 1024 if trial % 3 == 0 else 256 * 1024
        sender = UpdateSender(FLEET, "a1", spec, keyframe_every=0, hmac_key=key, chunk_bytes=chunk_bytes)
        keyframe = sender.encode(0, BRANCH, SIG, _vector(n, trial))
        messages = sender.encode(1, BRANCH, SIG, _vector(n, trial + 1))
        receiver = _receiver(n, key)
        if sender.spec.difference:
            assert len(_deliver(receiver, keyframe)) == 1
        held_round = receiver.reference_round("a1", BRANCH)
        accepted_round = receiver.last_round("a1", BRANCH)
        target = rng.randrange(len(messages))
        _topic, original = messages[target]
        mutated = _mutate(rng, original)
        while mutated == original:
            mutated = _mutate(rng, original)
        # Execute: the mutated chunk plus the untouched rest of the update
        batch = [(t, mutated if i == target else p) for i, (t, p) in enumerate(messages)]
        delivered = _deliver(receiver, batch)
        receiver.expire(now_s=float("inf"))
        # Assert
        assert delivered == [], (trial, spec)
        assert sum(receiver.rejections.values()) >= 1, (trial, spec)
        assert receiver.reference_round("a1", BRANCH) == held_round
        assert receiver.last_round("a1", BRANCH) == accepted_round
        outcomes.append(receiver.rejections)
    reasons = {r for c in outcomes for r in c}
    assert len(outcomes) >= 1000
    assert {Reject.BAD_SHA256, Reject.TRUNCATED, Reject.MALFORMED, Reject.BAD_HMAC} <= reasons


def test_sender_refuses_bad_input() -> None:
    sender = UpdateSender(FLEET, "a1", "fp32")
    with pytest.raises(ValueError, match="NaN"):
        sender.encode(0, BRANCH, SIG, np.array([np.inf], np.float32))
    with pytest.raises(ValueError, match="round_idx"):
        sender.encode(-1, BRANCH, SIG, _vector(3))
    with pytest.raises(ValueError, match="chunk_bytes"):
        UpdateSender(FLEET, "a1", "fp32", chunk_bytes=512 * 1024)
    with pytest.raises(ValueError, match="sender"):
        UpdateSender(FLEET, "a/1", "fp32")


def test_a_bad_multi_chunk_update_warns_once_but_counts_every_chunk(
        caplog: pytest.LogCaptureFixture) -> None:
    n = 10_000
    messages = UpdateSender(FLEET, "a1", "fp32", chunk_bytes=4096).encode(0, BRANCH, "other-sig",
                                                                         _vector(n))
    receiver = _receiver(n)
    with caplog.at_level(logging.WARNING, logger="broker.receiver"):
        assert _deliver(receiver, messages) == []
    assert receiver.rejections[Reject.WRONG_SIGNATURE] == len(messages) > 5
    assert sum(1 for r in caplog.records if r.levelno == logging.WARNING) == 1


def test_parse_keyframe_request_ignores_other_control_messages() -> None:
    assert parse_keyframe_request(b'{"type": "start"}') is None
    assert parse_keyframe_request(b"not json") is None
    assert parse_keyframe_request(b'{"type": "keyframe_request", "requester": 1}') is None


@pytest.mark.parametrize("spec", ["fp32", "fp16", "int8", "topk:0.05", "choco+int8"])
def test_public_copy_is_exactly_what_the_receiver_decodes(spec: str) -> None:
    # Prepare
    sender = UpdateSender(FLEET, "a1", spec, keyframe_every=3)
    receiver = _receiver(500)
    assert sender.public_copy(BRANCH) is None
    # Execute / Assert: round after round, keyframes and deltas alike
    for round_idx in range(5):
        vector = _vector(500, seed=round_idx)
        (update,) = _deliver(receiver, sender.encode(round_idx, BRANCH, SIG, vector))
        np.testing.assert_array_equal(sender.public_copy(BRANCH), update.vector)
