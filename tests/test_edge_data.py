"""Per-agent data: partition + split + windows + own-train normalisation; bad data via the CLI."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from edge.cli import main
from edge.config.agents import multimodal_mix
from edge.config.load import parse_config
from edge.config.schema import FleetConfig
from edge.data.fleet_data import agent_data, cut_windows, fleet_info, load_pool
from edge.learning.sharing import combination as kind_of


def _cfg(raw: dict[str, Any], source: str = "fleet.yaml") -> FleetConfig:
    return parse_config({"fleet": "f", **raw}, source)


MFEAT = {"data": {"dataset": "mfeat", "modalities": ["fou", "zer"],
                  "partition": {"kind": "dirichlet", "alpha": 0.5}},
         "agents": {"count": 12, "multimodal_fraction": 0.34}}
MOTIONS = {"data": {"dataset": "basic-motions", "window": 40, "stride": 20},
           "agents": {"counts": {"accel": 2, "gyro": 2, "accel+gyro": 2}}}
SYNTHETIC = {"data": {"dataset": "synthetic-pid",
                      "synthetic": {"modalities": ["a", "b", "c"], "n_samples": 600, "dim": 5}},
             "agents": {"count": 6, "multimodal_fraction": 0.5}}


@pytest.mark.parametrize("raw", [MFEAT, MOTIONS, SYNTHETIC], ids=["mfeat", "motions", "synth"])
def test_every_agent_gets_its_own_modalities_with_the_fleet_shapes(raw: dict[str, Any]) -> None:
    # Prepare
    cfg = _cfg(raw)
    shapes = fleet_info(cfg).input_shapes

    # Execute
    data = agent_data(cfg)

    # Assert
    assert list(data) == [a.id for a in cfg.agent_specs]
    for spec in cfg.agent_specs:
        agent = data[spec.id]
        assert agent.modalities == spec.modalities
        for split in (agent.train, agent.test):
            assert set(split.x) == set(spec.modalities)
            for m, x in split.x.items():
                assert x.shape == (len(split), *shapes[m]) and x.dtype == np.float32
            assert split.y.dtype == np.int64 and split.y.max() < len(fleet_info(cfg).labels)
        assert len(agent.test) >= 1 and set(agent.norm) == set(spec.modalities)


def test_input_shapes_and_classes_per_data_set() -> None:
    # Execute / Assert
    assert fleet_info(_cfg(MFEAT)).input_shapes == {"fou": (76,), "zer": (47,)}
    assert len(fleet_info(_cfg(MFEAT)).labels) == 10
    assert fleet_info(_cfg(MOTIONS)).input_shapes == {"accel": (3, 40), "gyro": (3, 40)}
    assert len(fleet_info(_cfg(MOTIONS)).labels) == 4
    assert fleet_info(_cfg(SYNTHETIC)).input_shapes == {"a": (5,), "b": (5,), "c": (5,)}
    assert len(fleet_info(_cfg(SYNTHETIC)).labels) == 2 ** (1 + 3 + 1)


@pytest.mark.parametrize("raw", [MFEAT, MOTIONS], ids=["mfeat", "motions"])
def test_agents_data_is_disjoint_covers_the_pool_and_is_deterministic(raw: dict[str, Any]) -> None:
    # Prepare
    cfg = _cfg(raw)
    reseeded = _cfg({**raw, "training": {"seed": 1}})

    # Execute
    data, again, other = agent_data(cfg), agent_data(cfg), agent_data(reseeded)

    # Assert
    rows = [np.unique(np.r_[d.train.origin, d.test.origin]) for d in data.values()]
    joined = np.concatenate(rows)
    assert len(joined) == len(np.unique(joined)) == load_pool(cfg).n_samples
    for agent_id, d in data.items():
        np.testing.assert_array_equal(d.train.origin, again[agent_id].train.origin)
        np.testing.assert_array_equal(d.test.x[d.modalities[0]],
                                      again[agent_id].test.x[d.modalities[0]])
    assert any(not np.array_equal(d.train.origin, other[a].train.origin) for a, d in data.items())


def test_windows_of_one_recording_never_straddle_train_and_test() -> None:
    # Prepare
    cfg = _cfg(MOTIONS)

    # Execute
    data = agent_data(cfg)

    # Assert: window 40, stride 20 over 100 steps -> 4 windows per recording, all on one side.
    for d in data.values():
        assert not set(d.train.origin) & set(d.test.origin)
        assert np.all(np.bincount(d.train.origin)[np.unique(d.train.origin)] == 4)
        assert np.all(np.bincount(d.test.origin)[np.unique(d.test.origin)] == 4)


def test_cut_windows_takes_each_recording_in_steps_of_stride() -> None:
    # Prepare: recording r, channel c, step t holds 1000 r + 100 c + t.
    x = (1000 * np.arange(2)[:, None, None] + 100 * np.arange(3)[None, :, None]
         + np.arange(10)[None, None, :]).astype(np.float32)

    # Execute
    windows = cut_windows(x, window=4, stride=3)

    # Assert: starts 0, 3, 6 per recording.
    assert windows.shape == (6, 3, 4)
    np.testing.assert_array_equal(windows[1, 2], [203, 204, 205, 206])
    np.testing.assert_array_equal(windows[5, 0], [1006, 1007, 1008, 1009])


@pytest.mark.parametrize("raw", [MFEAT, MOTIONS], ids=["mfeat", "motions"])
def test_normalisation_is_fitted_on_the_agents_own_training_data_only(raw: dict[str, Any]) -> None:
    # Prepare
    cfg = _cfg(raw)
    pool = load_pool(cfg)

    # Execute
    data = agent_data(cfg)

    # Assert
    for d in data.values():
        m = d.modalities[0]
        axes = (0, 2) if pool.series else (0,)
        train_mean = d.train.x[m].mean(axis=axes)
        np.testing.assert_allclose(train_mean, 0, atol=1e-3)
        varying = d.norm[m].std != 1.0  # constant features keep std 1 and stay at 0
        np.testing.assert_allclose(d.train.x[m].std(axis=axes)[varying], 1, atol=1e-3)
        assert np.abs(d.test.x[m].mean(axis=axes)).max() > 1e-3  # test is not re-fitted
        # The stats are those of the raw rows this agent trains on, not of the pool.
        raw_rows = pool.x[m][np.unique(d.train.origin)]
        if pool.series:
            raw_rows = cut_windows(raw_rows, cfg.data.window, cfg.data.stride)
        np.testing.assert_allclose(d.norm[m].mean, raw_rows.mean(axis=axes), rtol=1e-4,
                                   atol=1e-4)
        assert not np.allclose(d.norm[m].mean, pool.x[m].mean(axis=axes), atol=1e-4)


@pytest.mark.parametrize(("count", "fraction", "modalities"),
                         [(12, 0.34, ["fou", "zer"]), (10, 0.5, ["fou", "kar", "zer"]),
                          (8, 0.0, ["fou", "zer"]), (5, 1.0, ["fou", "zer"])])
def test_multimodal_fraction_knob_yields_the_requested_mix(count: int, fraction: float,
                                                           modalities: list[str]) -> None:
    # Prepare
    raw = {"data": {"dataset": "mfeat", "modalities": modalities},
           "agents": {"count": count, "multimodal_fraction": fraction}}

    # Execute
    cfg = _cfg(raw)
    data = agent_data(cfg)

    # Assert
    kinds: dict[str, int] = {}
    for d in data.values():
        kinds[kind_of(d.modalities)] = kinds.get(kind_of(d.modalities), 0) + 1
    n_multi = kinds.get("+".join(modalities), 0)
    assert n_multi == round(count * fraction)
    assert sum(kinds.values()) == count
    uni = [kinds.get(m, 0) for m in modalities]
    assert max(uni) - min(uni) <= 1
    assert kinds == {kind_of(k): n for k, n in multimodal_mix(count, fraction,
                                                              tuple(modalities)).items()}


# --- npz: a user's files -----------------------------------------------------------------------

def _npz(path: Path, n: int, seed: int = 0, **override: Any) -> Path:
    rng = np.random.default_rng(seed)
    arrays = {"y": np.arange(n) % 3, "x_accel": rng.standard_normal((n, 3, 16)),
              "x_gyro": rng.standard_normal((n, 3, 16)) + 5} | override
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


NPZ_FILES: dict[str, Any] = {
    "data": {"dataset": "npz", "modalities": ["accel", "gyro"],
             "partition": {"min_samples": 4}},
    "agents": {"list": [{"id": "a1", "modalities": ["accel"], "data": "data/a1.npz"},
                        {"id": "a2", "modalities": ["gyro"], "data": "data/a2.npz"},
                        {"id": "a3", "modalities": ["accel", "gyro"], "data": "data/a3.npz"}]},
    "topology": {"kind": "complete"},
}


def _write_config(tmp_path: Path, raw: dict[str, Any]) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump({"fleet": "f", **raw}))
    return path


def test_npz_fleet_file_is_partitioned_over_agents(tmp_path: Path) -> None:
    # Prepare
    _npz(tmp_path / "all.npz", 90)
    raw = {"data": {"dataset": "npz", "modalities": ["accel", "gyro"], "path": "all.npz"},
           "agents": {"count": 3, "multimodal_fraction": 0.34}}
    cfg = _cfg(raw, str(tmp_path / "fleet.yaml"))

    # Execute
    data = agent_data(cfg)

    # Assert
    assert [len(d.train) + len(d.test) for d in data.values()] == [30, 30, 30]
    assert fleet_info(cfg).input_shapes == {"accel": (3, 16), "gyro": (3, 16)}
    joined = np.concatenate([np.r_[d.train.origin, d.test.origin] for d in data.values()])
    assert sorted(joined.tolist()) == list(range(90))


def test_npz_per_agent_files_are_split_per_agent(tmp_path: Path) -> None:
    # Prepare
    for i, n in enumerate((20, 24, 40), start=1):
        _npz(tmp_path / "data" / f"a{i}.npz", n, seed=i)
    cfg = _cfg(NPZ_FILES, str(tmp_path / "fleet.yaml"))

    # Execute
    data = agent_data(cfg)

    # Assert
    assert [len(d.train) + len(d.test) for d in data.values()] == [20, 24, 40]
    assert data["a2"].modalities == ("gyro",) and set(data["a2"].train.x) == {"gyro"}
    # gyro raw data has mean 5: each agent's own stats, applied to its own train side
    assert abs(float(data["a2"].norm["gyro"].mean.mean()) - 5) < 0.5
    np.testing.assert_allclose(data["a3"].train.x["gyro"].mean(axis=(0, 2)), 0, atol=1e-5)
    assert data["a1"].labels == ("0", "1", "2")


def test_npz_fleet_file_and_own_files_mix_and_share_class_names(tmp_path: Path) -> None:
    # Prepare: three generated agents split the fleet file; one listed agent brings its own.
    _npz(tmp_path / "all.npz", 60)
    _npz(tmp_path / "own.npz", 12, y=np.arange(12) % 4, labels=np.array(["w", "x", "y", "z"]))
    raw = {"data": {"dataset": "npz", "modalities": ["accel", "gyro"], "path": "all.npz"},
           "agents": {"count": 3, "list": [{"id": "own", "modalities": ["gyro"],
                                            "data": "own.npz"}]}}
    cfg = _cfg(raw, str(tmp_path / "fleet.yaml"))

    # Execute
    data = agent_data(cfg)

    # Assert
    assert [len(d.train) + len(d.test) for d in data.values()] == [20, 20, 20, 12]
    assert all(d.labels == ("w", "x", "y", "z") for d in data.values())
    assert len(fleet_info(cfg).labels) == 4


def test_config_check_loads_npz_data_and_prints_sizes(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    for i, n in enumerate((20, 24, 40), start=1):
        _npz(tmp_path / "data" / f"a{i}.npz", n, seed=i)
    config = _write_config(tmp_path, NPZ_FILES)

    # Execute
    code = main(["config", "check", str(config)])

    # Assert
    out = capsys.readouterr().out
    assert code == 0
    assert "15/5" in out and "18/6" in out and "30/10" in out


def _mutated(tmp_path: Path, agent: int, **override: Any) -> tuple[Path, str]:
    for i, n in enumerate((20, 24, 40), start=1):
        _npz(tmp_path / "data" / f"a{i}.npz", n, seed=i, **(override if i == agent else {}))
    return _write_config(tmp_path, NPZ_FILES), str(tmp_path / "data" / f"a{agent}.npz")


NAN = np.full((24, 3, 16), np.nan)
BAD_NPZ = [
    ("rows-disagree", 3, {"x_gyro": np.zeros((39, 3, 16))}, "x_gyro",
     "expected 40 rows like y, got 39"),
    ("missing-modality-key", 1, {"x_accel": None}, "x_accel", "missing key"),
    ("missing-labels", 2, {"y": None}, "y", "missing key"),
    ("float-labels", 1, {"y": np.linspace(0, 2, 20)}, "y", "expected integer labels, got float64"),
    ("nan-values", 2, {"x_gyro": NAN}, "x_gyro", "expected finite values"),
    ("non-numeric", 3, {"x_accel": np.full((40, 3, 16), "x")}, "x_accel", "numeric array"),
    ("shape-differs-between-agents", 3, {"x_accel": np.zeros((40, 3, 15))}, "x_accel",
     "expected per-sample shape (3, 16) like in"),
]


@pytest.mark.parametrize(("case", "agent", "override", "key", "words"), BAD_NPZ,
                         ids=[c[0] for c in BAD_NPZ])
def test_config_check_reports_bad_npz_in_one_line(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str], case: str,
                                                  agent: int, override: dict[str, Any], key: str,
                                                  words: str) -> None:
    # Prepare
    config, data_file = _mutated(tmp_path, agent, **override)

    # Execute
    code = main(["config", "check", str(config)])

    # Assert
    err = capsys.readouterr().err
    assert code == 2, case
    assert err.startswith(f"error: {data_file}: {key}: ")
    assert words in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_config_check_reports_a_missing_npz_file(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    config = _write_config(tmp_path, NPZ_FILES)

    # Execute
    code = main(["config", "check", str(config)])

    # Assert
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"error: {tmp_path / 'data' / 'a1.npz'}: <file>: cannot read the file " \
                  "(No such file or directory)\n"


def test_config_check_reports_generated_agents_without_npz_data(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: counts generate agents, but there is no fleet file to split among them.
    raw = copy.deepcopy(NPZ_FILES)
    raw["agents"] = {"count": 3}
    config = _write_config(tmp_path, raw)

    # Execute
    code = main(["config", "check", str(config)])

    # Assert
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"error: {config}: data.path: ")


def test_config_check_reports_a_window_longer_than_the_recordings(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    raw = copy.deepcopy(MOTIONS)
    raw["data"]["window"] = 120
    config = _write_config(tmp_path, raw)

    # Execute
    code = main(["config", "check", str(config)])

    # Assert
    assert code == 2
    assert capsys.readouterr().err == (f"error: {config}: data.window: expected at most 100, the "
                                       "length of a basic-motions recording, got 120\n")
