"""The `parse-edge` command: one module per subcommand, each with `add_parser` and `run`."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

from edge.cli.output import guarded_output
from edge.errors import as_user_error
from edge.version import software_version

# Subcommand name -> module under edge.cli. Modules are imported lazily so that `--help` and
# light commands never pay for torch.
COMMANDS: dict[str, str] = {
    "config": "config_cmd",
    "simulate": "simulate",
    "trial": "trial",
    "agent": "agent",
    "broker": "broker",
    "export": "export",
    "infer": "infer",
    "bundle": "bundle",
    "flash": "flash",
    "status": "status",
    "devices": "devices",
    "field": "field",
    "pid": "pid",
}


class OneLineParser(argparse.ArgumentParser):
    """argparse with the project's error shape: a bad flag is one line and exit status 2.

    argparse's own `error` prints the whole usage block before the message; every other bad input
    of parse-edge is one `error: <where>: <field>: <expected>` line. Subcommand parsers inherit the
    class (`add_subparsers` uses the parent's type).
    """

    def error(self, message: str) -> NoReturn:
        """Print `error: <command>: <message> (see <command> --help)` and exit with status 2."""
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """Build the full argument parser with every subcommand registered."""
    parser = OneLineParser(
        prog="parse-edge",
        description="PARSE decentralized multimodal federated learning on edge boards.",
    )
    parser.add_argument("--version", action="version", version=f"parse-edge {software_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"edge.cli.{module_name}")
        module.add_parser(sub, name)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit status.

    Output goes through `edge.cli.output.guarded_output`: a reader that stops reading (`| head`)
    ends the output, not the command, and never shows a traceback.
    """
    with guarded_output():
        parser = build_parser()
        args = parser.parse_args(argv)
        try:
            return int(args.run(args) or 0)
        except Exception as exc:
            user = as_user_error(exc)  # the one place loader failures become `error: ...`, exit 2
            if user is None:
                raise
            print(f"error: {user}", file=sys.stderr)
            return user.exit_code
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
