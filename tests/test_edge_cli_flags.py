"""A bad command-line flag is bad input like any other: one `error:` line, exit status 2."""

from __future__ import annotations

import pytest

from edge.cli import main


@pytest.mark.parametrize(("argv", "expected"), [
    (["trial", "--strategy", "bogus"],
     "error: parse-edge trial: argument --strategy: expected one of parse, local, "),
    # centralized exists, but only in simulation: the error says so and where it runs.
    (["trial", "--strategy", "centralized"],
     "error: parse-edge trial: argument --strategy: 'centralized' trains one model on pooled "
     "data, so it runs only in simulation (parse-edge simulate --strategy centralized)"),
    (["agent", "fleet.yaml", "--agent", "a0", "--strategy", "centralized"],
     "error: parse-edge agent: argument --strategy: 'centralized' trains one model"),
    (["simulate", "examples/mfeat.yaml", "--rounds", "abc"],
     "error: parse-edge simulate: argument --rounds: invalid int value: 'abc'"),
    (["broker", "credentials"],
     "error: parse-edge broker credentials: the following arguments are required: CONFIG, --out"),
    (["no-such-command"], "error: parse-edge: argument COMMAND: invalid choice: 'no-such-command'"),
])
def test_a_bad_flag_is_one_error_line_and_exit_status_2(
        argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    # Execute
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    # Assert: no usage block, one line naming the command and the flag, and where to look
    assert exited.value.code == 2
    assert err.count("\n") == 1 and err.startswith(expected), err
    assert err.rstrip().endswith("--help)")


@pytest.mark.parametrize("url", ["http://x", "mqtt://:abc", "mqtt://host:notaport"])
@pytest.mark.parametrize("command", ["agent", "trial"])
def test_a_bad_broker_url_is_one_line_for_agent_and_trial(
        command: str, url: str, capsys: pytest.CaptureFixture[str]) -> None:
    # The agent used to pass the URL to the MQTT client unchecked and died with a traceback.
    argv = [command, "examples/basic-motions.yaml", "--broker", url]
    argv += ["--agent", "a0"] if command == "agent" else []
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"error: --broker: broker url '{url}'"), err
