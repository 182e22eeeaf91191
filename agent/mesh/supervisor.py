"""One task per peer: reach it over the mesh, prove who both are, mount it, watch it, and when
it goes, force the mount down and start again.

    unknown/lost ──connect+handshake──► (refused: identity failed; retried slowly)
         ▲                 │ admitted
         │                 ▼
         └──forced down── mounted ◄── probes answered

Endpoints: discovery adds candidates (newest first); while WireGuard has no fresh handshake
with the peer, each attempt sets the next candidate as its endpoint. A peer that reaches us
first teaches WireGuard its endpoint itself (roaming), so attempts go on even without one; the
endpoint reported at mount is the one WireGuard uses then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.auth import HandshakeError
from agent.identity import HostIdentity
from agent.mesh.config import Member
from agent.mesh.liveness import INTERVAL, MISSES, Prober, hung_up
from agent.mesh.mounts import FuseMount, KernelMount, Mounted, MountError
from agent.mesh.wireguard import MeshError, WireGuard, format_endpoint
from agent.peer import connect_authenticated

log = logging.getLogger("agent.mesh.supervisor")

CONNECT_TIMEOUT = 4.0
RETRY = 2.0
REFUSED_RETRY = 30.0
MOUNT_RETRY = 10.0
# Handshake failures that say nothing about identity: the path or the peer's agent is down.
TRANSIENT = ("closed the connection during the handshake", "did not finish the handshake in time")


def identity_failure(exc: HandshakeError) -> bool:
    return not any(t in str(exc) for t in TRANSIENT)


class PeerSupervisor:
    def __init__(self, member: Member, ident: HostIdentity, port: int, path: Path,
                 backend: KernelMount | FuseMount, report: Callable[..., None],
                 wg: WireGuard | None = None, address: str | None = None,
                 interval: float = INTERVAL, misses: int = MISSES) -> None:
        self.member = member
        self.ident = ident
        self.port = port
        self.path = path
        self.backend = backend
        self.report = report  # report(peer, state, **fields): events + membership table
        self.wg = wg
        self.address = address or f"[{member.mesh}]:{port}"
        self.interval = interval
        self.misses = misses
        self.candidates: list[tuple[str, int]] = []
        self.turn = 0
        self.wake = asyncio.Event()
        self.state = "unknown"
        self.refusal: str | None = None
        self.mounted: Mounted | None = None
        self.prober: Prober | None = None
        self.endpoint: str | None = None

    # -- endpoints ---------------------------------------------------------------------
    def add_candidate(self, endpoint: tuple[str, int]) -> None:
        """Newest first: a fresh advert is the likeliest to be right."""
        if self.candidates and self.candidates[0] == endpoint:
            return
        with contextlib.suppress(ValueError):
            self.candidates.remove(endpoint)
        self.candidates.insert(0, endpoint)
        self.turn = 0
        if self.state != "mounted":
            self.wake.set()

    def _pick_endpoint(self) -> None:
        if self.wg is None or not self.candidates:
            return
        try:
            if self.wg.handshake_fresh(self.member.wg_public):
                return  # the endpoint WireGuard has works (maybe learned from the peer)
            ep = self.candidates[self.turn % len(self.candidates)]
            self.turn += 1
            self.endpoint = format_endpoint(*ep)
            self.wg.set_endpoint(self.member.wg_public, self.endpoint)
        except (MeshError, ValueError) as exc:
            log.warning("endpoint of %s: %s", self.member.name, exc)

    def _current_endpoint(self) -> str | None:
        """The endpoint WireGuard uses now: the one set here, or the one it learned from the peer's
        packets (a host behind a NAT is known only by its router's address and port)."""
        if self.wg is None:
            return self.endpoint
        try:
            state = self.wg.peers().get(self.member.wg_public)
        except MeshError as exc:
            log.warning("endpoint of %s: %s", self.member.name, exc)
            return self.endpoint
        return state.endpoint if state is not None and state.endpoint else self.endpoint

    async def _pause(self, seconds: float) -> None:
        self.wake.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.wake.wait(), seconds)

    # -- the loop ----------------------------------------------------------------------
    def _connect(self) -> socket.socket:
        sock, _peer = connect_authenticated(self.address, self.ident, expect_host=self.member.name,
                                            timeout=CONNECT_TIMEOUT)
        return sock

    async def attempt(self) -> str | None:
        """One round: connect, mount, watch. Returns the state it ended in."""
        loop = asyncio.get_running_loop()
        self._pick_endpoint()
        sock: socket.socket | None = None
        try:
            sock = await loop.run_in_executor(None, self._connect)
            side = await loop.run_in_executor(None, self._connect)
        except HandshakeError as exc:
            if sock is not None:
                sock.close()
            if identity_failure(exc):
                reason = str(exc)
                if self.state != "refused" or self.refusal != reason:
                    self.state, self.refusal = "refused", reason
                    self.report(self.member.name, "refused", reason=reason)
                return "refused"
            return None
        except OSError:
            if sock is not None:
                sock.close()
            return None
        try:
            self.prober = await Prober.open(side, self.interval, self.misses)
        except (TimeoutError, OSError, ConnectionError) as exc:
            sock.close()
            log.info("probe session to %s: %s", self.member.name, exc)
            return None
        try:
            self.mounted = await loop.run_in_executor(None, self.backend.mount, sock, self.member.name, self.path)
        except MountError as exc:
            sock.close()
            self.prober.close()
            self.report(self.member.name, "error", reason=str(exc))
            return "error"
        self.state, self.refusal = "mounted", None
        self.endpoint = await loop.run_in_executor(None, self._current_endpoint)
        self.report(self.member.name, "mounted", path=str(self.path), backend=self.backend.name,
                    endpoint=self.endpoint)
        mounted = self.mounted
        assert mounted is not None
        reason = await self.prober.watch(lambda: hung_up(mounted.sock))
        await self.take_down()
        self.state = "lost"
        self.report(self.member.name, "lost", path=str(self.path), reason=reason)
        return "lost"

    async def take_down(self) -> None:
        if self.prober is not None:
            self.prober.close()
            self.prober = None
        if self.mounted is not None:
            m, self.mounted = self.mounted, None
            await asyncio.get_running_loop().run_in_executor(None, self.backend.force_down, m)

    async def run(self) -> None:
        try:
            while True:
                ended = await self.attempt()
                if ended == "refused":
                    await self._pause(REFUSED_RETRY)
                elif ended == "error":
                    await self._pause(MOUNT_RETRY)
                elif ended != "lost":
                    await self._pause(RETRY)
        finally:
            await asyncio.shield(self.take_down())

    def status(self) -> dict[str, Any]:
        c = self.prober.counter if self.prober else None
        return {"state": self.state, "endpoint": self.endpoint,
                "probes": c.probes if c else 0, "misses": c.misses if c else 0}
