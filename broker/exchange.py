"""Branch-update exchange: the public sender/receiver API and keyframe requests on the control topic.

`UpdateSender` (broker.sender) turns (round, branch, vector) into MQTT (topic, payload) messages;
`UpdateReceiver` (broker.receiver) turns messages back into verified `Update`s. A receiver that
cannot apply a delta (it missed one) lists the pair in `pop_keyframe_requests()`; the agent
publishes `encode_keyframe_request(...)` on the control topic, and the sender's agent calls
`UpdateSender.request_keyframe(branch)` when `parse_keyframe_request` names it as the target.
"""

from __future__ import annotations

import json
from typing import NamedTuple

from broker.receiver import Update, UpdateReceiver
from broker.sender import BranchStats, UpdateSender

__all__ = ["BranchStats", "KeyframeRequest", "Update", "UpdateReceiver", "UpdateSender",
           "encode_keyframe_request", "parse_keyframe_request"]


class KeyframeRequest(NamedTuple):
    """Ask `target` to send its next update of `branch_key` as a keyframe."""

    requester: str
    target: str
    branch_key: str


def encode_keyframe_request(request: KeyframeRequest) -> bytes:
    """JSON for the fleet control topic."""
    return json.dumps({"type": "keyframe_request", **request._asdict()}).encode()


def parse_keyframe_request(payload: bytes) -> KeyframeRequest | None:
    """The request in a control message, or None if it is something else or malformed."""
    try:
        doc = json.loads(payload)
        if not isinstance(doc, dict) or doc.get("type") != "keyframe_request":
            return None
        fields = (doc["requester"], doc["target"], doc["branch_key"])
    except (ValueError, KeyError, TypeError):
        return None
    if not all(isinstance(f, str) and f for f in fields):
        return None
    return KeyframeRequest(*fields)
