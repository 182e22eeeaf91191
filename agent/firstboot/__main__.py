"""First boot's program (``python3 -m agent.firstboot``), on the stick's own system.

    run       the service: detect, wizard, install, reboot (clusterctl-firstboot.service)
    install   the installer by hand (clusterctl-install)
    wizard    the wizard alone, on this machine or a captured inventory
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from agent.firstboot import flow, install_cmd, wizard_cmd
from core import exitcodes

COMMANDS = {
    "run": (flow, "recognise this box, install its host, reboot (what the unit runs)"),
    "install": (install_cmd, "install a host from the stick onto a disk, by hand"),
    "wizard": (wizard_cmd, "recognise this box and ask the person; write the decision"),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clusterctl-firstboot", description="First boot from the clusterctl stick.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return exitcodes.USAGE
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return exitcodes.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
