"""Discovery: status payloads, and live neighbour sets per branch from retained status messages."""

from __future__ import annotations

import pytest

from broker import topics
from broker.discovery import AgentStatus, NeighbourTable, encode_status, offline_status, parse_status

FLEET = "disc"


def _announce(table: NeighbourTable, agent: str, branches: dict[str, str], online: bool = True) -> bool:
    status = AgentStatus(agent, online, ("accel",), branches, "rpi4", "0.1.0")
    return table.observe(topics.status_topic(FLEET, agent), encode_status(status))


def test_status_round_trip_and_will_payload() -> None:
    status = AgentStatus("a1", True, ("accel", "gyro"), {"fuse/accel+gyro": "abc"}, "rpi5", "0.1.0")
    assert parse_status(encode_status(status), "a1") == status
    assert parse_status(offline_status("a1"), "a1") == AgentStatus("a1", online=False)


@pytest.mark.parametrize("payload,match", [
    (b"{", "not JSON"), (b"[]", "object"), (b'{"agent": "a2"}', "does not match"),
    (b'{"online": "yes"}', "online"), (b'{"modalities": "accel"}', "modalities"),
    (b'{"branches": {"k": 1}}', "branches"), (b'{"device_profile": 3}', "device_profile"),
])
def test_bad_status_payloads_name_the_field(payload: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_status(payload, "a1")


def test_live_neighbours_follow_topology_presence_and_signature() -> None:
    # Prepare: ring a1-a2-a3-a4-a1 given one way only (the table makes it symmetric)
    table = NeighbourTable(FLEET, {"a1": ["a2"], "a2": ["a3"], "a3": ["a4"], "a4": ["a1"]})
    # Execute
    _announce(table, "a1", {"enc/accel": "s1", "fuse/accel+gyro": "f1"})
    _announce(table, "a2", {"enc/accel": "s1", "fuse/accel+gyro": "f1"})
    _announce(table, "a4", {"enc/accel": "OTHER", "fuse/accel+gyro": "f1"})
    _announce(table, "a3", {"enc/accel": "s1"})
    # Assert
    assert table.configured_neighbours("a1") == {"a2", "a4"}
    assert table.live_neighbours("a1", "enc/accel", "s1") == {"a2"}  # a4: other signature
    assert table.live_neighbours("a1", "fuse/accel+gyro", "f1") == {"a2", "a4"}
    assert table.live_neighbours("a1", "head/R", "h") == set()  # nobody shares it
    assert table.live_neighbours_by_branch("a3", {"enc/accel": "s1"}) == {"enc/accel": {"a2"}}
    # a2 dies (its will arrives), a4 clears its retained status
    assert table.observe(topics.status_topic(FLEET, "a2"), offline_status("a2"))
    assert table.observe(topics.status_topic(FLEET, "a4"), b"")
    assert table.live_neighbours("a1", "fuse/accel+gyro", "f1") == set()
    assert table.online_agents() == {"a1", "a3"}
    assert table.status("a4") is None
    # a2 comes back
    _announce(table, "a2", {"enc/accel": "s1"})
    assert table.live_neighbours("a1", "enc/accel", "s1") == {"a2"}


def test_foreign_and_bad_messages_are_ignored() -> None:
    table = NeighbourTable(FLEET, {"a1": ["a2"]})
    other_fleet = AgentStatus("a2", True, (), {"enc/accel": "s"})
    assert not table.observe(topics.status_topic("otherfleet", "a2"), encode_status(other_fleet))
    assert not table.observe(topics.metrics_topic(FLEET, "a2"), b"{}")
    assert not table.observe(topics.status_topic(FLEET, "a2"), b"garbage")
    assert not table.observe(topics.status_topic(FLEET, "a2"), encode_status(AgentStatus("a9")))
    assert table.bad_payloads == 2
    assert table.online_agents() == set()


def test_topology_can_change() -> None:
    table = NeighbourTable(FLEET, {"a1": ["a2"]})
    _announce(table, "a2", {"k": "s"})
    _announce(table, "a3", {"k": "s"})
    table.set_topology({"a1": ["a3"]})
    assert table.live_neighbours("a1", "k", "s") == {"a3"}
