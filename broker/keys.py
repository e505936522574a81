"""Message keys of a fleet: HKDF-derived per-agent HMAC keys, run ids and the sender's epoch.

Every signed message (update chunks, status, metrics, control, probe) carries an HMAC-SHA256 made
with its *sender's* key. A sender's key is the one given for it explicitly, else HKDF-SHA256
(RFC 5869) of the fleet key with `info = b"parse-edge/hmac/<fleet>/<sender>"`, so one fleet key in
the bundles gives each agent a distinct key (domain separation between agents and fleets).

What this does and does not prove: every agent that can verify a neighbour's messages can also
compute that neighbour's key (symmetric keys). Against an outsider (anyone without the fleet key,
including someone holding broker credentials or the operator's), a valid HMAC proves the message
came from the fleet. Against an insider it is the broker's ACL that holds: agent a3 cannot publish
on a4's topics, and receivers reject a message whose signed sender differs from its topic.

HKDF is two HMAC calls for a 32-byte key, written here with `hmac` from the standard library so the
board install needs no `cryptography`; tests check it against `cryptography`'s HKDF.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from broker import topics
from broker.rejects import Reject, RejectedError

KEY_BYTES = 32
RUN_ID_BYTES = 16
NO_RUN = bytes(RUN_ID_BYTES)  # what a sender without a run id puts in its headers
MAX_EPOCH = 2**32 - 1
_SALT = b"parse-edge/v2"
_MAX_CACHED_KEYS = 1024


def hkdf_sha256(key: bytes, salt: bytes, info: bytes, length: int = KEY_BYTES) -> bytes:
    """HKDF-SHA256 (RFC 5869, section 2): extract with `salt`, expand with `info`.

    Parameters
    ----------
    key : bytes
        Input keying material (the fleet key).
    salt, info : bytes
        RFC 5869 salt and context string.
    length : int
        Output bytes, 1..8160 (255 SHA-256 blocks).

    Returns
    -------
    bytes
        `length` bytes of output keying material.

    Raises
    ------
    ValueError
        When `length` is out of range.
    """
    if not 1 <= length <= 255 * hashlib.sha256().digest_size:
        raise ValueError(f"length: expected 1..8160 bytes, got {length}")
    prk = hmac.new(salt, key, hashlib.sha256).digest()
    blocks, previous = [], b""
    for counter in range(1, -(-length // 32) + 1):
        previous = hmac.new(prk, previous + info + bytes([counter]), hashlib.sha256).digest()
        blocks.append(previous)
    return b"".join(blocks)[:length]


def new_run_id() -> bytes:
    """Return a fresh random run id (16 bytes); messages of another run are rejected as `other_run`."""
    return os.urandom(RUN_ID_BYTES)


def check_run_id(run_id: bytes) -> bytes:
    """Return `run_id` if it is 16 bytes; raise ValueError otherwise."""
    if not isinstance(run_id, bytes) or len(run_id) != RUN_ID_BYTES:
        raise ValueError(f"run_id: expected {RUN_ID_BYTES} bytes, got {run_id!r}")
    return run_id


def check_epoch(epoch: int) -> int:
    """Return `epoch` if it fits the u32 header field; raise ValueError otherwise."""
    if not isinstance(epoch, int) or not 0 <= epoch <= MAX_EPOCH:
        raise ValueError(f"epoch: expected 0..{MAX_EPOCH}, got {epoch!r}")
    return epoch


@dataclass
class KeyRing:
    """The HMAC keys a fleet member signs and verifies with.

    Parameters
    ----------
    fleet : str
        Fleet name (part of the HKDF context).
    fleet_key : bytes or None
        The shared secret per-agent keys are derived from; None with no `agent_keys` means
        messages are neither signed nor required to be.
    agent_keys : mapping of str to bytes
        Explicit per-agent keys; they take precedence over derived ones.
    """

    fleet: str
    fleet_key: bytes | None = None
    agent_keys: Mapping[str, bytes] = field(default_factory=dict)
    _derived: dict[str, bytes] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        """Check the fleet name and refuse empty keys."""
        topics.check_name("fleet", self.fleet)
        # Key strength is the config loader's business (it reads generated 32-byte key files);
        # here only an empty key is refused, since HMAC would accept it silently.
        if any(not key for key in self.agent_keys.values()):
            raise ValueError("agent keys: empty key")

    @property
    def signing(self) -> bool:
        """Whether messages are signed and unsigned ones rejected."""
        return bool(self.fleet_key) or bool(self.agent_keys)

    def key_for(self, sender: str) -> bytes | None:
        """Return the HMAC key of `sender`, or None when this ring signs nothing."""
        explicit = self.agent_keys.get(sender)
        if explicit is not None:
            return explicit
        if not self.fleet_key:
            return None
        with self._lock:
            key = self._derived.get(sender)
            if key is None:
                # Sender names come from headers not yet authenticated: keep the cache bounded.
                if len(self._derived) >= _MAX_CACHED_KEYS:
                    self._derived.clear()
                info = f"parse-edge/hmac/{self.fleet}/{sender}".encode()
                key = self._derived[sender] = hkdf_sha256(self.fleet_key, _SALT, info)
            return key


def verify_mac(keys: KeyRing | None, sender: str, has_mac: bool, signed: bytes | memoryview,
               body: bytes | memoryview, mac: bytes | memoryview) -> None:
    """Check a message's HMAC-SHA256 over `signed` + `body` with `sender`'s key.

    Messages of a fleet that signs nothing (`keys` None or empty) pass unchecked.

    Raises
    ------
    RejectedError
        UNSIGNED when the fleet signs and the message carries no HMAC; BAD_HMAC when there is no
        key for the sender or the HMAC does not verify.
    """
    if keys is None or not keys.signing:
        return
    if not has_mac:
        raise RejectedError(Reject.UNSIGNED, "no HMAC but the fleet signs its messages")
    key = keys.key_for(sender)
    if key is None:
        raise RejectedError(Reject.BAD_HMAC, f"no key for sender {sender!r}")
    check = hmac.new(key, signed, hashlib.sha256)
    check.update(body)
    if not hmac.compare_digest(check.digest(), mac):
        raise RejectedError(Reject.BAD_HMAC, f"HMAC does not verify with {sender}'s key")


def as_keyring(fleet: str, keys: KeyRing | bytes | None) -> KeyRing:
    """Make a KeyRing from what callers pass: a ring, a fleet key (bytes), or None (unsigned)."""
    if isinstance(keys, KeyRing):
        if keys.fleet != fleet:
            raise ValueError(f"keys: a key ring of fleet {keys.fleet!r}, not {fleet!r}")
        return keys
    return KeyRing(fleet, keys or None)
