"""``python3 -m agent.firstboot wizard``: the wizard alone, on this machine or a captured inventory.

Writes the decision (JSON) for the installer; exit 0 decided, 1 quit, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from core import exitcodes
from core.model import Profile
from hardware.detect import collect
from hardware.summary import check_inventory
from hardware.wizard import Wizard


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", required=True, help="the resolved profile (profile.json, as on the stick)")
    p.add_argument("--inventory", help="a captured inventory instead of detecting this machine")
    p.add_argument("--ledger", help="the claim ledger (JSON) on the stick's CLUSTER partition")
    p.add_argument("--hosts", help="the stick's hosts, comma separated (default: all)")
    p.add_argument("--unattended", action="store_true", default=None, help="install without asking when certain")
    p.add_argument("--decision", help="write the decision (JSON) here for the installer")
    p.add_argument("--events", help="write events to this file or device (default: stdout)")


def run(args: argparse.Namespace) -> int:
    try:
        profile = Profile.read(args.profile)
        if args.inventory:
            inventory = check_inventory(json.loads(Path(args.inventory).read_text(encoding="utf-8")), args.inventory)
        else:
            inventory = collect(wait_for_udev=True)
        events = open(args.events, "a", encoding="utf-8") if args.events else None  # noqa: SIM115
        hosts = [h for h in args.hosts.split(",") if h] if args.hosts else None
        wizard = Wizard(profile, inventory, ledger_path=args.ledger, hosts=hosts, unattended=args.unattended,
                        events=events)
    except Exception as e:  # unreadable files, bad JSON, a malformed profile.json: a message, not a traceback
        print(f"clusterctl first boot: {e}", file=sys.stderr)
        return exitcodes.USAGE
    try:
        decision = wizard.run()
    except (EOFError, KeyboardInterrupt):
        decision = None
    if decision is None:
        return exitcodes.QUIT
    if args.decision:
        Path(args.decision).write_text(json.dumps(asdict(decision), indent=2) + "\n", encoding="utf-8")
    return exitcodes.OK
