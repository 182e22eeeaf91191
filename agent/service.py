"""``clusterctl agent serve``: the 9P server with exports and state trees, standalone.

Listens on each address, publishes changes on the events stream, polls systemd units (where
systemd runs) so unit state changes show up as events, and prints one ``agent-listening``
event line with the bound addresses (port 0 picks a free port; tests read it from there).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import signal
import socket
from collections.abc import Callable, Iterable
from typing import Any

from agent.bootctl import BootControl
from agent.control import Policy
from agent.eventbus import EventBus
from agent.namespace import AgentNamespace
from agent.ninep.creds import People
from agent.ninep.localfs import Export
from agent.ninep.server import Server, split_address
from agent.state import svc
from core import events

EXPORT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SVC_POLL_SECONDS = 10.0


class UsageError(ValueError):
    """Bad command-line input: reported in one line, exit status 2."""


def parse_export(spec: str) -> Export:
    """``NAME=PATH`` or ``NAME=PATH:ro`` (``:rw`` is the default)."""
    name, sep, rest = spec.partition("=")
    if not sep or not name or not rest:
        raise UsageError(f"--export {spec!r}: expected NAME=PATH[:ro]")
    if not EXPORT_NAME.match(name) or name == "fs":
        raise UsageError(f"--export {spec!r}: the name must be letters, digits, '.', '_', '-' (not 'fs')")
    path, readonly = rest, False
    head, colon, mode = rest.rpartition(":")
    if colon and mode in ("ro", "rw"):
        path, readonly = head, mode == "ro"
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise UsageError(f"--export {spec!r}: {path} is not a directory")
    return Export(name, path, readonly)


def is_loopback(address: str) -> bool:
    if address.startswith("unix:"):
        return True
    host, _port = split_address(address)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen(addresses: Iterable[str], insecure_no_auth: bool, authenticated: bool = False) -> list[str]:
    out = []
    for address in addresses:
        if not address.startswith("unix:"):
            try:
                split_address(address)
            except ValueError as exc:
                raise UsageError(f"--listen: {exc}") from None
        if authenticated:  # peers prove their identity first (agent.auth): any address
            out.append(address)
            continue
        if not insecure_no_auth:
            raise UsageError("pass --identity DIR (peers must authenticate), or --insecure-no-auth (loopback only)")
        if not is_loopback(address):
            raise UsageError(f"--listen {address}: --insecure-no-auth serves loopback addresses only")
        out.append(address)
    return out


def bound_addresses(listener: asyncio.base_events.Server) -> list[str]:
    out = []
    for sock in listener.sockets:
        name = sock.getsockname()
        if sock.family == socket.AF_UNIX:
            out.append(f"unix:{name}")
        elif sock.family == socket.AF_INET6:
            out.append(f"[{name[0]}]:{name[1]}")
        else:
            out.append(f"{name[0]}:{name[1]}")
    return out


async def poll_units(bus: EventBus) -> None:
    """Publish an ``svc`` event whenever a unit's active/sub state changes."""
    loop = asyncio.get_running_loop()
    last: dict[str, tuple[str, str]] = {}
    first = True
    while True:
        units = await loop.run_in_executor(None, svc.units)
        now = {u["name"]: (u["active"], u["sub"]) for u in units}
        if not first:
            for name, state in now.items():
                if last.get(name) != state:
                    bus.publish("svc", unit=name, active=state[0], sub=state[1])
        last, first = now, False
        await asyncio.sleep(SVC_POLL_SECONDS)


async def serve(exports: list[Export], listen: list[str], *, ctl_allow: Iterable[str] = (),
                max_msize: int = 1 << 20, hostname: str | None = None,
                started: asyncio.Future[list[str]] | None = None,
                gate: Callable[..., asyncio.BaseProtocol] | None = None,
                people: People | None = None, policy: Policy | None = None,
                boot: BootControl | None = None) -> None:
    bus = EventBus()
    holder: dict[str, Server] = {}
    ns = AgentNamespace(exports, bus, ctl_allow, hostname,
                        connections=lambda: len(holder["server"].connections) if holder else 0, policy=policy,
                        boot=boot)
    server = Server(ns, max_msize=max_msize, on_event=bus.publish, gate=gate, people=people)
    holder["server"] = server
    listeners = [await server.listen(a) for a in listen]
    addresses = [a for lst in listeners for a in bound_addresses(lst)]
    bus.publish("agent-listening", addresses=addresses)
    events.emit("agent-listening", host=ns.hostname, addresses=addresses,
                exports=[{"name": e.name, "readonly": e.readonly} for e in exports])
    if started is not None and not started.done():
        started.set_result(addresses)
    tasks: list[asyncio.Task[Any]] = []
    if svc.systemd_running():
        tasks.append(asyncio.get_running_loop().create_task(poll_units(bus)))
    try:
        await asyncio.Event().wait()
    finally:
        for t in tasks:
            t.cancel()
        for lst in listeners:
            lst.close()
        for conn in list(server.connections):
            if conn.transport is not None:
                conn.transport.abort()


def run(exports: list[Export], listen: list[str], **kwargs: Any) -> int:
    async def main() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            if task is not None:
                loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await serve(exports, listen, **kwargs)

    asyncio.run(main())
    return 0
