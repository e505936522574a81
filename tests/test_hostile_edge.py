"""Issue 14 on the training side: hostile configs, data files and checkpoints end in one line.

Every issue example of kinds 3, 4 and 5 that the edge loaders see is here, run through the
command line as a user would: exit status 2 and one line `error: <file>: <field>: <expected>`,
never a traceback. On the main branch before this change each of them was accepted (kind 3:
`config check` printed OK), ended in a traceback (non-UTF-8 config, `{"format": 1}`, a missing
weight, another config on resume) or allocated what a header claimed (npz bombs).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import subprocess
import sys
import typing
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from annotated_types import Interval

from edge.cli import main
from edge.config import schema
from edge.config.load import parse_config
from edge.data.fleet_data import agent_data, fleet_info
from edge.learning.checkpoint import save_checkpoint
from edge.learning.learner import make_learner
from edge.learning.strategies import get_strategy

from .hostile_files import npy_header

BASE: dict[str, Any] = {
    "fleet": "hostile",
    "data": {"dataset": "synthetic-pid", "synthetic": {"n_samples": 300, "dim": 6}},
    "agents": {"counts": {"a": 1, "a+b": 1}},
    "topology": {"kind": "ring"},
}


def _one_line_error(err: str, path: Path, field: str) -> None:
    """One line naming the file and the field (a field ending in "." names its prefix)."""
    assert err.count("\n") == 1 and "Traceback" not in err, err
    head = f"error: {path}: {field}" if field.endswith(".") else f"error: {path}: {field}: "
    assert err.startswith(head), err


def _set(raw: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    node = raw
    *parents, last = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return raw


# Kind 3: numbers that passed every check (the examples, verbatim).
NUMBERS = [
    ("model.split", [1, math.nan, 1], "model.split[1]", "finite"),
    ("training.weight_decay", math.nan, "training.weight_decay", "finite"),
    ("comm.deadline_s", math.nan, "comm.deadline_s", "finite"),
    ("training.seed", 99999999999999999999999999, "training.seed", "from 0 to 4294967295"),
    ("families.a.latent", 999999999999, "families.a.latent", "from 3 to 4096"),
    ("comm.deadline_s", math.inf, "comm.deadline_s", "finite"),
    ("data.partition.alpha", -math.inf, "data.partition.alpha", "finite"),
    ("training.lr", 0, "training.lr", "> 0"),
]


@pytest.mark.parametrize(("dotted", "value", "field", "words"), NUMBERS,
                         ids=[f"{c[0]}={c[1]}" for c in NUMBERS])
def test_absurd_numbers_are_refused_at_load(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            dotted: str, value: Any, field: str, words: str) -> None:
    # Prepare
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(_set(BASE, dotted, value)))
    # Execute
    code = main(["config", "check", str(path), "--no-data"])
    # Assert
    err = capsys.readouterr().err
    assert code == 2
    _one_line_error(err, path, field)
    assert words in err


def _numeric_leaves(cls: Any, path: str) -> list[tuple[str, Any, list[Any]]]:
    """Every int/float leaf of a schema dataclass: (path, type, Annotated metadata)."""
    out = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls, include_extras=True)[f.name]
        out += _leaves(hint, f"{path}.{f.name}".lstrip("."), [])
    return out


def _leaves(hint: Any, path: str, meta: list[Any]) -> list[tuple[str, Any, list[Any]]]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return _leaves(args[0], path, [*meta, *args[1:]])
    if origin in (typing.Union, __import__("types").UnionType):
        return [leaf for a in args if a is not type(None) for leaf in _leaves(a, path, meta)]
    if origin in (tuple, list):
        return [leaf for a in args if a is not Ellipsis for leaf in _leaves(a, f"{path}[]", [])]
    if origin is dict:
        return _leaves(args[1], f"{path}.*", [])
    if dataclasses.is_dataclass(hint):
        return _numeric_leaves(hint, path)
    return [(path, hint, meta)] if hint in (int, float) else []


def test_every_numeric_field_of_the_fleet_config_has_a_finite_range() -> None:
    # Execute
    leaves = _numeric_leaves(schema.FleetConfig, "")
    # Assert: one mechanism (annotated Interval, read by pydantic) bounds every number
    assert len(leaves) > 40
    unbounded = []
    for path, _, meta in leaves:
        box = [m for m in meta if isinstance(m, Interval)]
        low = box and (box[0].ge is not None or box[0].gt is not None)
        high = box and (box[0].le is not None or box[0].lt is not None)
        if not (low and high):
            unbounded.append(path)
    assert unbounded == []


def test_non_utf8_config_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    path = tmp_path / "latin1.yaml"
    path.write_bytes("fleet: caf\u00e9\n".encode("latin-1"))
    # Execute
    code = main(["config", "check", str(path)])
    # Assert
    err = capsys.readouterr().err
    assert code == 2
    _one_line_error(err, path, "<file>")
    assert "expected UTF-8" in err and "0xe9" in err


def test_yaml_alias_bomb_stops_at_the_value_budget(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: nine levels of ten aliases each would expand to 10^9 values
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    path = tmp_path / "laughs.yaml"
    path.write_text("\n".join(lines) + "\nfleet: x\n")
    # Execute
    code = main(["config", "check", str(path)])
    # Assert
    err = capsys.readouterr().err
    assert code == 2 and "at most 100000 values" in err
    _one_line_error(err, path, "<top level>")


def _npz_config(tmp_path: Path, data: Path) -> Path:
    raw = {"fleet": "npz", "data": {"dataset": "npz", "modalities": ["accel"], "path": str(data)},
           "agents": {"count": 2}, "topology": {"kind": "ring"}}
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _good_npz(path: Path) -> Path:
    rng = np.random.default_rng(0)
    with path.open("wb") as fh:
        np.savez(fh, y=np.arange(40) % 2, x_accel=rng.standard_normal((40, 3, 10)))
    return path


def _truncated(path: Path) -> Path:
    data = _good_npz(path).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _bit_flipped(path: Path) -> Path:
    data = bytearray(_good_npz(path).read_bytes())
    data[len(data) // 3] ^= 0x10  # inside x_accel's data: the zip CRC catches it
    path.write_bytes(bytes(data))
    return path


def _declared_bomb(path: Path) -> Path:
    """The issue's 844-byte archive whose x_accel header declares (10^12, 3, 50) float32."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("y.npy", npy_header((2,), "<i8") + bytes(16))
        archive.writestr("x_accel.npy", npy_header((10**12, 3, 50)) + bytes(600))
    return path


def _renamed_npy(path: Path) -> Path:
    with path.open("wb") as fh:
        np.save(fh, np.zeros((40, 3, 10), np.float32))
    return path


# Kinds 4 and 5: data files (the examples).
DATA_FILES = [
    ("truncated", _truncated, "<file>", "truncated or corrupt"),
    ("bit-flipped", _bit_flipped, "<file>", "Bad CRC-32"),
    ("npy-renamed-npz", _renamed_npy, "<file>", "single .npy"),
    ("declared-bomb", _declared_bomb, "x_accel", "over the loader's cap"),
]


@pytest.mark.parametrize(("make", "field", "words"), [c[1:] for c in DATA_FILES],
                         ids=[c[0] for c in DATA_FILES])
def test_hostile_npz_data_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      make: Any, field: str, words: str) -> None:
    # Prepare
    data = make(tmp_path / "data.npz")
    config = _npz_config(tmp_path, data)
    # Execute
    code = main(["config", "check", str(config)])
    # Assert
    err = capsys.readouterr().err
    assert code == 2
    _one_line_error(err, data, field)
    assert words in err


def test_npz_cap_is_configurable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: 40 x 3 x 10 float64 = 9600 bytes, over a 4 KiB cap
    data = _good_npz(tmp_path / "data.npz")
    config = _npz_config(tmp_path, data)
    raw = yaml.safe_load(config.read_text())
    raw["data"]["max_npz_bytes"] = 4096
    config.write_text(yaml.safe_dump(raw))
    # Execute
    code = main(["config", "check", str(config)])
    # Assert
    err = capsys.readouterr().err
    assert code == 2 and "cap of 4096 bytes" in err
    assert main(["config", "check", str(_npz_config(tmp_path, data))]) == 0


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real checkpoint of agent a1 (a+b) after one round of training."""
    cfg = parse_config(copy.deepcopy(BASE), "inline")
    spec = cfg.agent_specs[1]
    learner = make_learner(cfg, spec, agent_data(cfg)[spec.id], fleet_info(cfg),
                           get_strategy("parse").sharing, "sliced")
    learner.train(1)
    path = tmp_path_factory.mktemp("ckpt") / "agents" / spec.id / "checkpoint.pt"
    save_checkpoint(path, cfg, learner, spec.id, 0, "parse")
    return path


def _edited(checkpoint: Path, tmp_path: Path, edit: Any) -> Path:
    payload = torch.load(checkpoint, weights_only=True)
    payload = edit(payload)
    out = tmp_path / "edited.pt"
    torch.save(payload, out)
    return out


def _drop_one_weight(p: dict[str, Any]) -> dict[str, Any]:
    p["model_state"].pop(sorted(p["model_state"])[0])
    return p


def _nan_weights(p: dict[str, Any]) -> dict[str, Any]:
    p["model_state"] = {k: torch.full_like(v, math.nan) if v.is_floating_point() else v
                        for k, v in p["model_state"].items()}
    return p


def _nan_norm(p: dict[str, Any]) -> dict[str, Any]:
    p["norm"]["a"]["mean"][0] = math.nan
    return p


CHECKPOINTS = [
    ("format-only", lambda p: {"format": 1}, "agent_id", "required key is missing"),
    ("missing-weight", _drop_one_weight, "model_state.", "missing; expected a tensor of shape"),
    ("nan-weights", _nan_weights, "model_state.", "expected finite values"),
    ("nan-norm", _nan_norm, "norm.a.mean[0]", "finite"),
    ("other-format", lambda p: p | {"format": 2}, "format", "expected checkpoint format 1"),
    ("string-round", lambda p: p | {"round_idx": "x"}, "round_idx", "expected an integer"),
]


@pytest.mark.parametrize(("edit", "field", "words"), [c[1:] for c in CHECKPOINTS],
                         ids=[c[0] for c in CHECKPOINTS])
def test_hostile_checkpoint_export_is_one_line(checkpoint: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str], edit: Any,
                                               field: str, words: str) -> None:
    # Prepare
    path = _edited(checkpoint, tmp_path, edit)
    # Execute
    code = main(["export", str(path), "--out", str(tmp_path / "bundle")])
    # Assert
    err = capsys.readouterr().err
    assert code == 2
    _one_line_error(err, path, field)
    assert words in err
    assert not (tmp_path / "bundle").exists()


def test_resume_from_a_checkpoint_of_another_config_is_one_line(checkpoint: Path,
                                                                tmp_path: Path) -> None:
    # Prepare: the same fleet with a wider latent for a; a1's old checkpoint in its --out
    out = tmp_path / "run"
    (out / "agents" / "a1").mkdir(parents=True)
    (out / "agents" / "a1" / "checkpoint.pt").write_bytes(checkpoint.read_bytes())
    config = tmp_path / "wider.yaml"
    config.write_text(yaml.safe_dump(_set(BASE, "families", {"a": {"latent": 24}})))
    # Execute: the agent resumes before it connects, so no broker is needed to reach the check
    run = subprocess.run([sys.executable, "-m", "edge", "agent", str(config), "--agent", "a1",
                          "--broker", "mqtt://127.0.0.1:9", "--out", str(out), "--quiet",
                          "--energy", "estimated"], capture_output=True, text=True, timeout=120)
    # Assert
    assert run.returncode == 2, run.stderr
    _one_line_error(run.stderr, out / "agents" / "a1" / "checkpoint.pt", "spec.families.a")
    assert "another config" in run.stderr


def test_checkpoint_loader_never_reads_a_zip_bomb_as_weights(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: a zip that is not torch's checkpoint layout
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", b"\x93NUMPY" + bytes(100))
    # Execute
    code = main(["export", str(path), "--out", str(tmp_path / "bundle")])
    # Assert
    err = capsys.readouterr().err
    assert code == 2
    _one_line_error(err, path, "<file>")


class _Payload:
    """An object torch.save pickles as code to run (weights_only refuses it)."""


def test_empty_truncated_and_pickled_checkpoints_are_named_not_torch_advice(
        checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(checkpoint.read_bytes()[:1000])
    pickled = tmp_path / "pickled.pt"
    torch.save({"format": 1, "x": _Payload()}, pickled)
    cases = [(empty, "got an empty file"), (truncated, "truncated, corrupt or another format"),
             (pickled, "holds other Python objects, which are never loaded")]
    for path, words in cases:
        # Execute
        code = main(["export", str(path), "--out", str(tmp_path / "bundle")])
        err = capsys.readouterr().err
        # Assert: our words, never torch's advice to load with weights_only=False
        assert code == 2, err
        _one_line_error(err, path, "<file>")
        assert words in err and "weights_only" not in err


def test_lower_wing_errors_become_one_line_user_errors() -> None:
    # Prepare
    from devices.energy import EnergyUnavailable
    from devices.estimate import EnergyTotalsError
    from devices.i2c import I2cSpecError
    from devices.npzio import NpzError
    from edge.errors import UserError, as_user_error

    cases = [EnergyUnavailable("--energy measured: no sensor reads here"),
             EnergyTotalsError("energy totals: expected joules >= 0"),
             I2cSpecError("--i2c: expected chip@bus:address"),
             NpzError("f.npz", "x\nkey", "expected\n  a readable archive")]
    # Execute
    mapped = [as_user_error(exc) for exc in cases]
    # Assert: each becomes a UserError (exit 2) of one line; a bug stays a bug
    assert all(isinstance(m, UserError) and m.exit_code == 2 for m in mapped)
    assert all(len(str(m).splitlines()) == 1 for m in mapped)
    assert str(mapped[3]) == "f.npz: x\\nkey: expected a readable archive"
    assert as_user_error(RuntimeError("bug")) is None and as_user_error(KeyError("k")) is None
