"""User npz files: a valid file reads back exactly; every malformed key names file and key."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.data.npz import agree, read_npz
from edge.errors import ConfigError


def _write(path: Path, **arrays: Any) -> Path:
    np.savez(path, **arrays)
    return path


def _good(n: int = 30) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"y": np.arange(n) % 3, "x_accel": rng.standard_normal((n, 3, 20)),
            "x_audio": rng.standard_normal((n, 8))}


def test_round_trip_keeps_values_shapes_and_class_names(tmp_path: Path) -> None:
    # Prepare
    arrays = _good() | {"labels": np.array(["sit", "walk", "run"])}
    path = _write(tmp_path / "f.npz", **arrays)

    # Execute
    pool = read_npz(path, ("accel", "audio"))

    # Assert
    np.testing.assert_array_equal(pool.y, arrays["y"])
    np.testing.assert_allclose(pool.x["accel"], arrays["x_accel"], rtol=1e-6)
    assert pool.x["accel"].dtype == np.float32 and pool.x["audio"].shape == (30, 8)
    assert pool.labels == ("sit", "walk", "run")
    assert not pool.series


def test_without_labels_classes_are_numbered(tmp_path: Path) -> None:
    # Execute
    pool = read_npz(_write(tmp_path / "f.npz", **_good()), ("audio",))

    # Assert
    assert pool.labels == ("0", "1", "2")
    assert set(pool.x) == {"audio"}


def test_rewritten_file_is_read_again(tmp_path: Path) -> None:
    # Prepare
    path = _write(tmp_path / "f.npz", **_good(30))
    read_npz(path, ("audio",))
    _write(path, **_good(40))

    # Execute
    pool = read_npz(path, ("audio",))

    # Assert
    assert pool.n_samples == 40


BAD = [
    ("missing-y", lambda a: a.pop("y"), "y", "missing key"),
    ("float-y", lambda a: a.update(y=a["y"].astype(float)), "y", "integer labels"),
    ("2d-y", lambda a: a.update(y=a["y"].reshape(-1, 1)), "y", "shape (N,)"),
    ("negative-y", lambda a: a.update(y=a["y"] - 1), "y", ">= 0"),
    ("missing-x", lambda a: a.pop("x_accel"), "x_accel", "missing key"),
    ("rows-disagree", lambda a: a.update(x_accel=a["x_accel"][:25]), "x_accel",
     "expected 30 rows like y, got 25"),
    ("non-numeric", lambda a: a.update(x_audio=np.full((30, 8), "a")), "x_audio", "numeric"),
    ("nan", lambda a: a["x_audio"].__setitem__((4, 2), np.nan), "x_audio", "finite"),
    ("inf", lambda a: a["x_accel"].__setitem__((0, 0, 0), np.inf), "x_accel", "finite"),
    ("one-dim-x", lambda a: a.update(x_audio=np.zeros(30)), "x_audio", "one row per sample"),
    ("too-few-labels", lambda a: a.update(labels=np.array(["a", "b"])), "labels", "every label"),
    ("numeric-labels", lambda a: a.update(labels=np.arange(3)), "labels", "strings"),
]


@pytest.mark.parametrize(("case", "mutate", "key", "words"), BAD, ids=[c[0] for c in BAD])
def test_bad_file_names_file_key_and_expectation(tmp_path: Path, case: str, mutate: Any,
                                                 key: str, words: str) -> None:
    # Prepare
    arrays = _good()
    mutate(arrays)
    path = _write(tmp_path / f"{case}.npz", **arrays)

    # Execute
    with pytest.raises(ConfigError) as info:
        read_npz(path, ("accel", "audio"))

    # Assert
    assert info.value.source == str(path)
    assert info.value.field == key
    assert words in info.value.expected


def test_object_array_is_refused_without_unpickling(tmp_path: Path) -> None:
    # Prepare
    arrays = _good() | {"x_audio": np.array([{"a": 1}] * 30, dtype=object)}
    path = _write(tmp_path / "obj.npz", **arrays)

    # Execute
    with pytest.raises(ConfigError) as info:
        read_npz(path, ("audio",))

    # Assert
    assert (info.value.field, "Python objects" in info.value.expected) == ("x_audio", True)


@pytest.mark.parametrize("content", [b"not a zip", b""])
def test_not_an_npz_file(tmp_path: Path, content: bytes) -> None:
    # Prepare
    path = tmp_path / "junk.npz"
    path.write_bytes(content)

    # Execute / Assert
    with pytest.raises(ConfigError, match=re.escape("junk.npz: <file>: expected an .npz archive")):
        read_npz(path, ("audio",))


def test_missing_file(tmp_path: Path) -> None:
    # Execute / Assert
    with pytest.raises(ConfigError, match=re.escape("nope.npz: <file>: cannot read the file")):
        read_npz(tmp_path / "nope.npz", ("audio",))


def test_agents_files_must_agree_on_sample_shape_and_class_names(tmp_path: Path) -> None:
    # Prepare
    a = read_npz(_write(tmp_path / "a.npz", **_good()), ("accel",))
    b_arrays = _good() | {"x_accel": np.zeros((30, 3, 19))}
    b = read_npz(_write(tmp_path / "b.npz", **b_arrays), ("accel",))
    c = read_npz(_write(tmp_path / "c.npz", **_good(), labels=np.array(["x", "y", "z"])),
                 ("accel",))
    d = read_npz(_write(tmp_path / "d.npz", **_good(), labels=np.array(["x", "y", "w"])),
                 ("accel",))

    # Execute
    shapes, labels = agree({"a.npz": a, "c.npz": c})
    with pytest.raises(ConfigError) as shape_error:
        agree({"a.npz": a, "b.npz": b})
    with pytest.raises(ConfigError) as label_error:
        agree({"c.npz": c, "d.npz": d})

    # Assert
    assert shapes == {"accel": (3, 20)} and labels == ("x", "y", "z")
    assert str(shape_error.value) == ("b.npz: x_accel: expected per-sample shape (3, 20) like "
                                      "in a.npz, got (3, 19)")
    assert (label_error.value.source, label_error.value.field) == ("d.npz", "labels")
