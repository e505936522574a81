"""Fleet config loading: valid examples parse; bad input is one line naming file and field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge.cli import main
from edge.config.load import load_config, parse_config
from edge.learning.model import slice_widths

from .conftest import EXAMPLES

BASE: dict[str, Any] = {
    "fleet": "f1",
    "data": {"dataset": "synthetic-pid"},
    "agents": {"counts": {"a": 2, "b": 2, "a+b": 2}},
    "topology": {"kind": "ring"},
}


def _with(path: str, value: Any) -> dict[str, Any]:
    raw = copy.deepcopy(BASE)
    node = raw
    *parents, last = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    if value is _DELETE:
        node.pop(last)
    else:
        node[last] = value
    return raw


_DELETE = object()

# (case id, raw config, field path that must be named, words the message must contain)
BAD_CASES = [
    ("unknown-top-key", _with("colour", "red"), "colour", "unknown key"),
    ("unknown-nested-key", _with("training.epochz", 3), "training.epochz", "unknown key"),
    ("wrong-type-int", _with("training.rounds", "ten"), "training.rounds", "expected an integer"),
    ("bool-as-int", _with("training.rounds", True), "training.rounds", "expected an integer"),
    ("wrong-type-list", _with("model.split", 3), "model.split", "expected a list"),
    ("unknown-dataset", _with("data.dataset", "imagenet"), "data.dataset", "expected one of"),
    ("unknown-modality-counts", _with("agents.counts", {"a": 1, "lidar": 1}),
     "agents.counts.lidar", "unknown modality"),
    ("unknown-modality-data", {**_with("data.dataset", "mfeat"), "agents": {"count": 4},
                               "data": {"dataset": "mfeat", "modalities": ["fou", "xyz"]}},
     "data.modalities[1]", "unknown modality"),
    ("unsafe-agent-id", _with("agents.list", [{"id": "a/1", "modalities": ["a"]}]),
     "agents.list[0].id", "safe MQTT topic level"),
    ("agent-id-with-plus", _with("agents.list", [{"id": "a+b", "modalities": ["a"]}]),
     "agents.list[0].id", "safe MQTT topic level"),
    ("duplicate-agent-id", _with("agents.list", [{"id": "x", "modalities": ["a"]},
                                                 {"id": "x", "modalities": ["b"]}]),
     "agents.list[1].id", "duplicate agent id"),
    ("isolated-agent", {**_with("topology", {"kind": "edges", "edges": [["a0", "a1"]]})},
     "topology", "no neighbour"),
    ("chord-wraps-around", _with("topology", {"kind": "chordal-ring", "chords": [1, 30]}),
     "topology.chords", "expected offsets from 1 to"),
    ("edge-unknown-agent", _with("topology", {"kind": "edges", "edges": [["a0", "zz"]]}),
     "topology.edges[0]", "known agent ids"),
    ("bad-strategy", _with("strategy", "fedavg"), "strategy", "expected one of"),
    ("impossible-split", _with("model.split", [1, 1, 200]), "model.split", "zero width"),
    # Each ratio is bounded by the schema itself now, so the error names the element.
    ("negative-split", _with("model.split", [1, -1, 1]), "model.split[1]", "expected a number > 0"),
    ("unknown-device", _with("agents.device", "pdp11"), "agents.device", "unknown device"),
    ("missing-fleet", _with("fleet", _DELETE), "fleet", "required key is missing"),
    ("unsafe-fleet", _with("fleet", "my fleet"), "fleet", "safe MQTT topic level"),
    ("bad-broker-url", _with("broker.url", "http://x"), "broker.url", "mqtt://host:port"),
    ("chunk-too-big", _with("comm.chunk_kib", 1024), "comm.chunk_kib", "1 to 256"),
    ("bad-codec", _with("comm.codec", "zip"), "comm.codec", "expected one of"),
    ("regular-degree-odd", _with("topology", {"kind": "random-regular", "degree": 3}) | {
        "agents": {"counts": {"a": 3, "b": 2}}}, "topology.degree", "even"),
    ("conv-on-vectors", _with("families", {"a": {"kind": "conv1d"}}), "families.a.kind",
     "expected mlp"),
    ("npz-without-path", {**BASE, "data": {"dataset": "npz", "modalities": ["a"]},
                          "agents": {"count": 3}}, "data.path", "npz data needs"),
    ("quorum-word", _with("training.quorum", "most"), "training.quorum", "expected one of 'all'"),
    ("quorum-too-many", _with("training.quorum", 7), "training.quorum", "in [1, 6]"),
    ("quorum-zero-fraction", _with("training.quorum", 0.0), "training.quorum", "a number > 0"),
    ("quorum-infinite", _with("training.quorum", float("inf")), "training.quorum", "a finite number"),
    ("start-timeout-nan", _with("training.start_timeout_s", float("nan")), "training.start_timeout_s",
     "a finite number"),
    ("start-timeout-zero", _with("training.start_timeout_s", 0), "training.start_timeout_s",
     "a number > 0"),
    ("listed-agent-bad-device", _with("agents.list", [{"id": "w", "modalities": ["a"], "device": "pdp11"}]),
     "agents.list[0].device", "unknown device profile"),
]


@pytest.mark.parametrize(("raw", "field", "words"), [c[1:] for c in BAD_CASES],
                         ids=[c[0] for c in BAD_CASES])
def test_bad_config_is_one_line_error_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], raw: dict, field: str, words: str
) -> None:
    # Prepare
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(raw))
    # Execute
    code = main(["config", "check", str(path), "--no-data"])
    # Assert
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: {path}: {field}: ")
    assert words in err


def test_unreadable_and_invalid_yaml_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    broken = tmp_path / "broken.yaml"
    broken.write_text("fleet: [unclosed\n")
    # Execute
    missing_code = main(["config", "check", str(tmp_path / "nope.yaml")])
    missing_err = capsys.readouterr().err
    broken_code = main(["config", "check", str(broken)])
    broken_err = capsys.readouterr().err
    # Assert
    assert missing_code == 2 and "nope.yaml: <file>: cannot read the file" in missing_err
    assert broken_code == 2 and f"{broken}: line " in broken_err and "valid YAML" in broken_err


def test_a_key_given_twice_is_refused_not_silently_replaced(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: the second `strategy:` would silently win under plain PyYAML; merges stay legal
    twice = tmp_path / "twice.yaml"
    twice.write_text("fleet: x\nstrategy: parse\ndata: {dataset: synthetic-pid}\n"
                     "agents: {count: 4}\nstrategy: local\n")
    nested = tmp_path / "nested.yaml"
    nested.write_text("fleet: x\ndata: {dataset: synthetic-pid}\nagents: {count: 4, count: 6}\n")
    merged = tmp_path / "merged.yaml"
    merged.write_text("fleet: x\ndata: {dataset: synthetic-pid}\nbase: &b {count: 4}\n"
                      "agents: {<<: *b, count: 6}\n")
    # Execute
    codes = [main(["config", "check", str(p)]) for p in (twice, nested)]
    err = capsys.readouterr().err
    # Assert
    assert codes == [2, 2]
    assert f"error: {twice}: line 5: expected valid YAML (found the key 'strategy' twice" in err
    assert f"error: {nested}: line 3: " in err and "'count' twice" in err
    assert len(err.strip().splitlines()) == 2
    # a merge then an explicit key is YAML's override, not a duplicate (rejected only for `base`)
    assert main(["config", "check", str(merged)]) == 2
    assert "base" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["basic-motions", "mfeat", "synthetic"])
def test_examples_load(name: str) -> None:
    # Execute
    cfg = load_config(EXAMPLES / f"{name}.yaml")
    # Assert
    assert len(cfg.agent_specs) >= 6
    assert cfg.families.keys() == set(cfg.modalities)


def test_mfeat_example_is_twelve_interleaved_agents() -> None:
    # Execute
    cfg = load_config(EXAMPLES / "mfeat.yaml")
    # Assert
    kinds = ["+".join(a.modalities) for a in cfg.agent_specs]
    assert kinds == ["fou", "zer", "fou+zer"] * 4
    assert cfg.data.partition.kind == "dirichlet" and cfg.data.partition.alpha == 0.5


def test_builtin_example_is_basic_motions_with_all_kinds() -> None:
    # Execute
    cfg = load_config(None)
    # Assert
    kinds = {"+".join(a.modalities) for a in cfg.agent_specs}
    assert cfg.data.dataset == "basic-motions" and len(cfg.agent_specs) == 8
    assert kinds == {"accel", "gyro", "accel+gyro"}


def test_defaults_fill_missing_families_and_sections() -> None:
    # Execute
    cfg = parse_config(copy.deepcopy(BASE), "inline")
    # Assert
    assert set(cfg.families) == {"a", "b"}
    assert cfg.strategy == "parse" and cfg.model.combiner == "sum" and not cfg.model.share_heads
    assert cfg.losses.aux_head == 0.25


@pytest.mark.parametrize(("latent", "split"), [(48, (1, 1, 1)), (10, (1, 1, 1)), (7, (2, 1, 1)),
                                               (30, (1, 2, 3)), (5, (1, 1, 3))])
def test_slice_widths_sum_to_latent(latent: int, split: tuple[float, ...]) -> None:
    # Execute
    widths = slice_widths(latent, split)
    # Assert
    assert sum(widths) == latent and min(widths) >= 1
    assert all(abs(w - latent * s / sum(split)) < 1 for w, s in zip(widths, split, strict=True))


def test_listed_agents_inherit_the_fleet_device_and_quorum_resolves_to_a_count() -> None:
    # Prepare
    from edge.config.schema import quorum_count

    raw = _with("agents.device", "rpi5")
    raw["agents"]["list"] = [{"id": "watch", "modalities": ["a", "b"]},
                             {"id": "nano", "modalities": ["a"], "device": "jetson-nano"}]
    # Execute
    cfg = parse_config(raw, "inline")
    # Assert: a listed agent without a device takes agents.device, one with a device keeps it.
    devices = {a.id: a.device for a in cfg.agent_specs}
    assert devices["watch"] == "rpi5" and devices["nano"] == "jetson-nano" and devices["a0"] == "rpi5"
    n = len(cfg.agent_specs)
    assert n == 8 and quorum_count(cfg.training, n) == 8   # "all" by default
    assert [quorum_count(parse_config(_with("training.quorum", q), "q").training, 8)
            for q in (3, 0.5, 0.51, 1.0, "all")] == [3, 4, 5, 8, 8]


def test_config_check_takes_a_field_file_and_checks_the_fleet_it_names(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: the built-in field, and a copy whose boards miss one agent of its fleet
    field = EXAMPLES / "field-basic-motions.yaml"
    raw = yaml.safe_load(field.read_text())
    raw["fleet"] = str(EXAMPLES / "basic-motions.yaml")
    raw["sites"]["south"]["boards"] = raw["sites"]["south"]["boards"][:-1]
    short = tmp_path / "short.yaml"
    short.write_text(yaml.safe_dump(raw))
    # Execute
    code = main(["config", "check", str(field), "--no-data"])
    out = capsys.readouterr().out
    short_code = main(["config", "check", str(short), "--no-data"])
    err = capsys.readouterr().err
    # Assert
    assert code == 0
    assert out.startswith(f"field vineyard ({field}): OK, 2 site(s), 8 boards")
    assert "  site south: a4, a5, a6, a7" in out
    assert f"config {EXAMPLES / 'basic-motions.yaml'}: OK" in out  # then the fleet's summary
    assert short_code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {short}: sites: expected a board for every agent")


def test_a_field_file_where_a_fleet_config_belongs_is_named_as_such(
        capsys: pytest.CaptureFixture[str]) -> None:
    # Execute
    code = main(["simulate", str(EXAMPLES / "field-basic-motions.yaml")])
    # Assert
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {EXAMPLES / 'field-basic-motions.yaml'}: <file>: expected a "
                          "fleet config, got a field file")


def test_a_field_file_naming_a_missing_fleet_says_so_from_the_field_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    raw = yaml.safe_load((EXAMPLES / "field-basic-motions.yaml").read_text())
    raw["fleet"] = "nothere.yaml"
    field = tmp_path / "field.yaml"
    field.write_text(yaml.safe_dump(raw))
    # Execute
    code = main(["config", "check", str(field), "--no-data"])
    # Assert
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {field}: fleet: expected an existing fleet config file, got "
                          f"{tmp_path / 'nothere.yaml'}")
