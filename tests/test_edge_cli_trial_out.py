"""`parse-edge trial` without --out: every run gets its own folder and `latest` follows the newest."""

from __future__ import annotations

from pathlib import Path

from edge.cli.run_folder import new_run_folder, point_latest


def test_default_folders_never_collide_and_latest_moves_to_the_newest(tmp_path: Path) -> None:
    # Prepare / Execute: three runs within the same second
    root = tmp_path / "runs" / "trial"
    outs = []
    for _ in range(3):
        out = new_run_folder(root)
        out.mkdir(parents=True)
        (out / "summary.json").write_text(str(len(outs)))
        point_latest(root, out)
        outs.append(out)
    # Assert: three distinct folders, nothing replaced, latest resolves to the third
    assert len(set(outs)) == 3
    assert [(o / "summary.json").read_text() for o in outs] == ["0", "1", "2"]
    assert (root / "latest").resolve() == outs[-1].resolve()
    assert (root / "latest" / "summary.json").read_text() == "2"
    assert not (root / ".latest.tmp").exists()
