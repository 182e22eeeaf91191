"""``clusterctl agent``: serve exports and state over 9P2000.L, or mount a 9P server with FUSE."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from core import exitcodes


def register(subparsers: Any) -> None:
    agent = subparsers.add_parser("agent", help="the fused agent: 9P server and FUSE client",
                                  description="The fused agent's 9P2000.L server and FUSE client.")
    sub = agent.add_subparsers(dest="agent_command", metavar="SUBCOMMAND", title="subcommands")
    agent.set_defaults(func=lambda args: _help(agent))
    add_commands(sub)


def add_commands(sub: Any) -> None:
    """The agent's subcommands, under ``clusterctl agent`` and ``clusterctl-agent`` alike."""
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
    s.add_argument("--identity", metavar="DIR",
                   help="this host's identity (host.crt, host.key, ca.crt): peers must prove theirs "
                        "before any 9P; any address may then be served")
    s.add_argument("--ctl-allow", action="append", default=[], metavar="CAP",
                   help="let ctl files run commands of this kind: event, refresh, svc (repeatable or comma list)")
    s.add_argument("--msize", type=int, default=1 << 20, help="largest message size to agree to (default 1 MiB)")
    s.add_argument("--hostname", help="host name to report (default: this host's)")
    s.add_argument("--person", action="append", default=[], metavar="NAME=UID",
                   help="act as each attaching person (repeatable; needs --identity and root): NAME=UID's "
                        "requests run with that uid, root's and other uids' as nobody")
    s.add_argument("--trust-root", action="append", default=[], metavar="EXPORT",
                   help="with --person: a peer's root stays root in this export (repeatable)")
    s.set_defaults(func=_serve)

    m = sub.add_parser("mount", help="mount a 9P2000.L server with FUSE (no 9p kernel module needed)",
                       description="Mount a 9P2000.L server at MOUNTPOINT through FUSE; runs until unmounted.")
    m.add_argument("address", metavar="ADDR", help="HOST:PORT or unix:PATH of the server")
    m.add_argument("mountpoint", metavar="MOUNTPOINT")
    m.add_argument("--aname", default="", help="attach name ('' = whole host, 'fs/NAME' = one export)")
    m.add_argument("--msize", type=int, default=1 << 20, help="message size to ask for (default 1 MiB)")
    m.add_argument("--uname", default="root", help="user name sent in Tattach")
    m.add_argument("--identity", metavar="DIR",
                   help="authenticate with this host identity (the server must be serving with --identity)")
    m.set_defaults(func=_mount)

    i = sub.add_parser("identity", help="cluster CA and host identities (certificates, WireGuard keys)",
                       description="Make the cluster CA and issue host identities by hand (the build does "
                                   "this for every host; see docs/identity.md).")
    isub = i.add_subparsers(dest="identity_command", metavar="SUBCOMMAND", title="subcommands")
    i.set_defaults(func=lambda args: _help(i))
    init = isub.add_parser("init", help="make the cluster CA (or show the one that is there)")
    init.add_argument("--cluster", required=True, help="cluster name")
    init.add_argument("--ca-dir", metavar="DIR", help="default ~/.config/clusterctl/CLUSTER/ca")
    init.set_defaults(func=_identity_init)
    iss = isub.add_parser("issue", help="issue a host's certificate, key, WireGuard keys and mesh address")
    iss.add_argument("--ca-dir", metavar="DIR", required=True, help="the CA folder (from init)")
    iss.add_argument("--host", required=True, help="host name (the certificate's CN)")
    iss.add_argument("--out", metavar="DIR", required=True, help="folder for this host's files (made 0700)")
    iss.set_defaults(func=_identity_issue)

    r = sub.add_parser("run", help="the agent daemon of an installed host (mesh, discovery, /n/<host> mounts)",
                       description=("Bring up the WireGuard mesh from this host's identity, serve 9P on the mesh "
                                    "address, find peers (mDNS and seeds) and mount each at <namespace>/<host>. "
                                    "Runs until SIGTERM; see docs/agent.md."))
    r.add_argument("--etc", default="/etc/clusterctl", metavar="DIR",
                   help="host.json, profile.json and identity/ (default /etc/clusterctl)")
    r.add_argument("--run-dir", default="/run/clusterctl", metavar="DIR",
                   help="where the membership table goes (default /run/clusterctl)")
    r.add_argument("--mount", choices=("auto", "v9fs", "fuse"), default="auto",
                   help="how peers are mounted: the kernel's 9p, the FUSE client, or v9fs when there")
    r.add_argument("--no-wireguard", action="store_true",
                   help="do not make wg0: the mesh addresses are already routed (another VPN, tests)")
    r.add_argument("--no-mdns", action="store_true", help="find peers through the seeds only")
    r.add_argument("--listen", metavar="ADDR", help="serve 9P here instead of [mesh address]:fusion port")
    r.add_argument("--namespace", metavar="DIR", help="mount peers here instead of cluster.fusion.namespace")
    r.add_argument("--port", type=int, help="the peers' 9P port instead of cluster.fusion.port")
    r.set_defaults(func=_run)

    v = sub.add_parser("volumes", help="find, format when blank, and mount the role's data disks",
                       description=("Mount each of the role's volumes (roles.ROLE.volumes in the profile) at its "
                                    "path: the disk that holds it, else the blank disk its selector picks. A disk "
                                    "holding anything else is left alone unless disk.wipe is true. One 'volume' "
                                    "event each; exit 1 if any is not mounted."))
    v.add_argument("--etc", default="/etc/clusterctl", metavar="DIR", help="host.json and profile.json")
    v.add_argument("--plan", action="store_true", help="say what would be done, change nothing")
    v.add_argument("--wait", type=float, default=30.0, metavar="SECONDS",
                   help="how long to wait for a volume's disk to appear (default 30)")
    v.set_defaults(func=_volumes)

    st = sub.add_parser("status", help="the cluster as this host's agent sees it",
                        description="Hosts, roles, online, exports and mount paths, from the agent's table.")
    st.add_argument("--json", action="store_true", help="the table as JSON")
    st.add_argument("--run-dir", default="/run/clusterctl", metavar="DIR")
    st.set_defaults(func=_status)

    mg = sub.add_parser("manage", help="every host of the cluster in one live view; act on one",
                        description="The cluster as this host sees it, live: online, role, board, the OS each "
                                    "runs and can boot, uptime, load, memory, disk, failed units, last events. "
                                    "With HOST COMMAND: send the command to HOST's ctl file (reboot, poweroff, "
                                    "svc VERB UNIT); the host decides whether you may (docs/manage.md).")
    from agent import manage_cmd

    manage_cmd.add_arguments(mg)
    mg.set_defaults(func=manage_cmd.run)


def add_inventory(sub: Any) -> None:
    """The host's own ``clusterctl inventory`` (the build machine's has more: --match, --suggest)."""
    inv = sub.add_parser("inventory", help="this machine's hardware, as first boot sees it",
                         description="Detect this machine's hardware (pyudev): a summary, the inventory JSON, "
                                     "or a board file so that QEMU can boot its twin in tests.")
    inv.add_argument("--json", action="store_true", help="the inventory as JSON (docs/inventory.md)")
    inv.add_argument("--board", action="store_true", help="a board file (YAML) for this machine")
    inv.set_defaults(func=_inventory)


def _inventory(args: argparse.Namespace) -> int:
    import json

    from hardware.boardgen import board_yaml, this_firmware
    from hardware.detect import collect
    from hardware.summary import render

    inventory = collect(wait_for_udev=True)
    if args.board:
        sys.stdout.write(board_yaml(inventory, this_firmware()))
    elif args.json:
        print(json.dumps(inventory, indent=2))
    else:
        from rich.console import Console

        Console().print(render(inventory))
    return 0


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return exitcodes.USAGE


def _usage(message: str) -> int:
    print(f"clusterctl agent: {message}", file=sys.stderr)
    return exitcodes.USAGE


def _serve(args: argparse.Namespace) -> int:
    from agent.ninep import proto
    from agent.service import UsageError, check_listen, parse_export, run

    try:
        exports = [parse_export(spec) for spec in args.export]
        names = [e.name for e in exports]
        if len(set(names)) != len(names):
            raise UsageError("an export name is given twice")
        listen = check_listen(args.listen or ["127.0.0.1:5640"], args.insecure_no_auth,
                              authenticated=args.identity is not None)
        if not proto.MIN_MSIZE <= args.msize <= proto.MAX_MSIZE:
            raise UsageError(f"--msize must be between {proto.MIN_MSIZE} and {proto.MAX_MSIZE}")
        caps = [c.strip() for item in args.ctl_allow for c in item.split(",") if c.strip()]
        from agent.namespace import CTL_CAPABILITIES

        bad = [c for c in caps if c not in CTL_CAPABILITIES]
        if bad:
            raise UsageError(f"--ctl-allow {','.join(bad)}: known: {', '.join(CTL_CAPABILITIES)}")
        gate, host = _gate(args.identity) if args.identity is not None else (None, None)
        people = _people(args.person, args.trust_root, names, args.identity is not None)
    except UsageError as exc:
        return _usage(str(exc))
    try:
        return run(exports, listen, ctl_allow=caps, max_msize=args.msize, hostname=args.hostname or host,
                   gate=gate, people=people)
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
        import pyfuse3  # noqa: F401  (Debian's python3-pyfuse3: optional, only this command needs it)
    except ImportError as exc:
        print(f"clusterctl agent mount: FUSE support is missing ({exc}); install python3-pyfuse3",
              file=sys.stderr)
        return 1
    from agent.fuse9p import mount

    try:
        sock = None
        if args.identity is not None:
            from agent.identity import IdentityError
            from agent.peer import connect_authenticated

            try:
                sock, _peer = connect_authenticated(args.address, args.identity)
            except IdentityError as exc:
                return _usage(f"--identity: {exc}")
        return mount(args.address, args.mountpoint, aname=args.aname, msize=args.msize, uname=args.uname,
                     sock=sock)
    except (OSError, ConnectionError) as exc:
        print(f"clusterctl agent mount: {exc}", file=sys.stderr)
        return 1


def _people(specs: list[str], trust_root: list[str], exports: list[str], authenticated: bool) -> Any:
    """--person NAME=UID ... and --trust-root EXPORT ... as the server's People, or None."""
    from agent.ninep import creds
    from agent.service import UsageError

    if not specs:
        if trust_root:
            raise UsageError("--trust-root means something only with --person")
        return None
    if not authenticated:
        raise UsageError("--person needs --identity: a person's attach is taken only from a host the CA vouched for")
    if not creds.can_switch():
        raise UsageError("--person needs root (the server switches to each person's uid)")
    people: dict[int, str] = {}
    for spec in specs:
        name, sep, uid = spec.partition("=")
        if not sep or not name or not uid.isdigit() or not 0 < int(uid) < 0xFFFFFFFF:
            raise UsageError(f"--person {spec!r}: expected NAME=UID, with a uid above 0")
        people[int(uid)] = name
    unknown = [t for t in trust_root if t not in exports]
    if unknown:
        raise UsageError(f"--trust-root {', '.join(unknown)}: not an export here (exports: {', '.join(exports)})")
    return creds.People(people, trust_root)


def _gate(directory: str) -> tuple[Any, str]:
    """The handshake gate for ``--identity DIR`` and the host name its certificate gives."""
    from agent.auth import gate_for
    from agent.identity import IdentityError, load_host_identity
    from agent.service import UsageError

    try:
        ident = load_host_identity(Path(directory))
        return gate_for(ident), ident.host
    except IdentityError as exc:
        raise UsageError(f"--identity: {exc}") from None


def _identity_init(args: argparse.Namespace) -> int:
    from agent.identity import IdentityError, default_ca_dir, fingerprint, init_ca

    try:
        ca_dir = Path(args.ca_dir) if args.ca_dir else default_ca_dir(args.cluster)
        ca, made = init_ca(ca_dir, args.cluster)
    except IdentityError as exc:
        return _usage(str(exc))
    except OSError as exc:
        print(f"clusterctl agent identity init: {exc}", file=sys.stderr)
        return 1
    print(f"{'made' if made else 'kept'} the CA of cluster {ca.cluster} in {ca_dir} "
          f"(sha256 {fingerprint(ca.cert).hex()})")
    return 0


def _identity_issue(args: argparse.Namespace) -> int:
    from agent.identity import IdentityError, issue_host, load_ca, write_host_identity

    try:
        ca = load_ca(Path(args.ca_dir))
        ident = issue_host(ca, args.host)
        write_host_identity(ident, Path(args.out))
    except IdentityError as exc:
        return _usage(str(exc))
    except OSError as exc:
        print(f"clusterctl agent identity issue: {exc}", file=sys.stderr)
        return 1
    print(f"issued {ident.host} of cluster {ident.cluster}: mesh address {ident.address}, "
          f"WireGuard public key {ident.wg_public}, files in {args.out}")
    return 0


def _run(args: argparse.Namespace) -> int:
    import asyncio
    import contextlib
    import logging
    import signal

    from agent.mesh import config
    from agent.mesh.daemon import Agent
    from agent.mesh.mounts import MountError, pick_backend
    from agent.mesh.wireguard import MeshError, WireGuard
    from core import events

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = config.load(Path(args.etc))
        if args.namespace:
            cfg.namespace = Path(args.namespace)
        if args.port:
            cfg.port = args.port
        backend = pick_backend(args.mount)
    except (config.ConfigError, MountError) as exc:
        events.emit("error", stage="agent", message=str(exc))
        return _usage(str(exc)) if isinstance(exc, config.ConfigError) else 1
    agent = Agent(cfg, backend, wg=None if args.no_wireguard else WireGuard(), run_dir=Path(args.run_dir),
                  mdns=not args.no_mdns, listen=args.listen)

    async def main() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            if task is not None:
                loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await agent.run()

    try:
        asyncio.run(main())
    except (MeshError, OSError, config.ConfigError) as exc:
        events.emit("error", stage="agent", host=cfg.host, message=str(exc))
        print(f"clusterctl-agent run: {exc}", file=sys.stderr)
        return 1
    return 0


def _volumes(args: argparse.Namespace) -> int:
    from agent import volumes
    from agent.mesh.config import ConfigError, role_volumes
    from core import events
    from hardware.detect import collect
    from hardware.selectors import SelectorError

    try:
        role, wanted = role_volumes(Path(args.etc))
    except ConfigError as exc:
        events.emit("error", stage="volumes", message=str(exc))
        return _usage(str(exc))
    if not wanted:
        print(f"clusterctl-agent volumes: role {role or '(none)'} has no volumes")
        return 0
    if args.plan:
        try:
            steps = volumes.plan_volumes(wanted, collect(wait_for_udev=True))
        except SelectorError as exc:
            return _usage(str(exc))
        for st in steps:
            print(f"{st.name}: {st.action} {st.path}: {st.why}")
        return 0
    return 0 if volumes.prepare(wanted, lambda: collect(wait_for_udev=True), wait=args.wait) else 1


def _status(args: argparse.Namespace) -> int:
    import json

    from agent.mesh.members import read_table
    from agent.mesh.status import render

    try:
        table = read_table(Path(args.run_dir))
    except FileNotFoundError:
        print(f"clusterctl status: no {args.run_dir}/members.json: the agent has not run on this host "
              "(systemctl status clusterctl-agent)", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"clusterctl status: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(table, indent=1))
    else:
        sys.stdout.write(render(table, color=sys.stdout.isatty()))
    return 0
