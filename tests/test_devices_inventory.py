"""Inventories: validation (one-line errors), defaults, the Ansible mapping, bundle matching."""

from __future__ import annotations

from pathlib import Path

import pytest

from devices.fleet import bundles_for
from devices.inventory import InventoryError, from_ansible, load_inventory, parse_inventory
from devices.ssh import SshOptions, SshTarget
from edge.cli import main


def test_defaults_apply_and_boards_override(tmp_path: Path):
    inv = parse_inventory({
        "defaults": {"user": "pi", "identity": "~/.ssh/pe", "prefix": "/srv/pe"},
        "boards": {"a0": {"host": "10.0.0.11"},
                   "a1": {"host": "pi-7.local", "user": "root", "port": 2222,
                          "python": "/usr/bin/python3.11"}},
    }, "boards.yaml")
    assert list(inv) == ["a0", "a1"]
    a0, a1 = inv.board("a0"), inv.board("a1")
    assert a0.target == SshTarget("10.0.0.11", "pi", 22) and a0.prefix == "/srv/pe"
    assert a0.python == "python3"
    assert a1.target == SshTarget("pi-7.local", "root", 2222) and a1.python == "/usr/bin/python3.11"
    options = inv.ssh_options("a0", SshOptions(known_hosts=tmp_path / "kh"))
    assert options.identity == Path("~/.ssh/pe").expanduser()
    assert options.known_hosts == tmp_path / "kh"
    bare = parse_inventory({"boards": {"x": {"host": "h"}}}, "b.yaml").board("x")
    assert bare.prefix == "/opt/parse-edge" and bare.target.user is None


@pytest.mark.parametrize(("doc", "expected"), [
    ({"boards": {"a0": {"host": "h", "port": 70000}}}, "boards.yaml: boards.a0.port: "),
    ({"boards": {"a0": {"host": "h", "passwd": "x"}}}, "boards.yaml: boards.a0.passwd: unknown key"),
    ({"boards": {"a 0": {"host": "h"}}}, "boards.yaml: boards.a 0: expected an agent id"),
    ({"boards": {"a0": {"host": "h", "prefix": "relative/dir"}}},
     "boards.yaml: boards.a0.prefix: expected an absolute path"),
    ({"boards": {}}, "boards.yaml: boards: "),
    ({"boards": {"a0": {}}}, "boards.yaml: boards.a0.host: Field required"),
    (["a0"], "boards.yaml: <top level>: "),
])
def test_bad_inventories_are_one_line(doc, expected):
    with pytest.raises(InventoryError) as err:
        parse_inventory(doc, "boards.yaml")
    assert str(err.value).startswith(expected) and "\n" not in str(err.value)


def test_unreadable_and_bad_yaml(tmp_path: Path):
    with pytest.raises(InventoryError, match="cannot read the file"):
        load_inventory(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("boards: [unclosed\n")
    with pytest.raises(InventoryError, match="expected valid YAML"):
        load_inventory(bad)


def test_from_an_ansible_inventory(tmp_path: Path):
    path = tmp_path / "hosts.yaml"
    path.write_text(
        "all:\n  vars: {ansible_user: pi}\n  children:\n    watches:\n      vars: "
        "{parse_edge_prefix: /srv/pe}\n      hosts:\n        pi-1: {ansible_host: 10.0.0.11, "
        "parse_edge_agent: a0}\n        pi-2: {ansible_host: 10.0.0.12, ansible_port: 2222, "
        "parse_edge_agent: a1, ansible_ssh_private_key_file: /k}\n    gateways:\n      hosts:\n"
        "        a2: {ansible_python_interpreter: /usr/bin/python3.11}\n")
    inv = from_ansible(path)
    assert list(inv) == ["a0", "a1", "a2"]
    assert inv.board("a0").target == SshTarget("10.0.0.11", "pi", 22)
    assert inv.board("a0").prefix == "/srv/pe"
    assert inv.board("a1").target.port == 2222
    assert inv.ssh_options("a1", SshOptions()).identity == Path("/k")
    assert inv.board("a2").target.host == "a2" and inv.board("a2").python == "/usr/bin/python3.11"


def test_an_inventory_agent_without_a_bundle_is_refused(tmp_path: Path, capsys):
    (tmp_path / "bundles").mkdir()
    inv_file = tmp_path / "boards.yaml"
    inv_file.write_text("boards:\n  ghost: {host: 127.0.0.1}\n")
    with pytest.raises(InventoryError, match=r"boards.ghost: expected an agent with a bundle"):
        bundles_for(load_inventory(inv_file), tmp_path / "bundles")
    code = main(["flash", "--inventory", str(inv_file), str(tmp_path / "bundles")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {inv_file}: boards.ghost: expected an agent with a bundle")


@pytest.mark.parametrize(("argv", "expected"), [
    (["flash", "b.tar.gz"], "--host / --inventory: expected exactly one of them"),
    (["flash", "b.tar.gz", "--host", "root@host:99999"], "--host 'root@host:99999': expected"),
    (["flash", "missing.tar.gz", "--host", "root@127.0.0.1:1"], "expected a bundle file"),
    (["status", "--inventory", "nope.yaml"], "nope.yaml: <file>: cannot read the file"),
])
def test_flash_and_status_flags_are_checked(argv, expected, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1
