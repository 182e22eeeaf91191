"""Is a mounted peer still there? A side connection (authenticated like the mount's) asks the
peer's 9P server for the attributes of its root every INTERVAL seconds. A probe that gets no
answer within INTERVAL is a miss; MISSES misses in a row, or the connection closing, mean the
peer is gone, and the agent forces its mount down (so reads fail instead of hanging).

Worst case from a cut link to a forced-down mount: (MISSES + 1) * INTERVAL = 6 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.ninep import proto
from agent.ninep.client import Client, _Stream

INTERVAL = 1.5
MISSES = 3
PROBE_MSIZE = 8192


@dataclass
class MissCounter:
    """Consecutive misses; ``record`` says whether the peer is now to be taken as gone."""

    limit: int = MISSES
    misses: int = 0
    probes: int = 0
    answered: int = 0
    last_answer: float = field(default_factory=time.monotonic)
    rtts: list[float] = field(default_factory=list)

    def record(self, ok: bool, rtt: float = 0.0) -> bool:
        self.probes += 1
        if ok:
            self.misses = 0
            self.answered += 1
            self.last_answer = time.monotonic()
            self.rtts = ([*self.rtts, rtt])[-20:]
        else:
            self.misses += 1
        return self.misses >= self.limit


class Prober:
    def __init__(self, client: Client, fid: int, interval: float = INTERVAL, limit: int = MISSES) -> None:
        self.client = client
        self.fid = fid
        self.interval = interval
        self.counter = MissCounter(limit)

    @classmethod
    async def open(cls, sock: socket.socket, interval: float = INTERVAL, limit: int = MISSES,
                   timeout: float = 5.0) -> Prober:
        """A 9P session on an authenticated socket (agent.peer.connect_authenticated): version and
        attach to the root. The socket is the prober's from here on."""
        loop = asyncio.get_running_loop()
        client = Client()
        try:
            sock.setblocking(False)
            transport, _p = await loop.create_connection(lambda: _Stream(client), sock=sock)
        except BaseException:
            sock.close()
            raise
        client.transport = transport
        try:
            await asyncio.wait_for(client.version(PROBE_MSIZE), timeout)
            fid = client.alloc_fid()
            await asyncio.wait_for(client.attach(fid, ""), timeout)
        except BaseException:
            transport.abort()
            raise
        return cls(client, fid, interval, limit)

    async def probe(self) -> bool:
        """One probe: True if answered within the interval. ConnectionError if the peer hung up."""
        start = time.monotonic()
        try:
            await asyncio.wait_for(self.client.getattr(self.fid, proto.GETATTR_BASIC), self.interval)
        except TimeoutError:
            self.counter.record(False)
            return False
        self.counter.record(True, time.monotonic() - start)
        return True

    async def watch(self, also_gone: Callable[[], str | None] | None = None) -> str:
        """Probe until the peer is gone; returns why. ``also_gone`` is asked after every probe
        (the mount's own connection closing also ends it)."""
        while True:
            start = time.monotonic()
            why = also_gone() if also_gone is not None else None
            if why:
                return why
            try:
                await self.probe()
            except (ConnectionError, OSError) as exc:
                return f"connection lost ({exc})"
            if self.counter.misses >= self.counter.limit:
                return f"no answer to {self.counter.misses} probes in a row"
            if self.client.lost.done():
                return "connection lost"
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - start)))

    def close(self) -> None:
        if self.client.transport is not None:
            with contextlib.suppress(Exception):
                self.client.transport.abort()


def hung_up(sock: socket.socket) -> str | None:
    """Has the other end of ``sock`` closed or reset it? Asked without reading (the kernel's
    9p client owns the byte stream of a mounted socket)."""
    poller = select.poll()
    try:
        poller.register(sock.fileno(), select.POLLRDHUP | select.POLLHUP | select.POLLERR)
    except (OSError, ValueError):
        return "the mount's connection is closed"
    for _fd, ev in poller.poll(0):
        if ev & (select.POLLRDHUP | select.POLLHUP | select.POLLERR):
            return "the mount's connection was closed by the peer"
    return None
