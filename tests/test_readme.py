"""The README's promises: two one-line set-up commands first, and CI runs the second verbatim."""

from __future__ import annotations

import re

from .conftest import REPO


def _code_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)\n```", (REPO / "README.md").read_text(), flags=re.S)


def test_readme_opens_with_two_one_line_commands() -> None:
    # Prepare
    text = (REPO / "README.md").read_text()
    first, second = _code_blocks()[:2]
    # Assert
    assert text.index("```sh") < text.index("## ")
    assert "\n" not in first and "\n" not in second
    assert first.endswith("parse-edge trial") and "torch==2.13.0" in first
    assert "pytest" in second and "apt-get install -y mosquitto mosquitto-clients" in second


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    # Prepare
    ci_lines = (REPO / ".ci" / "run").read_text().splitlines()
    # Assert
    assert _code_blocks()[1] in ci_lines


def test_the_inference_only_install_installs_the_board_extra() -> None:
    # Prepare: the README's pip line for boards that only serve predictions, and pyproject's
    # `board` extra (what the board path imports: a missing one is a traceback on the board).
    import tomllib

    line = next(b for b in _code_blocks() if b.startswith("pip install --no-deps parse-edge"))
    named = {re.split(r"[<>=]", q)[0] for q in re.findall(r"'([^']+)'", line.splitlines()[0])}
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    # Assert
    assert named == {re.split(r"[<>=]", q)[0] for q in extra["board"]}
