"""The trial console: rich's live view on a terminal (a real pseudo-terminal here), plain lines
elsewhere, and the narrator's lines from rows and statuses.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from edge.records import MetricsRow
from edge.trial.console import CallbackConsole, PlainConsole, RichConsole, make_console
from edge.trial.narrate import Narrator
from edge.trial.watch import FleetWatch


def test_a_terminal_gets_the_live_view_and_a_pipe_plain_lines() -> None:
    # Prepare: a pseudo-terminal, and a plain stream.
    master, slave = os.openpty()
    tty = os.fdopen(slave, "w")
    piped = io.StringIO()
    # Execute
    live = make_console(tty)
    live.status("round 3 of 0-11 · 8/8 online · 12 s")
    live.line("[trial    1.0 s] fault: a3: leave at round 4")
    live.close()
    tty.flush()
    drawn = os.read(master, 65536).decode("utf-8", "replace")
    plain = make_console(piped)
    plain.status("ignored")
    plain.line("[trial    1.0 s] fault: a3: leave at round 4")
    asked_plain = make_console(tty, plain=True)
    tty.close()
    os.close(master)
    # Assert
    assert isinstance(live, RichConsole) and isinstance(plain, PlainConsole)
    assert "fault: a3: leave at round 4" in drawn and "\x1b[" in drawn   # drawn with escapes
    assert piped.getvalue() == "[trial    1.0 s] fault: a3: leave at round 4\n"
    assert isinstance(asked_plain, PlainConsole)


def _row(agent: str, kind: str, round_idx: int, accuracy: float, rejected: int = 0) -> MetricsRow:
    row: MetricsRow = {
        "agent": agent, "kind": kind, "round": round_idx, "rounds": 3, "accuracy": accuracy,
        "head_accuracy": {}, "n_test": 10, "train_loss": 0.1, "train_s": 0.1, "wait_s": 0.0,
        "round_s": 0.2, "mixed_from": {}, "bytes_sent": 1_000_000 * (round_idx + 1),
        "bytes_received": 500_000, "dense_bytes_published": 0}
    if rejected:
        row["rejected"] = {"bad-signature": rejected}
    return row


def test_narrator_says_each_round_once_when_every_running_agent_reported_it(tmp_path: Path) -> None:
    # Prepare: rows as the agents append them.
    lines: list[str] = []
    events: list[tuple[str, str | None, str]] = []
    watch = FleetWatch(tmp_path, ["a0", "a1"])
    for agent in ("a0", "a1"):
        (tmp_path / "agents" / agent).mkdir(parents=True)
    narrator = Narrator(CallbackConsole(lines.append), lambda k, a, d, **x: events.append((k, a, d)),
                        ["a0", "a1"], 3, 5.0, lambda: 1.0)

    def append(row: MetricsRow) -> None:
        import json

        with (tmp_path / "agents" / row["agent"] / "metrics.jsonl").open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        watch.poll()

    # Execute / Assert: round 0 waits for a1, then is said once with the mean of both.
    append(_row("a0", "a", 0, 0.5))
    narrator.watch_rounds(watch, {"a0", "a1"})
    assert lines == []
    append(_row("a1", "b", 0, 0.7))
    narrator.watch_rounds(watch, {"a0", "a1"})
    narrator.watch_rounds(watch, {"a0", "a1"})
    assert lines == ["[trial    1.0 s] round 0 of 0-2: 2/2 agents, accuracy 0.600 (a 0.500, b 0.700), "
                     "2.00 MB sent so far"]
    # a1 stopped (not running): round 1 is said with a0 alone; rejections become an event.
    append(_row("a0", "a", 1, 0.9, rejected=3))
    narrator.watch_rounds(watch, {"a0"})
    narrator.watch_rejections(watch)
    assert lines[-1].startswith("[trial    1.0 s] round 1 of 0-2: 1/1 agents, accuracy 0.900 (a 0.900)")
    assert events == [("rejected", "a0", "rejected 3 messages (bad-signature 3)")]


def test_narrator_names_the_agents_a_held_round_waits_for_once(tmp_path: Path) -> None:
    # Prepare: a clock the test moves; a0 reports round 0, a1 does not.
    import json

    lines: list[str] = []
    now = [100.0]
    watch = FleetWatch(tmp_path, ["a0", "a1"])
    for agent in ("a0", "a1"):
        (tmp_path / "agents" / agent).mkdir(parents=True)
    narrator = Narrator(CallbackConsole(lines.append), lambda k, a, d, **x: None,
                        ["a0", "a1"], 3, 20.0, lambda: 7.0, clock=lambda: now[0])
    with (tmp_path / "agents" / "a0" / "metrics.jsonl").open("a") as fh:
        fh.write(json.dumps(_row("a0", "a", 0, 0.5)) + "\n")
    watch.poll()
    # Execute: just reported, then held past the waiting threshold, then polled again.
    narrator.watch_rounds(watch, {"a0", "a1"})
    quiet = list(lines)
    now[0] += 6.0
    narrator.watch_rounds(watch, {"a0", "a1"})
    narrator.watch_rounds(watch, {"a0", "a1"})
    # Assert: nothing at first, then one line naming a1 and the deadline; the round stays held.
    assert quiet == []
    assert lines == ["[trial    7.0 s] round 0: 1/2 agents reported; waiting for a1 (their "
                     "neighbours mix without them after the 20 s deadline)"]
