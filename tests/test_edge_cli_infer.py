"""`parse-edge infer`: torch-free, one-line errors, missing modalities served."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from devices.runtime import Predictor
from edge.cli import main
from tests.exporters_toy import LABELS, toy_bundle

REPO = Path(__file__).resolve().parents[1]

# Blocks every torch import, as on a board where torch is not installed.
NO_TORCH = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is not installed on this board")
sys.meta_path.insert(0, NoTorch())
from edge.cli import main
rc = main(sys.argv[1:])
assert "torch" not in sys.modules, "torch was imported"
sys.exit(rc)
"""


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """The multimodal mlp toy agent (shared with the exporter tests) and npz inputs for it."""
    toy = toy_bundle("mlp", ("accel", "gyro"))
    root = tmp_path_factory.mktemp("cli")
    np.savez(root / "both.npz", **toy.raw)
    np.savez(root / "accel.npz", accel=toy.raw["accel"])
    return SimpleNamespace(dir=toy.dir, root=root, raw=toy.raw)


def test_infer_runs_with_torch_absent_and_prints_json(bundle):
    # Execute
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH, "infer", str(bundle.dir), str(bundle.root / "both.npz"),
         "--json"], capture_output=True, text=True, timeout=120)
    # Assert: one JSON object per input row, each with its own latency.
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    expected = Predictor(bundle.dir).predict(bundle.raw)
    assert [r["row"] for r in rows] == list(range(len(expected.labels)))
    assert {r["graph"] for r in rows} == {"fused-accel+gyro"}
    assert [r["label"] for r in rows] == expected.labels
    probs = np.array([[r["probabilities"][c] for c in LABELS] for r in rows])
    np.testing.assert_allclose(probs, expected.probabilities, atol=1e-5)
    assert all(0 < r["latency_ms"] < 1000 for r in rows)


# The inference-only install: `pip install --no-deps parse-edge` plus these distributions.
# annotated-types: the CLI imports the fleet config schema, whose bounds it declares.
BOARD_DISTRIBUTIONS = ("numpy", "onnxruntime", "PyYAML", "msgspec", "annotated-types")


def _board_site(root: Path) -> Path:
    """A site-packages holding only the board distributions (links to the installed copies)."""
    site = root / "board-site"
    site.mkdir()
    for name in BOARD_DISTRIBUTIONS:
        dist = metadata.distribution(name)
        for top in {Path(str(f)).parts[0] for f in dist.files or []}:
            source = Path(str(dist.locate_file(top)))
            if source.exists() and not (site / top).exists() and top != "..":
                (site / top).symlink_to(source)
    return site


def test_infer_runs_in_an_environment_without_torch_installed(bundle, tmp_path):
    # Prepare: isolated interpreter (-I -S): stdlib + the board packages + this source tree
    site = _board_site(tmp_path)
    python = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}"
    code = (f"import sys; sys.path[:0] = [{str(site)!r}, {str(REPO)!r}]\n"
            "try:\n    import torch\nexcept ImportError:\n    pass\n"
            "else:\n    raise SystemExit('torch is importable here')\n"
            "from edge.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    # Execute
    proc = subprocess.run(
        [str(python), "-I", "-S", "-c", code, "infer", str(bundle.dir),
         str(bundle.root / "accel.npz"), "--json"],
        capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    # Assert
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert {(r["graph"], tuple(r["missing"])) for r in rows} == {("fused-accel", ("gyro",))}
    expected = Predictor(bundle.dir).predict({"accel": bundle.raw["accel"]})
    assert [r["label"] for r in rows] == expected.labels


def test_missing_modality_is_served_and_reported(bundle, capsys):
    # Execute
    rc = main(["infer", str(bundle.dir), str(bundle.root / "accel.npz")])
    # Assert
    out = capsys.readouterr().out
    assert rc == 0
    assert out.splitlines()[0] == "graph fused-accel (modalities: accel; missing: gyro)"
    assert len(out.splitlines()) == 2 + len(bundle.raw["accel"])
    expected = Predictor(bundle.dir).predict({"accel": bundle.raw["accel"]})
    assert [line.split()[1] for line in out.splitlines()[2:]] == expected.labels


def test_modalities_flag_selects_the_graph(bundle, capsys):
    rc = main(["infer", str(bundle.dir), str(bundle.root / "both.npz"), "--modalities", "gyro",
               "--json"])
    assert rc == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == len(bundle.raw["gyro"]) and {r["graph"] for r in rows} == {"fused-gyro"}


def test_data_file_naming_is_read_and_extra_arrays_are_ignored_with_a_note(bundle, capsys, tmp_path):
    # Prepare: the data-file naming (x_<modality>, y) plus a modality this bundle does not serve.
    data = tmp_path / "fleet.npz"
    n = len(bundle.raw["accel"])
    np.savez(data, x_accel=bundle.raw["accel"], x_gyro=bundle.raw["gyro"],
             x_magnet=np.zeros((n, 3), np.float32), y=np.zeros(n, np.int64))
    # Execute
    rc = main(["infer", str(bundle.dir), str(data), "--json"])
    # Assert: served like the plain naming, with a note per ignored array and no refusal.
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["label"] for r in rows] == Predictor(bundle.dir).predict(bundle.raw).labels
    assert {r["graph"] for r in rows} == {"fused-accel+gyro"}
    assert "ignoring 'x_magnet': this bundle serves accel, gyro" in captured.err
    assert "ignoring 'y' (labels are not an input)" in captured.err


def _error(capsys, argv: list[str]) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2
    # One error line; notes about ignored arrays may come before it.
    lines = [line for line in err.strip().splitlines() if not line.startswith("note: ")]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_bad_inputs_are_one_line_errors(bundle, capsys, tmp_path):
    # Prepare
    nan = tmp_path / "nan.npz"
    accel = bundle.raw["accel"].copy()
    accel[2, 3] = np.nan
    np.savez(nan, accel=accel)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, magnet=bundle.raw["gyro"])
    short = tmp_path / "short.npz"
    np.savez(short, accel=bundle.raw["accel"][:, :5])
    d = str(bundle.dir)
    # Execute / Assert
    assert "nan.npz: input 'accel': contains NaN" in _error(capsys, ["infer", d, str(nan)])
    # Nothing the bundle serves (the extra modality is ignored): the error says what it needs.
    assert "no input given, expected at least one of accel, gyro" in _error(
        capsys, ["infer", d, str(wrong)])
    assert "input 'magnet': unknown modality" in _error(
        capsys, ["infer", d, str(bundle.root / "accel.npz"), "--modalities", "magnet"])
    assert "input 'accel': shape (24, 5), expected (batch, 12)" in _error(
        capsys, ["infer", d, str(short)])
    assert "input 'gyro': requested but not provided" in _error(
        capsys, ["infer", d, str(bundle.root / "accel.npz"), "--modalities", "accel,gyro"])
    assert "missing.npz: <file>: cannot read the file" in _error(
        capsys, ["infer", d, str(tmp_path / "missing.npz")])


def test_altered_bundle_is_a_one_line_error(bundle, capsys, tmp_path):
    # Prepare
    copy = shutil.copytree(bundle.dir, tmp_path / "b")
    target = copy / "fused-accel.onnx"
    target.write_bytes(target.read_bytes() + b"\0")
    # Execute / Assert
    err = _error(capsys, ["infer", str(copy), str(bundle.root / "both.npz")])
    assert "fused-accel.onnx: sha256: expected" in err
