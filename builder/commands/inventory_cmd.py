"""``clusterctl inventory``: what this machine is, as first boot sees it.

    clusterctl inventory                      a short summary (rich)
    clusterctl inventory --json               the inventory JSON (docs/inventory.md)
    clusterctl inventory --suggest            a host stanza whose selectors recognise this box
    clusterctl inventory --match PROFILE      every host of the profile ranked against this box
    clusterctl inventory --board              a board file for this box, so QEMU can boot its twin
    ... --from FILE.json                      use a captured inventory instead of this machine
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from core import exitcodes


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "inventory",
        help="show this machine's hardware as first boot sees it",
        description="Detect this machine's hardware (pyudev) and show it; or read a captured inventory.",
    )
    p.add_argument("--json", action="store_true", help="print the inventory (or the ranking) as JSON")
    p.add_argument("--from", dest="source", metavar="FILE.json", help="a captured inventory instead of this machine")
    p.add_argument("--suggest", action="store_true", help="print a host stanza (YAML) that recognises this box")
    p.add_argument("--host", help="the host name in the suggested stanza (default: from the product name)")
    p.add_argument("--role", default="ROLE", help="the role in the suggested stanza")
    p.add_argument("--board-name", default="BOARD", help="the board in the suggested stanza")
    p.add_argument("--board", action="store_true",
                   help="print a board file (YAML) for this box: QEMU boots its twin in tests (testdriver/boards/)")
    p.add_argument("--firmware", choices=("uefi", "uefi-secure", "bios"),
                   help="with --board and --from: the captured box's firmware (this machine's is detected)")
    p.add_argument("--match", metavar="PROFILE", help="rank the profile's hosts against this box")
    p.add_argument("--ledger", metavar="STICK_OR_FILE",
                   help="for --match: the claim ledger of a stick (its image or device) or a ledger file (JSON)")
    p.add_argument("--hosts", metavar="A,B", help="only these hosts, e.g. a stick's (for --match)")
    p.set_defaults(func=run)


def fail(message: str) -> int:
    print(f"clusterctl inventory: {message}", file=sys.stderr)
    return exitcodes.USAGE


def read_inventory(source: str | None) -> dict[str, Any]:
    from hardware.summary import check_inventory

    if source is None:
        from hardware.detect import collect

        return collect()
    path = Path(source)
    try:
        text = sys.stdin.read() if source == "-" else path.read_text(encoding="utf-8")
    except OSError as e:
        raise ValueError(f"{source}: cannot read ({e.strerror or e})") from None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{source}: not JSON ({e})") from None
    return check_inventory(data, source)


def run(args: argparse.Namespace) -> int:
    try:
        inv = read_inventory(args.source)
    except ValueError as e:
        return fail(str(e))
    if args.suggest:
        from hardware.suggest import suggest

        sys.stdout.write(suggest(inv, args.host, args.role, args.board_name))
        return exitcodes.OK
    if args.board:
        from hardware.boardgen import board_yaml, this_firmware

        firmware = args.firmware or (this_firmware() if args.source is None else None)
        sys.stdout.write(board_yaml(inv, firmware))
        return exitcodes.OK
    if args.match:
        return run_match(args, inv)
    if args.json:
        print(json.dumps(inv, indent=2))
        return exitcodes.OK
    from rich.console import Console

    from hardware.summary import render

    Console().print(render(inv))
    return exitcodes.OK


def read_ledger(source: str) -> dict[str, Any]:
    """A ledger file (JSON), or the ledger on a stick's CLUSTER partition (image or device)."""
    import tempfile

    from builder.commands.claims_cmd import read_stick_ledger
    from hardware import ledger as ledger_mod

    if source.endswith(".json"):
        return ledger_mod.load(source)
    with tempfile.TemporaryDirectory(prefix="clusterctl-claims.") as tmp:
        return read_stick_ledger(source, Path(tmp))[1]


def run_match(args: argparse.Namespace, inv: dict[str, Any]) -> int:
    from builder.profile import ProfileInvalid, load_profile
    from hardware.match import rank
    from hardware.selectors import SelectorError

    try:
        model = load_profile(args.match).model
    except ProfileInvalid as e:
        return fail(str(e))
    except OSError as e:
        return fail(f"{args.match}: {e.strerror or e}")
    hosts = [h.strip() for h in args.hosts.split(",") if h.strip()] if args.hosts else None
    unknown = [h for h in hosts or [] if h not in model.hosts]
    if unknown:
        return fail(f"--hosts: no host {', '.join(unknown)} in {args.match}")
    try:
        book = read_ledger(args.ledger) if args.ledger else None
        result = rank(model, inv, book, hosts)
    except (ValueError, SelectorError) as e:  # LedgerError is a ValueError
        return fail(str(e))
    if args.json:
        print(json.dumps(result.as_dict(), indent=2, ensure_ascii=False))
        return exitcodes.OK
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"match: {result.outcome}")
    for col in ("host", "role", "score", "why"):
        table.add_column(col)
    for c in result.ranked:
        mark = "" if c.eligible else "[dim]"
        table.add_row(f"{mark}{c.host}", f"{mark}{c.role}", f"{mark}{c.score:.2f}", f"{mark}" + "; ".join(c.reasons))
    Console().print(table)
    return exitcodes.OK
