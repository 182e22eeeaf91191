"""``clusterctl claims STICK``: which box holds which host, from a stick's claim ledger.

    clusterctl claims images/dualnano/stick.img          the claims, one a line
    clusterctl claims /dev/sdb --release left            forget left's claim: the stick offers it again
    ... --json                                           the ledger as JSON

STICK is a built image or the stick's device; the ledger is ``claims.json`` on its CLUSTER
partition, read and written with mtools (no mount). Releasing is what to do when a box is
retired or reinstalled from scratch, or when a claim was made by mistake.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from agent.firstboot.claims import StickLedger
from core import exitcodes
from hardware import ledger as ledger_mod


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("claims", help="show or release the hosts a stick has installed, and on which box",
                              description="The claim ledger on a stick's CLUSTER partition: which host each box "
                                          "became. --release HOST lets the stick install HOST again.")
    p.add_argument("stick", metavar="STICK", help="a built usb-installer image or the stick's device")
    p.add_argument("--release", metavar="HOST", action="append", default=[], help="forget HOST's claim (repeatable)")
    p.add_argument("--json", action="store_true", help="print the ledger as JSON")
    p.set_defaults(func=run)


def read_stick_ledger(stick: str, work: Path) -> tuple[StickLedger, dict[str, Any]]:
    """The stick's ledger; ValueError saying why it can't be read."""
    if not Path(stick).exists():
        raise ValueError(f"{stick}: no such file or device")
    where = StickLedger.find(stick, work / "claims.json")
    book = where.fetch()
    if book is None:
        raise ValueError(f"{stick}: {where.problem}")
    return where, book


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="clusterctl-claims.") as tmp:
        try:
            where, book = read_stick_ledger(args.stick, Path(tmp))
        except ValueError as e:
            print(f"clusterctl claims: {e}", file=sys.stderr)
            return exitcodes.USAGE
        missing = [h for h in args.release if not ledger_mod.release(book, h)]
        if missing:
            print(f"clusterctl claims: {args.stick} holds no claim for {', '.join(missing)} "
                  f"(claims: {', '.join(book.get('claims') or {}) or 'none'})", file=sys.stderr)
            return exitcodes.USAGE
        if args.release:
            ledger_mod.save(where.local, book)
            problem = where.store()
            if problem:
                print(f"clusterctl claims: {problem}", file=sys.stderr)
                return exitcodes.FAILED
            print(f"released {', '.join(args.release)} on {args.stick}")
    if args.json:
        print(json.dumps(book, indent=2, sort_keys=True))
    elif not args.release:
        claims = ledger_mod.active_claims(book)
        for host, c in sorted(claims.items()):
            print(f"{host}: {c.get('product') or '?'}, serial {c.get('serial') or '?'}, "
                  f"MACs {', '.join(c.get('macs') or []) or '?'}, since {c.get('at') or '?'}")
        if not claims:
            print(f"{args.stick}: no host claimed yet")
    return exitcodes.OK
