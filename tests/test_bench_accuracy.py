"""bench/accuracy.py's job plan: one job per run, and runs identical by construction trained once."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace
from types import ModuleType

import pytest

from edge.config.load import parse_config
from edge.learning.simulate import simulate_fleet
from edge.learning.strategies import STRATEGIES

from .conftest import REPO


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_accuracy", REPO / "bench" / "accuracy.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_accuracy"] = module  # dataclasses and pickling look the module up
    spec.loader.exec_module(module)
    return module


def test_the_plan_has_one_job_per_report_row_and_trains_identical_runs_once() -> None:
    # Prepare
    bench = _bench()
    # Act
    jobs = [j for s in bench.SETTINGS for j in bench.plan(s, 0, tuple(STRATEGIES))]
    groups: dict[tuple[object, ...], list[str]] = {}
    for job in jobs:
        key = bench.run_key(job)
        if key is not None:
            groups.setdefault((job.setting, key), []).append(job.label)
    repeated = sorted((setting, labels) for (setting, _), labels in groups.items()
                      if len(labels) > 1)
    # Assert: every row once; with one modality pair parse's s_m by combination groups the same
    # agents as dsgd-hybrid's by modality; with three, only parse[scope modality] does.
    assert len({(j.setting, j.label) for j in jobs}) == len(jobs)
    two = ["mfeat-chordal", "mfeat-ring", "mfeat-2-5-5", "synthetic-synergy", "basic-motions"]
    assert repeated == sorted(
        [(s, ["parse/sliced", "dsgd-hybrid/sliced"]) for s in two]
        + [("mfeat-chordal", ["monolithic/sliced", "parse[share_heads]/sliced"]),
           ("mfeat-3", ["dsgd-hybrid/sliced", "parse[scope modality]/sliced"])])
    auto = [j.label for j in jobs if j.setting == "mfeat-3" and bench.run_key(j) is None]
    assert auto == ["parse[split auto]/sliced", "parse[scope auto]/sliced",
                    "parse[split auto, scope auto]/sliced"]


@pytest.mark.parametrize(("setting", "a", "b", "other"), [
    ("mfeat-3", ("dsgd-hybrid", {}), ("parse", {"synergy_scope": "modality"}), ("parse", {})),
    ("mfeat-chordal", ("parse", {}), ("dsgd-hybrid", {}), ("dsgd-modality", {})),
    ("mfeat-chordal", ("monolithic", {}), ("parse", {"share_heads": True}), ("parse", {})),
])
def test_runs_with_equal_keys_train_identically(setting: str, a: tuple[str, dict[str, object]],
                                                b: tuple[str, dict[str, object]],
                                                other: tuple[str, dict[str, object]]) -> None:
    # Prepare: a pair the plan trains once, and a run it does not pair with them; two rounds.
    bench = _bench()
    cfg = parse_config(bench.SETTINGS[setting](), f"<test {setting}>")

    def run(strategy: str, overrides: dict[str, object]) -> dict[str, object]:
        variant = replace(cfg, model=replace(cfg.model, **overrides))
        block = simulate_fleet(variant, [strategy], "sliced", rounds=2, seed=3)
        return dict(block["strategies"][strategy]["per_head"])

    keys = [bench.run_key(bench.Job(setting, 3, "", s, "sliced", tuple(o.items())))
            for s, o in (a, b, other)]
    # Act
    first, second, third = run(*a), run(*b), run(*other)
    # Assert: equal keys, equal accuracies bit for bit; a different key, different accuracies.
    assert keys[0] == keys[1] != keys[2]
    assert first == second
    assert third != first
