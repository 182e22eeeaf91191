"""``clusterctl-agent`` (``python3 -m agent``): the agent's commands on a host, where the
build machine's ``clusterctl`` is not installed: run, status, serve, mount, identity."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from agent.cli import EXIT_USAGE, add_commands


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clusterctl-agent",
                                     description="The clusterctl agent on a host (see docs/agent.md).")
    add_commands(parser.add_subparsers(dest="agent_command", metavar="COMMAND", title="commands"))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
