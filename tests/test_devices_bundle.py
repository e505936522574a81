"""Deploy bundles: byte-identical output, tar/gzip hygiene, MANIFEST, secrets, board-side checks."""

from __future__ import annotations

import gzip
import hashlib
import json
import platform
import re
import shutil
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from devices.board import install as board_install
from devices.board.release import BoardError
from devices.bundle import (
    FIXED_MTIME,
    BundleError,
    BundleFile,
    BundleSpec,
    Role,
    TargetPlatform,
    write_bundle,
)
from devices.wheel import build_wheel
from edge.cli import main
from tests.deploy_support import project_wheel
from tests.exporters_toy import toy_bundle

CONFIG = "fleet: tbundle\ndata: {dataset: synthetic-pid}\nagents: {count: 2}\n"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return project_wheel(tmp_path_factory.mktemp("wheel"))


def spec(wheel_file: Path, **kwargs: object) -> BundleSpec:
    values: dict[str, object] = dict(
        agent="a0", role=Role.TRAIN, version="0.1.0", fleet="tbundle", config_text=CONFIG,
        wheel=wheel_file, target=TargetPlatform("aarch64", "3.11"),
        secrets={"hmac_key": b"k3y", "broker_password": b"pw"},
        files=(BundleFile("data/fleet.npz", b"\x00npz"),))
    values.update(kwargs)
    return BundleSpec(**values)  # type: ignore[arg-type]


def test_the_project_wheel_builds_byte_identical(tmp_path):
    first = build_wheel(tmp_path / "one")
    second = build_wheel(tmp_path / "two")
    assert first.read_bytes() == second.read_bytes()
    assert first.name.startswith("parse_edge-") and first.suffix == ".whl"


def test_same_inputs_give_byte_identical_bundles(wheel, tmp_path):
    a = write_bundle(spec(wheel), tmp_path / "a" / "x.tar.gz")
    b = write_bundle(spec(wheel), tmp_path / "b" / "y.tar.gz")
    assert a.path.read_bytes() == b.path.read_bytes() and a.sha256 == b.sha256
    assert a.release == f"0.1.0-{a.sha256[:12]}"
    c = write_bundle(spec(wheel, config_text=CONFIG + "strategy: local\n"), tmp_path / "c.tar.gz")
    assert c.sha256 != a.sha256


def test_entries_are_sorted_with_fixed_owner_time_and_gzip_header(wheel, tmp_path):
    info = write_bundle(spec(wheel), tmp_path / "b.tar.gz")
    raw = info.path.read_bytes()
    assert raw[4:8] == b"\x00\x00\x00\x00"  # gzip MTIME field
    assert raw[3] & 0x08 == 0  # no FNAME: the output file name is not recorded
    with tarfile.open(info.path, "r:gz") as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names == sorted(names)
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == \
            {(FIXED_MTIME, 0, 0, "root", "root")}
        modes = {m.name: m.mode for m in members}
        assert modes["secrets/hmac_key"] == modes["secrets/broker_password"] == 0o600
        assert modes["install.py"] == 0o755
        meta = json.loads(tar.extractfile("bundle.json").read())  # type: ignore[union-attr]
        manifest = tar.extractfile("MANIFEST").read()  # type: ignore[union-attr]
        listed = dict(reversed(line.split("  ", 1)) for line in manifest.decode().splitlines())
        for m in members:
            if m.name in ("MANIFEST", "bundle.json"):
                continue
            data = tar.extractfile(m).read()  # type: ignore[union-attr]
            assert listed.pop(m.name) == hashlib.sha256(data).hexdigest()
        assert not listed
    assert meta["manifest_sha256"] == hashlib.sha256(manifest).hexdigest()
    assert meta["target"] == {"arch": "aarch64", "python": "3.11"}
    assert meta["role"] == "train" and "torch" in meta["imports"]
    assert info.n_files == len(members)


def test_infer_role_carries_the_model_and_no_torch(wheel, tmp_path):
    toy = toy_bundle("mlp", ("accel", "gyro"))
    info = write_bundle(spec(wheel, role=Role.INFER, export_dir=toy.dir), tmp_path / "i.tar.gz")
    with tarfile.open(info.path, "r:gz") as tar:
        meta = json.loads(tar.extractfile("bundle.json").read())  # type: ignore[union-attr]
        names = tar.getnames()
    assert "torch" not in " ".join(meta["imports"] + meta["requirements"])
    assert sorted(meta["imports"]) == ["msgspec", "numpy", "onnxruntime", "paho.mqtt", "yaml"]
    assert "model/manifest.json" in names
    with pytest.raises(BundleError, match="infer bundle needs the exported model"):
        write_bundle(spec(wheel, role=Role.INFER), tmp_path / "j.tar.gz")


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"files": (BundleFile("../etc/passwd", b"x"),)}, "expected a relative path of plain names"),
    ({"files": (BundleFile("config/fleet.yaml", b"x"),)}, "expected once in the bundle"),
    ({"wheel": Path("/nonexistent.whl")}, "expected the project wheel"),
])
def test_bad_bundle_inputs_are_one_line_errors(wheel, tmp_path, kwargs, expected):
    with pytest.raises(BundleError, match=expected) as err:
        write_bundle(spec(wheel, **kwargs), tmp_path / "x.tar.gz")
    assert "\n" not in str(err.value)


def test_target_platform_is_validated():
    with pytest.raises(BundleError, match="target arch: expected a machine name"):
        TargetPlatform("arm 64", "3.11")
    with pytest.raises(BundleError, match=re.escape("target python: expected a version like 3.11")):
        TargetPlatform("aarch64", "2")


def _extract(bundle: Path, dest: Path) -> dict:
    with tarfile.open(bundle, "r:gz") as tar:
        tar.extractall(dest, filter="data")
    return json.loads((dest / "bundle.json").read_text())


def test_board_verification_catches_edits(wheel, tmp_path):
    info = write_bundle(spec(wheel), tmp_path / "b.tar.gz")
    root = tmp_path / "x"
    meta = _extract(info.path, root)
    assert board_install.verify_manifest(root, meta) == info.n_files - 2
    (root / "config" / "fleet.yaml").write_text("fleet: evil\n")
    with pytest.raises(BoardError, match=re.escape("config/fleet.yaml: sha256 does not match MANIFEST")):
        board_install.verify_manifest(root, meta)
    shutil.rmtree(root)
    meta = _extract(info.path, root)
    (root / "extra.py").write_text("print('hi')\n")
    with pytest.raises(BoardError, match=re.escape("extra.py: expected in MANIFEST")):
        board_install.verify_manifest(root, meta)
    (root / "extra.py").unlink()
    (root / "MANIFEST").write_text((root / "MANIFEST").read_text() + "0" * 64 + "  ghost\n")
    with pytest.raises(BoardError, match=re.escape("MANIFEST: expected the sha256 recorded in bundle.json")):
        board_install.verify_manifest(root, meta)


def test_board_refuses_another_platform():
    here = board_install.board_platform()
    board_install.check_platform({"target": here})
    with pytest.raises(BoardError, match=r"bundle targets riscv64/Python .*board has"):
        board_install.check_platform({"target": {**here, "arch": "riscv64"}})
    with pytest.raises(BoardError, match=r"bundle targets .*/Python 3\.2, board has"):
        board_install.check_platform({"target": {**here, "python": "3.2"}})


def _config(tmp_path: Path) -> Path:
    data = tmp_path / "fleet.npz"
    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(data, y=np.arange(40) % 2, x_a=rng.normal(size=(40, 4)).astype("float32"))
    from broker.credentials import make_credentials, write_credentials

    write_credentials(make_credentials("tcli", ["a0", "a1"]), tmp_path / "creds")
    config = tmp_path / "fleet.yaml"
    config.write_text(
        "fleet: tcli\ndata: {dataset: npz, modalities: [a], path: fleet.npz}\n"
        "agents: {count: 2}\nbroker: {url: 'mqtt://10.0.0.2:1883', credentials: creds}\n")
    return config


def test_cli_bundle_moves_secrets_out_of_the_config_and_carries_the_data(tmp_path, capsys,
                                                                           wheel):
    config = _config(tmp_path)
    out = tmp_path / "out"
    args = ["bundle", str(config), "--all-agents", "--out", str(out), "--wheel", str(wheel)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    own = (tmp_path / "creds" / "agents" / "a0.secret").read_bytes()
    fleet_key = (tmp_path / "creds" / "fleet.key").read_bytes()
    assert own.strip().decode() not in printed and fleet_key.strip().decode() not in printed
    assert sorted(p.name for p in out.iterdir()) == ["a0.tar.gz", "a1.tar.gz"]
    with tarfile.open(out / "a0.tar.gz", "r:gz") as tar:
        text = tar.extractfile("config/fleet.yaml").read().decode()  # type: ignore[union-attr]
        assert own.strip().decode() not in text and "creds" not in text
        doc = yaml.safe_load(text)
        assert doc["data"]["path"] == "../data/fleet.npz"
        # Its own secret only (not a1's), and the fleet key, each a 0600 file of its own.
        assert tar.extractfile("secrets/broker_password").read() == own  # type: ignore[union-attr]
        assert tar.extractfile("secrets/fleet_key").read() == fleet_key  # type: ignore[union-attr]
        assert tar.getmember("secrets/fleet_key").mode == 0o600
        assert tar.getmember("secrets/broker_password").mode == 0o600
        assert tar.extractfile("data/fleet.npz").read() == (tmp_path / "fleet.npz").read_bytes()  # type: ignore[union-attr]
        meta = json.loads(tar.extractfile("bundle.json").read())  # type: ignore[union-attr]
    # The x86 default profile gives the x86_64 target.
    assert meta["target"]["arch"] == "x86_64"
    again = tmp_path / "again"
    assert main([*args[:4], str(again), *args[5:]]) == 0
    assert (again / "a1.tar.gz").read_bytes() == (out / "a1.tar.gz").read_bytes()


@pytest.mark.parametrize(("extra", "expected"), [
    (["--agent", "zz", "--out", "x.tar.gz"], "--agent: 'zz' is not in"),
    (["--agent", "a0", "--out", "x.tar.gz", "--role", "infer"], "--export: an infer bundle"),
    (["--agent", "a0", "--out", "x.tar.gz", "--broker", "embedded"], "broker.url: expected"),
    (["--agent", "a0", "--out", "x.tar.gz", "--target-python", "three"], "target python"),
    (["--agent", "a0", "--out", "a0.zip"], "--out a0.zip: expected a file name ending in .tar.gz"),
    (["--all-agents", "--out", "x.tar.gz"], "--out x.tar.gz: expected a folder name for"),
])
def test_cli_bundle_bad_input_is_one_line_exit_2(tmp_path, capsys, wheel, extra, expected):
    config = _config(tmp_path)
    code = main(["bundle", str(config), "--wheel", str(wheel), *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and expected in err
    assert err.count("\n") == 1


def test_the_arch_follows_the_device_profile(tmp_path, wheel):
    config = tmp_path / "pi.yaml"
    config.write_text("fleet: tpi\ndata: {dataset: synthetic-pid}\nagents: {count: 2, device: "
                      "rpi4}\nbroker: {url: 'mqtt://10.0.0.2:1883'}\n")
    assert main(["bundle", str(config), "--agent", "a0", "--out", str(tmp_path / "a0.tar.gz"),
                 "--wheel", str(wheel)]) == 0
    with tarfile.open(tmp_path / "a0.tar.gz", "r:gz") as tar:
        meta = json.loads(tar.extractfile("bundle.json").read())  # type: ignore[union-attr]
    assert meta["target"]["arch"] == "aarch64" != platform.machine()
    raw = gzip.decompress((tmp_path / "a0.tar.gz").read_bytes())
    assert b"mqtt://10.0.0.2:1883" in raw


def test_the_systemd_unit_verifies(tmp_path):
    """systemd's own checker accepts the rendered unit (PID 1 here is not systemd, so the
    systemd start path itself cannot run in this test environment)."""
    import subprocess

    from devices.bundle import systemd_unit

    release = tmp_path / "releases" / "0.1.0-abc"
    (release / "venv" / "bin").mkdir(parents=True)
    (release / "venv" / "bin" / "python").symlink_to(sys.executable)
    unit = systemd_unit("a0").replace("@PREFIX@", str(tmp_path))
    assert "ExecStart=" + str(tmp_path) + "/releases/%i/venv/bin/python" in unit
    (tmp_path / "parse-edge-a0@0.1.0-abc.service").write_text(unit)
    proc = subprocess.run(["systemd-analyze", "verify", "parse-edge-a0@0.1.0-abc.service"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "parse-edge-a0@0.1.0-gone.service").write_text(unit)
    proc = subprocess.run(["systemd-analyze", "verify", "parse-edge-a0@0.1.0-gone.service"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode != 0 and "is not executable" in proc.stderr
