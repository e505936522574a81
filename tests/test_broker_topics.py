"""Topic scheme: builders escape '+', the parser inverts them, bad names are refused."""

from __future__ import annotations

import pytest

from broker import topics


def test_update_topic_encodes_plus_and_parses_back() -> None:
    # Prepare
    keys = ["enc/accel", "syn/accel@accel+gyro", "fuse/accel+gyro", "head/R"]
    # Execute
    built = [topics.update_topic("f1", "a7", key) for key in keys]
    parsed = [topics.parse_topic(t) for t in built]
    # Assert
    assert built[2] == "parse/f1/updates/a7/fuse/accel,gyro"
    assert all("+" not in t and "#" not in t for t in built)
    assert [p.branch_key for p in parsed if p] == keys
    assert all(p is not None and (p.fleet, p.kind, p.agent) == ("f1", "update", "a7") for p in parsed)


def test_other_topics_round_trip() -> None:
    assert topics.parse_topic(topics.status_topic("f", "a1")) == ("f", "status", "a1", None)
    assert topics.parse_topic(topics.metrics_topic("f", "a1")) == ("f", "metrics", "a1", None)
    assert topics.parse_topic(topics.control_topic("f")) == ("f", "control", None, None)
    assert topics.updates_filter("f") == "parse/f/updates/+/#"
    assert topics.updates_filter("f", "a2") == "parse/f/updates/a2/#"
    assert topics.status_filter("f") == "parse/f/agents/+/status"


@pytest.mark.parametrize("topic", ["", "parse", "other/f/control", "parse/f/agents/a1",
                                   "parse/f/updates/a1", "parse/f/updates/a1//x",
                                   "parse/f/metrics/a1/extra", "parse//control"])
def test_parse_rejects_foreign_topics(topic: str) -> None:
    assert topics.parse_topic(topic) is None


@pytest.mark.parametrize("name", ["", "a/b", "a+b", "a#", "$sys", "a,b"])
def test_bad_names_are_refused_with_field(name: str) -> None:
    with pytest.raises(ValueError, match="agent"):
        topics.status_topic("f", name)


@pytest.mark.parametrize("key", ["", "a#b", "a,b", "enc//x", "/enc"])
def test_bad_branch_keys_are_refused(key: str) -> None:
    with pytest.raises(ValueError, match="branch_key"):
        topics.update_topic("f", "a1", key)
