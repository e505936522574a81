"""Identities: one secret per agent and the operator, Mosquitto's `$7$` hashes, private files."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import pytest

from broker.credentials import (
    PBKDF2_ITERATIONS,
    hash_password,
    make_credentials,
    read_fleet_key,
    read_secret,
    write_credentials,
    write_passwd,
)
from broker.keys import KeyRing


def test_credentials_are_distinct_random_and_private(tmp_path: Path) -> None:
    # Prepare / Execute
    credentials = make_credentials("f", ["a1", "a2"])
    files = write_credentials(credentials, tmp_path / "creds")
    # Assert: one secret per user, 256 bits each, none shared
    assert sorted(credentials.passwords) == ["a1", "a2", "operator"]
    assert len(set(credentials.passwords.values())) == 3
    assert all(len(base64.urlsafe_b64decode(p + "=")) == 32 for p in credentials.passwords.values())
    assert files.secrets["a1"] == tmp_path / "creds" / "agents" / "a1.secret"
    assert files.secrets["operator"] == tmp_path / "creds" / "operator.secret"
    for user, path in files.secrets.items():
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        assert read_secret(path) == credentials.passwords[user]
    assert oct(files.fleet_key.stat().st_mode & 0o777) == "0o600"
    assert read_fleet_key(files.fleet_key) == credentials.fleet_key and len(credentials.fleet_key) == 32
    assert oct(files.passwd.stat().st_mode & 0o777) == "0o640"
    lines = files.passwd.read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == ["a1", "a2", "operator"]
    assert all(line.split(":")[1].startswith(f"$7${PBKDF2_ITERATIONS}$") for line in lines)
    assert not any(p in files.passwd.read_text() for p in credentials.passwords.values())
    assert make_credentials("f", ["a1"]).fleet_key != credentials.fleet_key
    KeyRing("f", read_fleet_key(files.fleet_key))  # usable as it is


def test_hash_is_exactly_what_mosquitto_passwd_writes(tmp_path: Path) -> None:
    tool = shutil.which("mosquitto_passwd")
    assert tool is not None, "mosquitto_passwd ships with the mosquitto package on this machine"
    path = tmp_path / "pw"
    path.touch()
    subprocess.run([tool, "-b", str(path), "alice", "s3cret:with colon"], check=True, timeout=30)
    theirs = path.read_text().strip().split(":", 1)[1]
    _, kind, iterations, salt, _ = theirs.split("$")
    ours = hash_password("s3cret:with colon", base64.b64decode(salt), int(iterations))
    assert (kind, ours) == ("7", theirs)


@pytest.mark.parametrize("users,match", [({"a:b": "x"}, "user"), ({"": "x"}, "user"),
                                         ({"a": "x\ny"}, "line break")])
def test_bad_users_are_refused(users: dict[str, str], match: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=match):
        write_passwd(tmp_path / "passwd", users)
    assert not (tmp_path / "passwd").exists()


def test_make_credentials_checks_names() -> None:
    for agents, match in ((["a1", "a1"], "duplicates"), (["operator"], "operator"), (["a/1"], "agent id")):
        with pytest.raises(ValueError, match=match):
            make_credentials("f", agents)


def test_reading_secrets_gives_one_line_errors(tmp_path: Path) -> None:
    good = tmp_path / "ok.secret"
    good.write_text("s3cret\n")
    good.chmod(0o600)
    assert read_secret(good) == "s3cret"
    cases = {"open.secret": ("s3cret\n", 0o644, "readable by others"),
             "empty.secret": ("\n", 0o600, "one line"),
             "two.secret": ("a\nb\n", 0o600, "one line"),
             "bin.secret": (None, 0o600, "unreadable")}
    for name, (text, mode, match) in cases.items():
        path = tmp_path / name
        if text is None:
            path.write_bytes(b"\xff\xfe")
        else:
            path.write_text(text)
        path.chmod(mode)
        with pytest.raises(ValueError, match=f"^{path}: secret: .*{match}"):
            read_secret(path)
    with pytest.raises(ValueError, match="no such file"):
        read_secret(tmp_path / "missing")
    key = tmp_path / "fleet.key"
    for text, match in (("zz\n", "hex"), ("00ff\n", "at least 16")):
        key.write_text(text)
        key.chmod(0o600)
        with pytest.raises(ValueError, match=f"^{key}: fleet key: .*{match}"):
            read_fleet_key(key)
