"""Fleet keys: HKDF-SHA256 against RFC 5869 and the `cryptography` library, per-agent derivation."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from broker.keys import KeyRing, as_keyring, hkdf_sha256, new_run_id


def test_hkdf_matches_rfc5869_test_case_1() -> None:
    # RFC 5869, appendix A.1
    ikm = bytes.fromhex("0b" * 22)
    salt = bytes.fromhex("000102030405060708090a0b0c")
    info = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9")
    okm = ("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
           "34007208d5b887185865")
    assert hkdf_sha256(ikm, salt, info, 42).hex() == okm


@pytest.mark.parametrize("length", [1, 16, 32, 33, 64, 100, 255])
def test_hkdf_matches_the_cryptography_library(length: int) -> None:
    key, salt, info = b"fleet key \x00\xff", b"salt", b"parse-edge/hmac/f/a1"
    expected = HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(key)
    assert hkdf_sha256(key, salt, info, length) == expected
    with pytest.raises(ValueError, match="length"):
        hkdf_sha256(key, salt, info, 0)


def test_each_agent_and_fleet_gets_its_own_key() -> None:
    ring = KeyRing("f", b"fleet-key")
    keys = {ring.key_for(a) for a in ("a1", "a2", "a3")} | {KeyRing("g", b"fleet-key").key_for("a1")}
    assert len(keys) == 4 and all(k is not None and len(k) == 32 for k in keys)
    assert ring.key_for("a1") == KeyRing("f", b"fleet-key").key_for("a1")  # deterministic
    explicit = KeyRing("f", b"fleet-key", {"a1": b"a1's own key"})
    assert explicit.key_for("a1") == b"a1's own key" and explicit.key_for("a2") == ring.key_for("a2")
    unsigned = KeyRing("f")
    assert not unsigned.signing and unsigned.key_for("a1") is None and ring.signing
    assert KeyRing("f", agent_keys={"a1": b"k"}).signing
    first = ring.key_for("a1")
    for i in range(5000):  # forged sender names cannot grow the cache without bound
        ring.key_for(f"x{i}")
    assert len(ring._derived) <= 1024 and ring.key_for("a1") == first


def test_keyring_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match="empty key"):
        KeyRing("f", agent_keys={"a1": b""})
    with pytest.raises(ValueError, match="fleet"):
        KeyRing("a/b")
    with pytest.raises(ValueError, match="not 'g'"):
        as_keyring("g", KeyRing("f"))
    assert as_keyring("f", b"") .signing is False and as_keyring("f", b"k").signing
    assert len(new_run_id()) == 16 and new_run_id() != new_run_id()
