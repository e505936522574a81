"""Why an incoming message was rejected: one enum shared by every receive path.

The update wire format, reassembly, the update receiver and the signed envelopes of status, metrics,
control and probe messages all raise `RejectedError` with a `Reject`. The values are stable counter
names: agents report `{reason: count}` in final.json.
"""

from __future__ import annotations

from enum import Enum


class Reject(str, Enum):
    """Rejection reason of an incoming message; values are stable counter names."""

    TRUNCATED = "truncated"  # shorter than its header says
    OVERSIZED = "oversized"  # message or whole update above the configured limit
    BAD_MAGIC = "bad_magic"  # not a parse-edge update message
    BAD_VERSION = "bad_version"  # a wire format version this build does not speak
    MALFORMED = "malformed"  # header fields inconsistent (flags, lengths, chunk numbers, utf-8)
    BAD_CODEC = "bad_codec"  # unknown codec id
    UNSIGNED = "unsigned"  # a fleet key is set but the message carries no HMAC
    BAD_HMAC = "bad_hmac"  # HMAC does not verify with the fleet key
    WRONG_FLEET = "wrong_fleet"  # header fleet differs from ours
    TOPIC_MISMATCH = "topic_mismatch"  # header sender/branch differ from the topic it came on
    UNKNOWN_BRANCH = "unknown_branch"  # we do not hold this branch
    WRONG_SIGNATURE = "wrong_signature"  # parameter shapes differ from ours
    WRONG_SHAPE = "wrong_shape"  # element count differs from ours
    BAD_SHA256 = "bad_sha256"  # reassembled update does not match its digest
    DECODE_FAILED = "decode_failed"  # codec payload could not be decoded
    NON_FINITE = "non_finite"  # decoded vector holds NaN or inf
    NO_REFERENCE = "no_reference"  # a delta whose reference round we do not hold
    STALE = "stale"  # an older round than the one already accepted from this sender
    DUPLICATE = "duplicate"  # an update already delivered (QoS 1 redelivery)
    INCOMPLETE = "incomplete"  # chunks missing when the reassembly timeout expired
    EVICTED = "evicted"  # an incomplete update dropped to keep pending reassemblies within bounds
    OTHER_RUN = "other_run"  # signed for another run id (a leftover or a replay from another run)
    REPLAYED = "replayed"  # an epoch older than the sender's newest, or a sequence number seen before
    RETAINED = "retained"  # a retained message on a topic where only live messages are valid
    OUT_OF_WINDOW = "out_of_window"  # a round further ahead of ours than the configured window
    WRONG_KIND = "wrong_kind"  # an envelope kind that does not belong on this topic


class RejectedError(Exception):
    """Raised by the pure decoding functions; the receive path turns it into a counter.

    Parameters
    ----------
    reason : Reject
        The counter it goes to.
    detail : str
        What exactly was wrong (for the log).
    """

    def __init__(self, reason: Reject, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}")
