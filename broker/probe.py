"""Prove at start that an agent's publishes reach the broker, and size its chunks to the broker.

A broker that refuses a publish under MQTT 3.1.1 says nothing: the ACL drops the message and the
PUBACK still arrives. A trial whose agents could not write their own topics once "completed" with
accuracy 0.992 and not one update exchanged. `prove_publish_path` is what an agent calls once,
connected and subscribed, before its first round:

1. the update sender's chunk size is lowered to the broker's Maximum Packet Size (MQTT 5 CONNACK);
2. a small signed probe is published on the agent's own probe topic (under its update topics, so
   the same ACL rule applies) and must come back; then one as long as the largest chunk;
3. any refusal the broker reported (MQTT 5 PUBACK/SUBACK reason codes, DISCONNECT reasons) or a
   probe that did not come back raises `PublishProbeError` with one line naming the topic and the
   likely cause (the ACL, the packet size, a dropped connection).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from broker import topics
from broker.client import MqttClient, describe_refusal
from broker.envelope import Kind, Signer, envelope_overhead
from broker.sender import UpdateSender

NONCE_BYTES = 16
# The slowest board link the start-up probe allows for when a full chunk travels to the broker
# and back: 128 kbit/s, half the virtual field's LTE kind (examples/field-basic-motions.yaml).
SLOWEST_LINK_BYTES_PER_S = 16_000


class PublishProbeError(RuntimeError):
    """Our publishes do not reach the broker; the message is one line with topic and likely cause."""


def fit_chunk_bytes(client: MqttClient, sender: UpdateSender, update_topics: Iterable[str]) -> int:
    """Lower `sender`'s message size to what the broker accepts on every topic; return it.

    Raises
    ------
    PublishProbeError
        When the broker's limit leaves less than 1024 bytes per message.
    """
    limits = [client.max_payload_bytes(t) for t in [*update_topics, topics.probe_topic(sender.fleet,
                                                                                     sender.sender)]]
    known = [limit for limit in limits if limit is not None]
    if not known:
        return sender.chunk_bytes
    try:
        return sender.limit_chunk_bytes(min(known))
    except ValueError as exc:
        raise PublishProbeError(f"broker {client.address.url}: {exc}") from None


def prove_publish_path(client: MqttClient, signer: Signer, sender: UpdateSender,
                       update_topics: Iterable[str], timeout_s: float = 10.0) -> int:
    """Size chunks to the broker and prove that our messages, up to a full chunk, reach it.

    Parameters
    ----------
    client : MqttClient
        Connected (MQTT 3.1.1 or 5).
    signer : Signer
        Seals the probes (so nobody mistakes them for anything else).
    sender : UpdateSender
        Its chunk size is lowered to the broker's limit.
    update_topics : iterable of str
        The topics the agent will publish updates on (their length counts against the limit).
    timeout_s : float
        How long each probe may take to come back.

    Returns
    -------
    int
        The message size the sender now uses.

    Raises
    ------
    PublishProbeError
        One line: the topic, what failed and the likely cause.
    """
    chunk_bytes = fit_chunk_bytes(client, sender, update_topics)
    topic = topics.probe_topic(signer.fleet, signer.sender)
    where = f"broker {client.address.url}: publish probe on {topic}"
    small = signer.seal(Kind.PROBE, os.urandom(NONCE_BYTES))
    if not client.echo(topic, small, timeout_s):
        raise PublishProbeError(f"{where}: {_cause(client, topic, len(small), timeout_s)}")
    padding = chunk_bytes - envelope_overhead(signer) - NONCE_BYTES
    full = signer.seal(Kind.PROBE, os.urandom(NONCE_BYTES) + bytes(max(0, padding)))
    # A full chunk goes out and comes back over the board's link: on a slow link that alone
    # outlasts `timeout_s` (256 KiB each way at 256 kbit/s is 16 s), so allow for the transfer.
    full_timeout_s = timeout_s + 2 * len(full) / SLOWEST_LINK_BYTES_PER_S
    if not client.echo(topic, full, full_timeout_s):
        cause = _cause(client, topic, len(full), full_timeout_s)
        if not client.refusals and client.is_connected:
            cause = (f"a {len(full)}-byte message did not come back within {full_timeout_s:.0f} s "
                     f"though a {len(small)}-byte one did: the broker's max_packet_size is most "
                     f"likely below {len(full)} bytes (lower the chunk size or raise "
                     f"max_packet_size), or the link is slower than "
                     f"{SLOWEST_LINK_BYTES_PER_S * 8 // 1000} kbit/s")
        raise PublishProbeError(f"{where}: {cause}")
    client.raise_for_refusals()  # e.g. a SUBACK refused for one of the agent's subscriptions
    return chunk_bytes


def _cause(client: MqttClient, topic: str, size: int, timeout_s: float) -> str:
    refusals = client.refusals
    if refusals:
        first = refusals[0]
        return describe_refusal(first, client.username, name_topic=first.topic != topic)
    if not client.is_connected:
        return (f"the broker closed the connection ({client.last_disconnect_reason}); a {size}-byte "
                "message may exceed its max_packet_size")
    who = f"MQTT user {client.username!r}" if client.username else "an anonymous client"
    return (f"a {size}-byte message did not come back within {timeout_s:g} s: the broker's ACL most "
            f"likely does not let {who} write (or read) it; the username must be the agent id")
