"""Property tests (Hypothesis, seeded) for everything a board reads off the wire: any bytes on any
topic give a counted rejection or a valid result -- never an exception, never unbounded memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker import topics
from broker.chunking import ReassemblyLimits
from broker.envelope import Kind, Signer, Verifier
from broker.exchange import Update, UpdateReceiver, UpdateSender
from broker.keys import new_run_id

FLEET, BRANCH, SIG, N = "fz", "enc/accel", "s1", 4096
KEY = b"fuzz-fleet-key-0123456"
RUN = new_run_id()
LIMITS = ReassemblyLimits(max_pending_bytes=256 * 1024, max_pending_per_sender=4, max_pending_total=8)
PROFILE = settings(derandomize=True, max_examples=300, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _valid_messages() -> list[tuple[str, bytes]]:
    """Genuine traffic of several kinds: keyframes and deltas, multi-chunk, signed."""
    rng = np.random.default_rng(0)
    out = []
    for agent, spec in (("a1", "fp32"), ("a2", "topk:0.05"), ("a3", "int8"), ("a4", "stc:0.05")):
        sender = UpdateSender(FLEET, agent, spec, keyframe_every=0, hmac_key=KEY, chunk_bytes=4096,
                              run_id=RUN)
        for round_idx in range(2):
            out += sender.encode(round_idx, BRANCH, SIG, rng.normal(size=N).astype(np.float32))
    return out


VALID = _valid_messages()
TOPICS = st.one_of(
    st.sampled_from([t for t, _ in VALID] + [topics.update_topic(FLEET, "a9", BRANCH),
                                             topics.update_topic(FLEET, "a1", "enc/other"),
                                             topics.probe_topic(FLEET, "a1"),
                                             topics.status_topic(FLEET, "a1"),
                                             topics.control_topic(FLEET), "parse", "", "#"]),
    st.text(max_size=60))


@st.composite
def _mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    """A genuine message with a few bytes overwritten, cut or extended."""
    topic, data = draw(st.sampled_from(VALID))
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(out) - 1))
        op = draw(st.sampled_from(["set", "cut", "grow"]))
        if op == "set":
            out[at] = draw(st.integers(0, 255))
        elif op == "cut":
            del out[at:]
            if not out:
                break
        else:
            out[at:at] = draw(st.binary(min_size=1, max_size=32))
    return draw(st.one_of(st.just(topic), TOPICS)), bytes(out)


MESSAGES = st.one_of(_mutated(), st.tuples(TOPICS, st.binary(max_size=600)), st.sampled_from(VALID))


def _receiver(keyed: bool) -> UpdateReceiver:
    return UpdateReceiver(FLEET, lambda b: (SIG, N) if b == BRANCH else None,
                          hmac_key=KEY if keyed else None, run_id=RUN if keyed else None,
                          round_window=8, limits=LIMITS)


def _check_result(receiver: UpdateReceiver, topic: str, result: Update | None, before: int) -> None:
    assert receiver.internal_errors == 0
    if result is None and sum(receiver.rejections.values()) == before:
        # not counted: only a probe, or a chunk now waiting for its siblings
        info = topics.parse_topic(topic)
        assert (info is not None and info.kind == "probe") or receiver.pending > 0
    elif result is not None:
        assert result.vector.shape == (N,) and result.vector.dtype == np.float32
        assert np.isfinite(result.vector).all()
    assert receiver.pending <= LIMITS.max_pending_total
    assert receiver.pending_bytes <= LIMITS.max_pending_bytes


@PROFILE
@given(st.lists(st.tuples(MESSAGES, st.booleans()), min_size=1, max_size=30), st.booleans())
def test_update_receiver_takes_any_bytes_on_any_topic(batch: list[tuple[tuple[str, bytes], bool]],
                                                      keyed: bool) -> None:
    receiver = _receiver(keyed)
    for (topic, payload), retained in batch:
        before = sum(receiver.rejections.values())
        _check_result(receiver, topic, receiver.feed(topic, payload, retained), before)


@PROFILE
@given(st.lists(st.tuples(TOPICS, st.binary(max_size=400), st.booleans()), min_size=1, max_size=20))
def test_verifier_takes_any_bytes_on_any_topic(batch: list[tuple[str, bytes, bool]]) -> None:
    verifier = Verifier(FLEET, KEY, RUN)
    genuine = Signer(FLEET, "a1", KEY, RUN)
    for i, (topic, payload, retained) in enumerate(batch):
        assert verifier.open(topic, payload, retained) is None  # nobody forges an HMAC by chance
        assert sum(verifier.rejections.values()) == i + 1
    # genuine traffic still passes afterwards
    assert verifier.open(topics.status_topic(FLEET, "a1"), genuine.seal(Kind.STATUS, b"{}")) is not None


def test_memory_stays_bounded_under_a_long_hostile_stream() -> None:
    # Prepare: 20,000 messages, most of them first chunks of forged updates with fresh digests
    receiver = _receiver(keyed=False)
    rng = np.random.default_rng(1)
    multi = [(t, p) for t, p in VALID if p[0x1A:0x1C] != b"\x00\x01"]  # chunk_count > 1
    tracemalloc.start()
    try:
        for i in range(20_000):
            topic, data = multi[i % len(multi)]
            forged = bytearray(data)
            forged[36:68] = rng.bytes(32)  # another sha256: another pending update
            receiver.feed(topic, bytes(forged))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Assert: what is held is what the limits allow, and nothing else grew with the stream
    assert receiver.internal_errors == 0 and receiver.pending <= LIMITS.max_pending_total
    assert peak < 4 * LIMITS.max_pending_bytes + 2 * 1024 * 1024, peak
