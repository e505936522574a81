"""`parse-edge bundle`: build reproducible deploy bundles for boards."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str) -> None:
    """Register the `bundle` subcommand."""
    parser = sub.add_parser(
        name, help="build a deploy bundle (tar.gz) for a board",
        description="Build a reproducible bundle for one agent (or every agent): the project "
                    "wheel, the agent's config with secrets as separate 0600 files, its data "
                    "files or board data path, the ONNX export, a systemd unit, an install "
                    "script and a MANIFEST of sha256. Flash it with `parse-edge flash`.")
    parser.add_argument("config", metavar="CONFIG", help="fleet config (YAML)")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--agent", metavar="ID", help="the agent to bundle")
    who.add_argument("--all-agents", action="store_true",
                     help="one bundle per agent: --out DIR gets DIR/<agent>.tar.gz")
    parser.add_argument("--out", required=True, metavar="FILE|DIR",
                        help="FILE.tar.gz (--agent) or DIR (--all-agents)")
    parser.add_argument("--role", choices=["train", "infer"], default="train",
                        help="train: the full agent (torch); infer: onnxruntime only, no torch")
    parser.add_argument("--export", metavar="DIR", type=Path, default=None,
                        help="ONNX export (parse-edge export); required for --role infer; with "
                             "--all-agents, DIR/<agent>/ is used where it exists")
    parser.add_argument("--wheelhouse", metavar="DIR", type=Path, default=None,
                        help="every dependency wheel for the board's platform; the board then "
                             "installs offline (pip --no-index). Without it the release venv "
                             "reuses the board's system packages (--system-site-packages)")
    parser.add_argument("--wheel", metavar="FILE", type=Path, default=None,
                        help="the parse-edge wheel to ship (default: built from this checkout)")
    parser.add_argument("--broker", metavar="URL", default=None,
                        help="broker URL the boards use (default: the config's broker.url)")
    parser.add_argument("--data-path", metavar="PATH", default=None,
                        help="board path of the npz data (default: the files go in the bundle)")
    parser.add_argument("--target-arch", default=None,
                        help="board machine architecture (default: from the agent's device "
                             "profile, e.g. aarch64 for rpi4)")
    parser.add_argument("--target-python", default=None, metavar="X.Y",
                        help="board Python version (default: this interpreter's)")
    parser.add_argument("--provider", default=None,
                        help="onnxruntime execution provider for --role infer (tensorrt, cuda, "
                             "xnnpack, cpu; default: the best the board has)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Build the bundle(s)."""
    from devices.bundle import Role
    from devices.providers import ProviderError, canonical
    from edge.deploy import BundleRequest, write_bundles
    from edge.errors import UserError

    if args.provider is not None:
        try:
            canonical(args.provider)
        except ProviderError as exc:
            raise UserError(str(exc)) from None

    request = BundleRequest(role=Role(args.role), export_dir=args.export,
                            wheelhouse=args.wheelhouse, wheel=args.wheel,
                            broker_url=args.broker, data_path=args.data_path,
                            target_arch=args.target_arch, target_python=args.target_python,
                            provider=args.provider)
    # A bundle is a gzipped tar whatever its name: another extension (a.zip) misleads whoever
    # copies or unpacks it by hand.
    if not args.all_agents and not args.out.endswith(".tar.gz"):
        raise UserError(f"--out {args.out}: expected a file name ending in .tar.gz (a bundle "
                        "is a gzipped tar)")
    if args.all_agents and args.out.endswith((".tar.gz", ".tgz", ".zip")):
        raise UserError(f"--out {args.out}: expected a folder name for --all-agents (it gets "
                        "one <agent>.tar.gz per agent)")
    agents = None if args.all_agents else [args.agent]
    write_bundles(args.config, agents, Path(args.out), request)
    return 0
