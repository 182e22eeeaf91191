"""The ``clusterctl`` command: parses arguments and hands each subcommand to its module.

Each command module exposes ``register(subparsers)``, which adds its subcommand and sets
``func`` on the parser's defaults; ``func(args) -> int`` is the exit status.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from agent import cli as agent_cli
from builder import __version__
from builder.commands import build_cmds, claims_cmd, inventory_cmd, profile_cmds, test_cmds
from core import exitcodes

# Order is the order of ``clusterctl --help``.
COMMAND_MODULES = [
    profile_cmds,  # validate, plan, schema, docs
    build_cmds,  # build, flash
    test_cmds,  # boot, test (QEMU)
    inventory_cmd,  # inventory (detect, --suggest, --match)
    claims_cmd,  # claims (a stick's ledger: list, release)
    agent_cli,  # agent serve, agent mount
]


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clusterctl",
        description=(
            "Describe a small cluster in one YAML profile; build bootable images whose hosts "
            "recognise themselves, install, and join as one system under /n/<host>."
        ),
        epilog="Run 'clusterctl COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"clusterctl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return exitcodes.USAGE
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("clusterctl: interrupted", file=sys.stderr)
        return exitcodes.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
