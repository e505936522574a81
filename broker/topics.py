"""The MQTT topic scheme of DESIGN.md §3: builders, filters and a parser.

    parse/<fleet>/agents/<agent>/status    retained presence (signed envelope)
    parse/<fleet>/updates/<agent>/<branch>  branch updates (binary wire format, broker.wire)
    parse/<fleet>/updates/<agent>/$probe    the agent's publish probe (broker.probe)
    parse/<fleet>/metrics/<agent>           per-round metrics rows (signed envelope)
    parse/<fleet>/control                   keyframe requests, run announcements (signed envelope)

The probe lives under the agent's update topics so that it passes the very ACL rule the updates
pass; '$' cannot start a branch level, so it never collides with a branch.
"""

from __future__ import annotations

from typing import NamedTuple

ROOT = "parse"
# '+' is an MQTT wildcard and may not appear in a published topic; branch keys such as
# `fuse/accel+gyro` use it, so topic levels carry ',' instead. The wire header holds the true key.
_PLUS_STAND_IN = ","
_FORBIDDEN = ("#", "+", "/", "\x00")
PROBE_LEVEL = "$probe"


class TopicInfo(NamedTuple):
    """A parsed parse-edge topic."""

    fleet: str
    kind: str  # "status" | "update" | "probe" | "metrics" | "control"
    agent: str | None
    branch_key: str | None


def check_name(field: str, value: str) -> str:
    """Return `value` if it can be one topic level (fleet or agent id); else raise ValueError."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field}: expected a non-empty string, got {value!r}")
    bad = [c for c in _FORBIDDEN if c in value]
    if bad or _PLUS_STAND_IN in value or value.startswith("$"):
        raise ValueError(
            f"{field}: {value!r} may not contain '#', '+', '/', ',' or a leading '$' (MQTT topic level)"
        )
    return value


def branch_to_levels(branch_key: str) -> str:
    """Topic suffix for a branch key: '/' keeps its levels, '+' becomes ','."""
    if not branch_key or "#" in branch_key or _PLUS_STAND_IN in branch_key or "\x00" in branch_key:
        raise ValueError(f"branch_key: {branch_key!r} must be non-empty without '#', ',' or NUL")
    if any(level == "" or level.startswith("$") for level in branch_key.split("/")):
        raise ValueError(f"branch_key: {branch_key!r} has an empty level or one starting with '$'")
    return branch_key.replace("+", _PLUS_STAND_IN)


def levels_to_branch(levels: str) -> str:
    """Inverse of `branch_to_levels`."""
    return levels.replace(_PLUS_STAND_IN, "+")


def status_topic(fleet: str, agent: str) -> str:
    """Retained presence/status of one agent."""
    return f"{ROOT}/{check_name('fleet', fleet)}/agents/{check_name('agent', agent)}/status"


def update_topic(fleet: str, agent: str, branch_key: str) -> str:
    """Where `agent` publishes its updates of `branch_key`."""
    return (
        f"{ROOT}/{check_name('fleet', fleet)}/updates/{check_name('agent', agent)}/"
        f"{branch_to_levels(branch_key)}"
    )


def probe_topic(fleet: str, agent: str) -> str:
    """Where `agent` publishes (and reads back) its publish probe."""
    return f"{ROOT}/{check_name('fleet', fleet)}/updates/{check_name('agent', agent)}/{PROBE_LEVEL}"


def metrics_topic(fleet: str, agent: str) -> str:
    """Per-round JSON metrics of one agent."""
    return f"{ROOT}/{check_name('fleet', fleet)}/metrics/{check_name('agent', agent)}"


def control_topic(fleet: str) -> str:
    """Fleet-wide control hints (trial start/stop, deadlines, keyframe requests)."""
    return f"{ROOT}/{check_name('fleet', fleet)}/control"


def infer_topic(fleet: str, agent: str, kind: str) -> str:
    """Return one topic of an inference-only board.

    `request` (npz bytes in), `prediction` (JSON out), `status` (retained JSON presence); kept
    apart from agents/ so discovery never sees them.
    """
    if kind not in ("request", "prediction", "status"):
        raise ValueError(f"kind: expected request, prediction or status, got {kind!r}")
    return f"{ROOT}/{check_name('fleet', fleet)}/infer/{check_name('agent', agent)}/{kind}"


def status_filter(fleet: str) -> str:
    """Subscription filter for every agent's status."""
    return f"{ROOT}/{check_name('fleet', fleet)}/agents/+/status"


def updates_filter(fleet: str, agent: str | None = None) -> str:
    """Subscription filter for the updates of one agent, or of every agent."""
    who = "+" if agent is None else check_name("agent", agent)
    return f"{ROOT}/{check_name('fleet', fleet)}/updates/{who}/#"


def metrics_filter(fleet: str) -> str:
    """Subscription filter for every agent's metrics."""
    return f"{ROOT}/{check_name('fleet', fleet)}/metrics/+"


def parse_topic(topic: str) -> TopicInfo | None:
    """Parse a parse-edge topic; None for anything outside the scheme."""
    parts = topic.split("/")
    if len(parts) < 3 or parts[0] != ROOT or not parts[1]:
        return None
    fleet, kind = parts[1], parts[2]
    if kind == "agents" and len(parts) == 5 and parts[4] == "status" and parts[3]:
        return TopicInfo(fleet, "status", parts[3], None)
    if kind == "updates" and len(parts) == 5 and parts[3] and parts[4] == PROBE_LEVEL:
        return TopicInfo(fleet, "probe", parts[3], None)
    if kind == "updates" and len(parts) >= 5 and parts[3] and all(parts[4:]):
        return TopicInfo(fleet, "update", parts[3], levels_to_branch("/".join(parts[4:])))
    if kind == "metrics" and len(parts) == 4 and parts[3]:
        return TopicInfo(fleet, "metrics", parts[3], None)
    if kind == "control" and len(parts) == 3:
        return TopicInfo(fleet, "control", None, None)
    return None
