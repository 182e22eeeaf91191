"""Liveness against a real agent server on loopback: the certificate handshake, then the
probe session of agent.mesh.liveness. A relay between them stands for the link: frozen (bytes
held, nothing closed, as when a cable is pulled) the probes go unanswered and the peer is
declared gone after 3 misses; a server that goes away is noticed at once. A peer of another
CA is refused before any probe."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from agent import identity as idm
from agent.auth import HandshakeError, gate_for
from agent.mesh.liveness import Prober
from agent.mesh.supervisor import identity_failure
from agent.peer import connect_authenticated
from agent.service import serve
from testdriver.ninep_servers import run


@pytest.fixture(scope="module")
def ids(tmp_path_factory: pytest.TempPathFactory) -> dict[str, idm.HostIdentity]:
    base = tmp_path_factory.mktemp("live")
    ca, _ = idm.init_ca(base / "ca", "live")
    other, _ = idm.init_ca(base / "other", "live")
    return {"a": idm.issue_host(ca, "a"), "b": idm.issue_host(ca, "b"), "stranger": idm.issue_host(other, "a")}


class Relay:
    """TCP relay on 127.0.0.1; ``frozen`` holds every byte (a pulled cable, not a reset)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.frozen = asyncio.Event()
        self.thawed = asyncio.Event()
        self.thawed.set()
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    def freeze(self, on: bool) -> None:
        (self.thawed.clear if on else self.thawed.set)()

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                await self.thawed.wait()
                w.write(data)
                await w.drain()
        finally:
            w.close()

    async def _conn(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection(*self.target)
        await asyncio.gather(self._pipe(r, uw), self._pipe(ur, w), return_exceptions=True)


async def _server(ident: idm.HostIdentity, tmp: Path) -> tuple[asyncio.Task[None], int]:
    started: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
    task = asyncio.get_running_loop().create_task(
        serve([], ["127.0.0.1:0"], hostname=ident.host, gate=gate_for(ident), started=started))
    addresses = await started
    return task, int(addresses[0].rpartition(":")[2])


async def _prober(port: int, ident: idm.HostIdentity, expect: str) -> Prober:
    loop = asyncio.get_running_loop()
    sock, _peer = await loop.run_in_executor(
        None, lambda: connect_authenticated(f"127.0.0.1:{port}", ident, expect_host=expect, timeout=5))
    return await Prober.open(sock, interval=0.3, limit=3)


def test_frozen_link_is_three_misses_then_gone(ids: dict[str, idm.HostIdentity], tmp_path: Path) -> None:
    async def main() -> tuple[str, float, int]:
        server, port = await _server(ids["a"], tmp_path)
        relay = Relay(("127.0.0.1", port))
        rport = await relay.start()
        prober = await _prober(rport, ids["b"], "a")
        for _ in range(3):
            assert await prober.probe()
        assert prober.counter.answered == 3 and prober.counter.rtts
        relay.freeze(True)
        start = time.monotonic()
        reason = await asyncio.wait_for(prober.watch(), 10)
        took = time.monotonic() - start
        prober.close()
        server.cancel()
        return reason, took, prober.counter.misses

    reason, took, misses = run(main())
    assert reason == "no answer to 3 probes in a row" and misses == 3
    assert 0.85 <= took < 2.0  # three 0.3 s probes in a row went unanswered


def test_server_gone_is_noticed_at_once(ids: dict[str, idm.HostIdentity], tmp_path: Path) -> None:
    async def main() -> tuple[str, float]:
        server, port = await _server(ids["a"], tmp_path)
        prober = await _prober(port, ids["b"], "a")
        assert await prober.probe()
        server.cancel()  # closes the listener and every connection
        start = time.monotonic()
        reason = await asyncio.wait_for(prober.watch(), 10)
        prober.close()
        return reason, time.monotonic() - start

    reason, took = run(main())
    assert reason.startswith("connection lost") and took < 0.5


def test_other_ca_and_wrong_name_are_identity_failures(ids: dict[str, idm.HostIdentity], tmp_path: Path) -> None:
    async def main() -> list[HandshakeError]:
        server, port = await _server(ids["a"], tmp_path)
        loop = asyncio.get_running_loop()
        errors = []
        for ident, expect in ((ids["stranger"], "a"), (ids["b"], "b")):
            try:
                await loop.run_in_executor(
                    None, lambda i=ident, e=expect: connect_authenticated(f"127.0.0.1:{port}", i, expect_host=e))
            except HandshakeError as exc:
                errors.append(exc)
        server.cancel()
        return errors

    stranger, wrong_name = run(main())
    assert "not from this cluster's CA" in str(stranger) and identity_failure(stranger)
    assert "is 'a', not 'b'" in str(wrong_name) and identity_failure(wrong_name)
    assert not identity_failure(HandshakeError("the server closed the connection during the handshake"))


def test_hung_up_sees_a_closed_peer_without_reading() -> None:
    import socket

    from agent.mesh.liveness import hung_up

    a, b = socket.socketpair()
    b.sendall(b"unread bytes stay unread")
    assert hung_up(a) is None  # data waiting is not a hang-up
    b.close()
    assert hung_up(a) == "the mount's connection was closed by the peer"
    assert a.recv(100) == b"unread bytes stay unread"
    a.close()
    assert hung_up(a) == "the mount's connection is closed"
