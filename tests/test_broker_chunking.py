"""Chunking: bounded pieces; reassembly with duplicates, reordering, interleaving and timeouts."""

from __future__ import annotations

import random

import pytest

from broker.chunking import Reassembler, split_payload
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
    r = Reassembler(timeout_s=5.0, clock=clock)
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


def test_pending_budget_is_enforced() -> None:
    r = Reassembler(max_pending_bytes=100)
    r.add("k1", 0, 2, 0, 80, b"a" * 40, 50)  # the whole update's buffer is reserved up front
    with pytest.raises(RejectedError) as info:
        r.add("k2", 0, 2, 0, 80, b"a" * 40, 50)
    assert info.value.reason is Reject.OVERSIZED
    assert r.add("k1", 1, 2, 40, 80, b"b" * 40, 50) == (bytearray(b"a" * 40 + b"b" * 40), 100)
    assert r.add("k2", 0, 2, 0, 80, b"a" * 40, 50) is None  # room again once k1 completed
