"""The host's ``clusterctl`` (``python3 -m agent``; ``/usr/bin/clusterctl`` and its older name
``clusterctl-agent``): the on-host commands, where the build machine's ``clusterctl`` is not
installed: status, inventory, run, serve, mount, identity, volumes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from agent.cli import add_commands, add_inventory
from core import exitcodes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clusterctl",
                                     description="clusterctl on a host: the cluster as this host's agent sees it, "
                                                 "and the agent's own commands (see docs/agent.md). Building "
                                                 "images is the build machine's clusterctl.")
    sub = parser.add_subparsers(dest="agent_command", metavar="COMMAND", title="commands")
    add_commands(sub)
    add_inventory(sub)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return exitcodes.USAGE
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return exitcodes.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
