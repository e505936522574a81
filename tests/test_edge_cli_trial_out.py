"""Record folders without --out: every run gets its own folder, `latest` follows the newest, and
an --out that cannot be a folder is one line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge.cli import main
from edge.cli.run_folder import new_run_folder, point_latest

from .conftest import EXAMPLES


def test_default_folders_never_collide_and_latest_moves_to_the_newest(tmp_path: Path) -> None:
    # Prepare / Execute: three runs within the same second
    root = tmp_path / "runs" / "trial"
    outs = []
    for _ in range(3):
        out = new_run_folder(root)
        (out / "summary.json").write_text(str(len(outs)))
        point_latest(root, out)
        outs.append(out)
    # Assert: three distinct folders, nothing replaced, latest resolves to the third
    assert len(set(outs)) == 3
    assert [(o / "summary.json").read_text() for o in outs] == ["0", "1", "2"]
    assert (root / "latest").resolve() == outs[-1].resolve()
    assert (root / "latest" / "summary.json").read_text() == "2"
    assert not [p for p in root.iterdir() if p.name.startswith(".latest")]


def test_a_folder_is_reserved_when_named(tmp_path: Path) -> None:
    # Two processes starting in the same second: each must get a folder of its own. The folder
    # is created when named, so a second process finds it taken (here: forked children).
    root = tmp_path / "runs" / "simulate"
    read, write = os.pipe()
    pids = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:  # child: name a folder, report it, exit without running pytest's atexit
            os.close(read)
            os.write(write, (str(new_run_folder(root)) + "\n").encode())
            os._exit(0)
        pids.append(pid)
    os.close(write)
    for pid in pids:
        os.waitpid(pid, 0)
    with os.fdopen(read) as fh:
        named = fh.read().split()
    assert len(named) == 2 and len(set(named)) == 2
    assert all(Path(p).is_dir() for p in named)


@pytest.mark.parametrize("command", [
    ["simulate", str(EXAMPLES / "synthetic.yaml"), "--rounds", "1", "--quiet"],
    ["trial", str(EXAMPLES / "synthetic.yaml"), "--rounds", "1"],
])
@pytest.mark.parametrize("below", [False, True])
def test_an_out_through_a_file_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   command: list[str], below: bool) -> None:
    # Prepare
    file = tmp_path / "f.yaml"
    file.write_text("x: 1\n")
    out = file / "sub" if below else file
    # Execute
    code = main([*command, "--out", str(out)])
    # Assert
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err == f"error: --out {out}: expected a folder, but {file} is a file\n"
    assert file.read_text() == "x: 1\n"
