"""The field file, its layout and the commands it turns into (no root needed)."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from devices.field import control, impair
from devices.field.inventory import inventory_document
from devices.field.plan import Link, VethEnd, plan_field, resolve_link
from devices.field.spec import FieldSpec, FieldSpecError, LinkSpec, Outage, load_field, parse_field
from tests.conftest import EXAMPLES

REPO = Path(__file__).resolve().parents[1]

BASE: dict[str, Any] = {
    "field": "lab",
    "subnet": "10.77.0.0/16",
    "links": {"default": {"rate_kbit": 2000}, "kinds": {"lte": {"rate_kbit": 256,
                                                                "loss_percent": 2}}},
    "backhaul": {"rate_kbit": 1000},
    "sites": {
        "north": {"boards": ["a0", {"id": "a1", "kind": "lte"},
                             {"id": "a2", "kind": "lte",
                              "link": {"loss_percent": 0,
                                       "outages": [{"round": 4, "up_round": 6}]}}]},
        "south": {"boards": ["a3"], "backhaul": {"rate_kbit": 500,
                                                 "outages": [{"round": 2, "up_round": 3}]}},
    },
}


def _spec(doc: dict[str, Any] | None = None, **changes: Any) -> FieldSpec:
    return parse_field({**(doc or BASE), **changes}, "f.yaml", Path("/srv/fields"))


def test_links_resolve_default_then_kind_then_board_key_by_key() -> None:
    plan = plan_field(_spec())
    assert plan.board("a0").link == Link(2000, 0.0, ())
    assert plan.board("a1").link == Link(256, 2.0, ())
    # a2: rate from its kind, loss from itself (0 overrides the kind's 2), its own outage
    assert plan.board("a2").link == Link(256, 0.0, (Outage(round=4, up_round=6),))
    assert plan.site("north").backhaul == Link(1000, 0.0, ())
    assert plan.site("south").backhaul == Link(500, 0.0, (Outage(round=2, up_round=3),))
    assert resolve_link() == Link(None, 0.0, ())
    assert resolve_link(LinkSpec(rate_kbit=64), LinkSpec(loss_percent=5)) == Link(64, 5, ())


def test_layout_addresses_names_and_prefixes() -> None:
    plan = plan_field(_spec(), run_root=Path("/run/x"))
    assert plan.hub == "north" and plan.run_dir == Path("/run/x/lab")
    north, south = plan.sites
    assert (north.lan, south.lan) == (ipaddress.IPv4Network("10.77.1.0/24"),
                                      ipaddress.IPv4Network("10.77.2.0/24"))
    assert (str(north.gateway), str(north.operator), str(north.wan_address)) == \
        ("10.77.1.1", "10.77.1.254", "10.77.0.1")
    assert str(south.wan_address) == "10.77.0.2"
    assert [str(b.address) for b in north.boards] == ["10.77.1.2", "10.77.1.3", "10.77.1.4"]
    assert str(plan.board("a3").address) == "10.77.2.2"
    assert plan.board("a3").broker_url == "mqtt://10.77.2.1:1883"
    assert plan.board("a1").prefix == Path("/var/lib/parse-edge/field/lab/a1")
    assert plan.netns_names == ("lab-core", "lab-s-north", "lab-s-south", "lab-b-a0", "lab-b-a1",
                                "lab-b-a2", "lab-b-a3")
    assert plan.root_links == ("lab-m0", "lab-m1")
    assert plan.board("a2").far == VethEnd("lab-s-north", "b2")
    # Every name fits IFNAMSIZ even for the longest field name and the last site.
    many = {f"s{i}": {"boards": [f"x{i}"]} for i in range(250)}
    big = plan_field(_spec(field="abcdefghij", sites=many))
    assert max(len(s.operator_link.ifname) for s in big.sites) <= 15
    assert str(big.sites[-1].gateway) == "10.77.250.1"


def test_relative_paths_resolve_against_the_field_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "field.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump({**BASE, "fleet": "../fleet.yaml", "prefixes": "boards"}))
    spec = load_field(path)
    assert spec.fleet_path == tmp_path / "fleet.yaml"
    assert spec.prefixes == tmp_path / "sub" / "boards"
    assert spec.board_ids == ["a0", "a1", "a2", "a3"]


@pytest.mark.parametrize(("change", "where", "expected"), [
    ({"field": "Lab-1"}, "field", "matching"),
    ({"field": "abcdefghijk"}, "field", "matching"),
    ({"subnet": "8.8.0.0/16"}, "subnet", "private /16"),
    ({"subnet": "10.77.0.0/24"}, "subnet", "private /16"),
    ({"subnet": "nope"}, "subnet", "IPv4 network"),
    ({"hub": "west"}, "<top level>", "hub west is not one of the sites"),
    ({"sites": {}}, "sites", "at least 1"),
    ({"sites": {"n": {"boards": ["a0"]}, "s": {"boards": ["a0"]}}}, "<top level>",
     "board a0 is in sites n and s"),
    ({"sites": {"n": {"boards": [{"id": "a0", "kind": "wifi"}]}}}, "<top level>",
     "kind wifi is not in links.kinds"),
    ({"sites": {"n": {"boards": ["a 0"]}}}, "sites.n.boards[0].id", "matching"),
    ({"sites": {"n": {"boards": ["a0"], "color": "red"}}}, "sites.n.color", "unknown key"),
    ({"backhaul": {"rate_kbit": float("nan")}}, "backhaul.rate_kbit", "expected a finite number, got nan"),
    ({"backhaul": {"rate_kbit": float("inf")}}, "backhaul.rate_kbit", "finite"),
    ({"backhaul": {"rate_kbit": 1}}, "backhaul.rate_kbit", "expected a number >= 8, got 1"),
    ({"backhaul": {"rate_kbit": "256"}}, "backhaul.rate_kbit", "expected a number, got '256'"),
    ({"links": {"default": {"loss_percent": 101}}}, "links.default.loss_percent",
     "expected a number <= 100, got 101"),
    ({"links": {"default": {"loss_percent": -1}}}, "links.default.loss_percent",
     "expected a number >= 0, got -1"),
    ({"links": {"default": {"outages": [{"round": 3, "up_round": 3}]}}},
     "links.default.outages[0]", "expected up_round greater than round 3, got 3"),
    ({"links": {"default": {"outages": [{"round": 3, "up_round": 6}, {"round": 5, "up_round": 8}]}}},
     "links.default.outages", "none overlapping"),
    ({"links": {"default": {"outages": [{"round": True, "up_round": 6}]}}},
     "links.default.outages[0].round", "expected an integer, got True"),
    ({"tools": {"sshd": "sshd"}}, "tools.sshd", "matching"),
])
def test_bad_field_files_give_one_line_naming_the_field(change: dict[str, Any], where: str,
                                                       expected: str) -> None:
    with pytest.raises(FieldSpecError) as err:
        _spec(**change)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"f.yaml: {where}: "), message
    assert expected in message, message


def test_unreadable_or_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(FieldSpecError, match=r"missing.yaml: <file>: cannot read"):
        load_field(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("field: [unclosed\n")
    with pytest.raises(FieldSpecError, match=r"bad.yaml: <file>: expected valid YAML"):
        load_field(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(FieldSpecError, match=r"list.yaml: <top level>: "):
        load_field(listy)


def test_same_description_same_hash_other_description_other_hash() -> None:
    assert _spec().text_sha256 == _spec().text_sha256
    assert _spec().text_sha256 != _spec(backhaul={"rate_kbit": 999}).text_sha256


def test_tbf_parameters_follow_the_rate() -> None:
    # 256 kbit/s: 32 000 B/s; the bucket is two full frames (rate/100 = 320 B is smaller);
    # the queue adds 0.2 s of traffic.
    assert impair.tbf_args(256) == ["tbf", "rate", "256000bit", "burst", "3028",
                                    "limit", str(3028 + 6400)]
    # 100 Mbit/s: rate/100 = 125 000 B outgrows two frames.
    assert impair.tbf_args(100_000)[4] == "125000"


def test_loss_script_replaces_the_rule_and_zero_removes_it() -> None:
    end = VethEnd("lab-b-a0", "eth0")
    script = impair.loss_script("lab", end, 10)
    assert 'add chain netdev lab loss_eth0 { type filter hook ingress device "eth0"' in script
    assert "flush chain netdev lab loss_eth0" in script
    assert "numgen random mod 10000 < 1000 counter drop" in script
    assert "numgen" not in impair.loss_script("lab", end, 0)
    assert impair.loss_threshold(0.01) == 1 and impair.loss_threshold(100) == 10_000


def test_outage_steps_take_links_down_for_exactly_their_rounds() -> None:
    plan = plan_field(_spec())
    by_round = {r: [(s.target, s.name, s.down) for s in control.outage_steps(plan, r)]
                for r in range(8)}
    assert by_round == {0: [], 1: [], 2: [("backhaul", "south", True)],
                        3: [("backhaul", "south", False)], 4: [("board", "a2", True)], 5: [],
                        6: [("board", "a2", False)], 7: []}
    assert control.outage_steps(plan, 4)[0].far == VethEnd("lab-s-north", "b2")
    assert control.board_argv(plan, "a3", ["true"]) == ["ip", "netns", "exec", "lab-b-a3", "true"]


def test_inventory_has_the_deploy_schema() -> None:
    plan = plan_field(_spec())
    doc = inventory_document(plan, Path("/run/k/id"), Path("/run/k/kh"), board_python="python3")
    assert doc["defaults"] == {"user": "root", "port": 22, "identity": "/run/k/id",
                               "known_hosts": "/run/k/kh", "python": "python3"}
    assert doc["boards"]["a3"] == {"host": "10.77.2.2",
                                   "prefix": "/var/lib/parse-edge/field/lab/a3"}
    allowed = {"host", "user", "port", "identity", "known_hosts", "prefix", "python"}
    assert set(doc["defaults"]) <= allowed and all(set(b) <= allowed for b in doc["boards"].values())


def _cli(*args: str, user: int | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "edge", *args]
    if user is not None:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
    return subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_cli_refuses_without_root_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "f.yaml"
    path.write_text(yaml.safe_dump(BASE))
    for action in ("up", "down"):
        done = _cli("field", action, str(path), user=65534)
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1
        assert done.stderr.startswith(f"error: field {action} needs root: it creates network "
                                      "namespaces")


def test_cli_bad_field_file_and_fleet_mismatch_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**BASE, "backhaul": {"rate_kbit": -5}}))
    done = _cli("field", "up", str(bad))
    assert done.returncode == 2
    assert done.stderr == f"error: {bad}: backhaul.rate_kbit: expected a number >= 8, got -5\n"
    # The built-in example has agents a0..a7; a field with boards a0..a3 leaves four without one.
    partial = tmp_path / "partial.yaml"
    partial.write_text(yaml.safe_dump({**BASE, "fleet": str(EXAMPLES / "basic-motions.yaml")}))
    done = _cli("field", "up", str(partial))
    assert done.returncode == 2, done.stderr
    assert done.stderr == (f"error: {partial}: sites: expected a board for every agent of fleet "
                           "basic-motions-demo; none for a4, a5, a6, a7\n")
    done = _cli("field", "link", str(partial), "zz", "down")
    assert done.returncode == 2 and "expected a board of" in done.stderr


def test_the_example_field_places_every_agent_of_its_fleet() -> None:
    from edge.cli.field import check_fleet

    spec = load_field(REPO / "examples" / "field-basic-motions.yaml")
    assert spec.fleet_path == REPO / "examples" / "basic-motions.yaml"
    check_fleet(spec)  # raises UserError when an agent has no board or a board is no agent
    plan = plan_field(spec)
    assert len(plan.boards) == 8 and [s.name for s in plan.sites] == ["north", "south"]
    assert plan.board("a7").link.outages == (Outage(round=4, up_round=6),)
