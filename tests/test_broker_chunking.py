"""Chunking: bounded pieces; reassembly with duplicates, reordering, interleaving and timeouts, and
bounds on what forged first chunks can hold (per sender, in total, in bytes; O(1) expiry)."""

from __future__ import annotations

import random

import pytest

from broker.chunking import Reassembler, ReassemblyLimits, split_payload
from broker.rejects import Reject, RejectedError


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def _feed(r: Reassembler, key: str, pieces: list[tuple[int, bytes]], total: int,
          order: list[int]) -> list[tuple[bytes, int] | None]:
    return [r.add(key, i, len(pieces), pieces[i][0], total, pieces[i][1], len(pieces[i][1]) + 10)
            for i in order]


def test_split_bounds_and_covers() -> None:
    payload = bytes(range(256)) * 40
    pieces = split_payload(payload, 1000)
    assert all(len(p) <= 1000 for _, p in pieces)
    assert b"".join(p for _, p in pieces) == payload
    assert [o for o, _ in pieces] == list(range(0, len(payload), 1000))
    assert split_payload(b"", 10) == [(0, b"")]
    with pytest.raises(ValueError, match="max_chunk_bytes"):
        split_payload(payload, 0)


def test_interleaved_reordered_duplicated_updates_each_complete_once() -> None:
    rng = random.Random(0)
    a, b = bytes(rng.randbytes(5000)), bytes(rng.randbytes(3000))
    pa, pb = split_payload(a, 700), split_payload(b, 700)
    events = [("a", i) for i in range(len(pa))] * 2 + [("b", i) for i in range(len(pb))] * 2
    rng.shuffle(events)
    r = Reassembler()
    done: dict[str, list[tuple[bytes, int]]] = {"a": [], "b": []}
    for key, i in events:
        pieces, total = (pa, len(a)) if key == "a" else (pb, len(b))
        out = r.add(key, i, len(pieces), pieces[i][0], total, pieces[i][1], len(pieces[i][1]) + 10)
        if out is not None:
            done[key].append(out)
    # A duplicate arriving after completion starts a new (never completed) entry; the exchange
    # layer filters those by remembering delivered updates.
    assert [p for p, _ in done["a"]][:1] == [a]
    assert [p for p, _ in done["b"]][:1] == [b]
    assert done["a"][0][1] == len(a) + 10 * len(pa)


def test_timeout_drops_and_counts() -> None:
    clock = FakeClock()
    r: Reassembler[str] = Reassembler(ReassemblyLimits(timeout_s=5.0), clock=clock)
    pieces = split_payload(b"x" * 100, 30)
    _feed(r, "k", pieces, 100, [0, 1])
    clock.now_s = 4.9
    assert r.expire() == [] and r.pending == 1
    clock.now_s = 5.0
    assert r.expire() == ["k"]
    assert r.pending == 0 and r.expired_count == 1


def test_contradicting_chunks_are_malformed() -> None:
    r = Reassembler()
    r.add("k", 0, 3, 0, 90, b"a" * 30, 40)
    with pytest.raises(RejectedError) as info:
        r.add("k", 1, 4, 30, 90, b"a" * 30, 40)
    assert info.value.reason is Reject.MALFORMED
    r.add("k", 1, 3, 31, 90, b"a" * 30, 40)
    with pytest.raises(RejectedError, match="offset"):
        r.add("k", 2, 3, 60, 90, b"a" * 30, 40)
    with pytest.raises(RejectedError) as single:
        r.add("s", 0, 1, 0, 10, b"abc", 13)
    assert single.value.reason is Reject.MALFORMED


def test_byte_budget_evicts_the_oldest_and_refuses_what_never_fits() -> None:
    r: Reassembler[str] = Reassembler(ReassemblyLimits(max_pending_bytes=100))
    r.add("k1", 0, 2, 0, 80, b"a" * 40, 50)  # the whole update's buffer is reserved up front
    with pytest.raises(RejectedError) as info:
        r.add("big", 0, 2, 0, 101, b"a" * 40, 50)
    assert info.value.reason is Reject.OVERSIZED and r.pending == 1
    assert r.add("k2", 0, 2, 0, 80, b"a" * 40, 50) is None  # k1 gives way: the budget holds
    assert r.take_evicted() == ["k1"] and r.held_bytes == 80 and r.pending == 1
    assert r.add("k2", 1, 2, 40, 80, b"b" * 40, 50) == (bytearray(b"a" * 40 + b"b" * 40), 100)
    assert r.held_bytes == 0 and r.take_evicted() == []


def test_per_sender_and_total_limits_evict_the_oldest() -> None:
    r: Reassembler[str] = Reassembler(ReassemblyLimits(max_pending_per_sender=2, max_pending_total=3))
    for key in ("x1", "x2", "x3"):  # a flooding sender x keeps at most 2
        r.add(key, 0, 2, 0, 20, b"a" * 10, 10, owner="x")
    assert r.take_evicted() == ["x1"] and r.pending == 2
    r.add("y1", 0, 2, 0, 20, b"a" * 10, 10, owner="y")
    r.add("z1", 0, 2, 0, 20, b"a" * 10, 10, owner="z")  # total 3: the oldest overall goes
    assert r.take_evicted() == ["x2"] and r.pending == 3
    # the survivors still complete
    assert r.add("y1", 1, 2, 10, 20, b"b" * 10, 10, owner="y") is not None
    assert r.add("x3", 1, 2, 10, 20, b"b" * 10, 10, owner="x") is not None


def test_expiry_looks_only_at_the_oldest_entries() -> None:
    clock = FakeClock()
    r: Reassembler[int] = Reassembler(ReassemblyLimits(timeout_s=10.0, max_pending_total=20_000,
                                                       max_pending_per_sender=20_000), clock=clock)
    for i in range(10_000):
        clock.now_s = i * 1e-3  # first seen 0 .. 9.999 s
        r.add(i, 0, 2, 0, 2, b"a", 1)
    clock.now_s = 10.5
    assert r.expire() == list(range(501))  # first seen at <= 0.5 s
    assert r.pending == 10_000 - 501 and r.expired_count == 501
    # a pending set that is all fresh costs one look, not a scan
    entries = r._pending
    looked: list[int] = []

    class Spy(type(entries)):  # type: ignore[misc]
        def items(self):  # type: ignore[no-untyped-def]
            for pair in super().items():
                looked.append(pair[0])
                yield pair

    r._pending = Spy(entries)
    assert r.expire() == [] and len(looked) == 1


@pytest.mark.parametrize("field,value", [("timeout_s", float("nan")), ("timeout_s", 0.0),
                                         ("max_pending_bytes", 0), ("max_pending_per_sender", 0),
                                         ("max_pending_total", -1)])
def test_limits_are_checked(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        ReassemblyLimits(**{field: value})
