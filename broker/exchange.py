"""Branch-update exchange: the public sender/receiver API and keyframe requests on the control topic.

`UpdateSender` (broker.sender) turns (round, branch, vector) into MQTT (topic, payload) messages;
`UpdateReceiver` (broker.receiver) turns messages back into verified `Update`s. A receiver that
cannot apply a delta (it missed one) lists the pair in `pop_keyframe_requests()`; the agent
publishes `encode_keyframe_request(...)` on the control topic, and the sender's agent calls
`UpdateSender.request_keyframe(branch)` when `parse_keyframe_request` names it as the target.

The control topic also carries the run announcement (`encode_run_announcement`): the run id every
signed message of a trial carries, published retained by whoever fixes it (the trial runner, or the
first agent) so that agents starting later learn it. In a signed fleet both kinds travel as the
body of a control envelope (`broker.envelope.Kind.CONTROL`), and a keyframe request counts only
when its requester is the envelope's (authenticated) sender.
"""

from __future__ import annotations

import json
from typing import NamedTuple

from broker.keys import RUN_ID_BYTES
from broker.receiver import Update, UpdateReceiver
from broker.sender import BranchStats, UpdateSender

__all__ = ["BranchStats", "KeyframeRequest", "RunAnnouncement", "Update", "UpdateReceiver",
           "UpdateSender", "encode_keyframe_request", "encode_run_announcement",
           "parse_keyframe_request", "parse_run_announcement"]


class KeyframeRequest(NamedTuple):
    """Ask `target` to send its next update of `branch_key` as a keyframe."""

    requester: str
    target: str
    branch_key: str


def encode_keyframe_request(request: KeyframeRequest) -> bytes:
    """JSON for the fleet control topic."""
    return json.dumps({"type": "keyframe_request", **request._asdict()}).encode()


def _control_doc(payload: bytes, kind: str) -> dict[str, object] | None:
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) and doc.get("type") == kind else None


def parse_keyframe_request(payload: bytes, sender: str | None = None) -> KeyframeRequest | None:
    """Parse the request in a control message; None if it is something else or malformed.

    With `sender` (the verified envelope's sender), a request naming another requester is None.
    """
    doc = _control_doc(payload, "keyframe_request")
    if doc is None:
        return None
    fields = (doc.get("requester"), doc.get("target"), doc.get("branch_key"))
    if not all(isinstance(f, str) and f for f in fields):
        return None
    request = KeyframeRequest(str(fields[0]), str(fields[1]), str(fields[2]))
    return None if sender is not None and request.requester != sender else request


class RunAnnouncement(NamedTuple):
    """The run id of the trial under way, and who fixed it."""

    run_id: bytes
    announced_by: str


def encode_run_announcement(announcement: RunAnnouncement) -> bytes:
    """JSON for the control topic (publish it retained)."""
    return json.dumps({"type": "run", "run_id": announcement.run_id.hex(),
                       "announced_by": announcement.announced_by}).encode()


def parse_run_announcement(payload: bytes) -> RunAnnouncement | None:
    """Parse the announcement in a control message; None if it is something else or malformed."""
    doc = _control_doc(payload, "run")
    if doc is None:
        return None
    run_hex, by = doc.get("run_id"), doc.get("announced_by")
    if not isinstance(run_hex, str) or not isinstance(by, str) or not by:
        return None
    try:
        run_id = bytes.fromhex(run_hex)
    except ValueError:
        return None
    return RunAnnouncement(run_id, by) if len(run_id) == RUN_ID_BYTES else None
