"""Recorded board trees and command outputs under tests/fixtures, and helpers to read them."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"
BOARDS = FIXTURES / "boards"


def board(name: str) -> Path:
    """The recorded filesystem root of board `name` (proc/, sys/, etc/, cmd/ inside)."""
    return BOARDS / name


def board_copy(name: str, tmp_path: Path) -> Path:
    """A writable copy of a board tree (symlinks kept), for tests that change readings."""
    dest = tmp_path / name
    shutil.copytree(board(name), dest, symlinks=True)
    return dest


class RecordedCommands:
    """A command runner answering from ``cmd/<argv joined by _>.txt`` files of a board tree;
    a command without a recording is absent (FileNotFoundError, as for a missing binary)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, argv: Sequence[str]) -> str:
        self.calls.append(tuple(argv))
        path = self.root / "cmd" / ("_".join(argv) + ".txt")
        if not path.exists():
            raise FileNotFoundError(2, "No such file or directory", argv[0])
        return path.read_text()


def i2c_registers(name: str) -> dict[int, list[int]]:
    """Register -> bytes from a recorded ``i2ctransfer -y BUS w1@ADDR REG r2`` session."""
    registers: dict[int, list[int]] = {}
    register = None
    for line in (FIXTURES / "i2c" / name).read_text().splitlines():
        if line.startswith("$ i2ctransfer"):
            register = int(line.split()[5], 16)
        elif line.startswith("0x") and register is not None:
            registers[register] = [int(b, 16) for b in line.split()]
    return registers
