"""``clusterctl agent``: serve exports and state over 9P2000.L, or mount a 9P server with FUSE."""

from __future__ import annotations

import argparse
import sys
from typing import Any

EXIT_USAGE = 2


def register(subparsers: Any) -> None:
    agent = subparsers.add_parser("agent", help="the fused agent: 9P server and FUSE client",
                                  description="The fused agent's 9P2000.L server and FUSE client.")
    sub = agent.add_subparsers(dest="agent_command", metavar="SUBCOMMAND", title="subcommands")
    agent.set_defaults(func=lambda args: _help(agent))

    s = sub.add_parser("serve", help="serve exports and host state over 9P2000.L",
                       description=("Serve directories and this host's state (hw/, os/, svc/, status, events, "
                                    "ctl) over 9P2000.L. Attach name '' or '/' gives the whole tree, "
                                    "'fs/NAME' or 'NAME' one export."))
    s.add_argument("--export", action="append", default=[], metavar="NAME=PATH[:ro]",
                   help="export a directory (repeatable); ':ro' refuses every change")
    s.add_argument("--listen", action="append", default=[], metavar="ADDR",
                   help="HOST:PORT, [V6]:PORT or unix:PATH (repeatable; default 127.0.0.1:5640)")
    s.add_argument("--insecure-no-auth", action="store_true",
                   help="serve without authentication (loopback addresses only)")
    s.add_argument("--ctl-allow", action="append", default=[], metavar="CAP",
                   help="let ctl files run commands of this kind: event, refresh, svc (repeatable or comma list)")
    s.add_argument("--msize", type=int, default=1 << 20, help="largest message size to agree to (default 1 MiB)")
    s.add_argument("--hostname", help="host name to report (default: this host's)")
    s.set_defaults(func=_serve)

    m = sub.add_parser("mount", help="mount a 9P2000.L server with FUSE (no 9p kernel module needed)",
                       description="Mount a 9P2000.L server at MOUNTPOINT through FUSE; runs until unmounted.")
    m.add_argument("address", metavar="ADDR", help="HOST:PORT or unix:PATH of the server")
    m.add_argument("mountpoint", metavar="MOUNTPOINT")
    m.add_argument("--aname", default="", help="attach name ('' = whole host, 'fs/NAME' = one export)")
    m.add_argument("--msize", type=int, default=1 << 20, help="message size to ask for (default 1 MiB)")
    m.add_argument("--uname", default="root", help="user name sent in Tattach")
    m.set_defaults(func=_mount)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return EXIT_USAGE


def _usage(message: str) -> int:
    print(f"clusterctl agent: {message}", file=sys.stderr)
    return EXIT_USAGE


def _serve(args: argparse.Namespace) -> int:
    from agent.ninep import proto
    from agent.service import UsageError, check_listen, parse_export, run

    try:
        exports = [parse_export(spec) for spec in args.export]
        names = [e.name for e in exports]
        if len(set(names)) != len(names):
            raise UsageError("an export name is given twice")
        listen = check_listen(args.listen or ["127.0.0.1:5640"], args.insecure_no_auth)
        if not proto.MIN_MSIZE <= args.msize <= proto.MAX_MSIZE:
            raise UsageError(f"--msize must be between {proto.MIN_MSIZE} and {proto.MAX_MSIZE}")
        caps = [c.strip() for item in args.ctl_allow for c in item.split(",") if c.strip()]
        from agent.namespace import CTL_CAPABILITIES

        bad = [c for c in caps if c not in CTL_CAPABILITIES]
        if bad:
            raise UsageError(f"--ctl-allow {','.join(bad)}: known: {', '.join(CTL_CAPABILITIES)}")
    except UsageError as exc:
        return _usage(str(exc))
    try:
        return run(exports, listen, ctl_allow=caps, max_msize=args.msize, hostname=args.hostname)
    except OSError as exc:
        print(f"clusterctl agent serve: {exc}", file=sys.stderr)
        return 1


def _mount(args: argparse.Namespace) -> int:
    import os

    from agent.ninep import proto

    if not os.path.isdir(args.mountpoint):
        return _usage(f"mount point {args.mountpoint} is not a directory")
    if not proto.MIN_MSIZE <= args.msize <= proto.MAX_MSIZE:
        return _usage(f"--msize must be between {proto.MIN_MSIZE} and {proto.MAX_MSIZE}")
    if not args.address.startswith("unix:") and (":" not in args.address or
                                                  not args.address.rpartition(":")[2].isdigit()):
        return _usage(f"address {args.address!r} is not HOST:PORT or unix:PATH")
    try:
        from agent.fuse9p import mount
    except ImportError as exc:
        print(f"clusterctl agent mount: FUSE support is missing ({exc}); install python3-pyfuse3",
              file=sys.stderr)
        return 1
    try:
        return mount(args.address, args.mountpoint, aname=args.aname, msize=args.msize, uname=args.uname)
    except (OSError, ConnectionError) as exc:
        print(f"clusterctl agent mount: {exc}", file=sys.stderr)
        return 1
