"""The ``clusterctl`` command: parses arguments and hands each subcommand to its module.

Each command module exposes ``register(subparsers)``, which adds its subcommand and sets
``func`` on the parser's defaults; ``func(args) -> int`` is the exit status. Modules are
imported lazily-enough (here, at start) that a broken optional module never hides the rest.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from builder import __version__

# Order is the order of ``clusterctl --help``.
COMMAND_MODULES: list[str] = [
    "builder.commands.profile_cmds",  # validate, plan, schema, docs
    "builder.commands.build_cmds",  # build, flash
    "builder.commands.test_cmds",  # boot, test (QEMU)
    "builder.commands.inventory_cmd",  # inventory (detect, --suggest, --match)
    "agent.cli",  # agent serve, agent mount
]

EXIT_USAGE = 2


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
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("clusterctl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
