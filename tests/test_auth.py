"""Authentication before 9P, on loopback: hosts of one cluster admit each other both ways
and then speak real 9P; another cluster's hosts, expired certificates, a key that is not the
certificate's, a replayed transcript and garbage frames are refused, and the server (the real
``clusterctl agent serve --identity`` process) keeps serving. One test mounts through FUSE."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from agent import auth
from agent import identity as idm
from agent.auth import HandshakeError
from agent.control import Policy
from agent.eventbus import EventBus
from agent.namespace import AgentNamespace
from agent.ninep import creds, proto
from agent.ninep.localfs import Export
from agent.ninep.server import Server
from agent.peer import connect_authenticated, kernel_mount_argv, open_client
from core.events import parse_line
from testdriver.ninep_servers import run

REPO = Path(__file__).resolve().parents[1]


@dataclass
class World:
    base: Path
    demo_ca: idm.ClusterCA
    other_ca: idm.ClusterCA
    dirs: dict[str, Path]  # identity folders: left, right (demo), stranger (other cluster, named left)
    export: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    base = tmp_path_factory.mktemp("auth")
    demo, _ = idm.init_ca(base / "demo-ca", "demo")
    other, _ = idm.init_ca(base / "other-ca", "other")
    dirs = {}
    for name, ca, host in (("left", demo, "left"), ("right", demo, "right"), ("stranger", other, "left")):
        dirs[name] = base / name
        idm.write_host_identity(idm.issue_host(ca, host), dirs[name])
    export = base / "export"
    export.mkdir()
    (export / "hello").write_bytes(b"hello from the export\n")
    return World(base, demo, other, dirs, export)


class Serve:
    """``clusterctl agent serve --identity`` as a process; ``address`` is where it listens."""

    def __init__(self, identity: Path, export: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "builder.cli", "agent", "serve", "--export", f"data={export}:ro",
             "--listen", "127.0.0.1:0", "--identity", str(identity)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        ev = parse_line(self.proc.stdout.readline())
        if ev is None or ev["event"] != "agent-listening" or ev["host"] != idm.load_host_identity(identity).host:
            self.close()
            raise RuntimeError(f"serve did not start: {self.proc.stderr.read() if self.proc.stderr else ''}")
        self.address = str(ev["addresses"][0])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def servers(world: World) -> Iterator[dict[str, Serve]]:
    out: dict[str, Serve] = {}
    try:
        for name in ("left", "right", "stranger"):
            out[name] = Serve(world.dirs[name], world.export)  # host name: the certificate's
        yield out
    finally:
        for s in out.values():
            s.close()


class GatedServer:
    """Our Server with a given (possibly broken) identity, in a thread: for identities that
    ``clusterctl agent serve`` would refuse to load."""

    def __init__(self, ident: idm.HostIdentity | None, export: Path | None, timeout: float = auth.TIMEOUT, *,
                 exports: list[Export] | None = None, people: creds.People | None = None,
                 policy: Policy | None = None, power: Callable[[str], None] | None = None) -> None:
        """``ident`` None: no handshake; ``exports`` instead of the one read-only ``export``;
        ``policy`` and ``power``: who may act through ctl, and what a reboot does (agent.control)."""
        self.loop = asyncio.new_event_loop()
        self.events: list[dict[str, object]] = []
        ready = threading.Event()

        def main() -> None:
            asyncio.set_event_loop(self.loop)

            async def start() -> None:
                served = exports if exports is not None else [Export("data", str(export), True)]
                self.ns = ns = AgentNamespace(served, EventBus(), hostname=ident.host if ident is not None else "vault",
                                              policy=policy, power=power)
                gate = auth.gate_for(ident, timeout) if ident is not None else None
                self.server = Server(ns, gate=gate, people=people,
                                     on_event=lambda event, **f: self.events.append({"event": event, **f}))
                self.listener = await self.server.listen("127.0.0.1:0")
                self.address = f"127.0.0.1:{self.listener.sockets[0].getsockname()[1]}"
                ready.set()

            self.loop.run_until_complete(start())
            self.loop.run_forever()

        self.thread = threading.Thread(target=main, daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def close(self) -> None:
        async def stop() -> None:
            self.listener.close()
            for conn in list(self.server.connections):
                if conn.transport is not None:
                    conn.transport.abort()
            await asyncio.sleep(0.01)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


async def read_hello(address: str, identity: Path | idm.HostIdentity) -> tuple[str, bytes]:
    client, peer = await open_client(address, identity)
    try:
        await client.attach(1, "")
        await client.walk(1, 2, ["fs", "data", "hello"])
        await client.lopen(2, proto.L_O_RDONLY)
        return peer.host, await client.read(2, 0, 100)
    finally:
        await client.close()


def test_same_cluster_both_ways_then_9p(world: World, servers: dict[str, Serve]) -> None:
    # right reaches left's agent, and left reaches right's: each proves itself to the other.
    assert run(read_hello(servers["left"].address, world.dirs["right"])) == ("left", b"hello from the export\n")
    assert run(read_hello(servers["right"].address, world.dirs["left"])) == ("right", b"hello from the export\n")
    sock, peer = connect_authenticated(servers["left"].address, world.dirs["right"], expect_host="left")
    sock.close()
    assert peer.cluster == "demo" and len(peer.fingerprint) == 32
    with pytest.raises(HandshakeError, match="is 'left', not 'right'"):
        connect_authenticated(servers["left"].address, world.dirs["right"], expect_host="right")


def test_other_cluster_refused_both_ways(world: World, servers: dict[str, Serve]) -> None:
    # A stranger (another cluster's CA, same host name) reaching our host: our server refuses it.
    with pytest.raises(HandshakeError, match="refused us: certificate of 'left' is not from this cluster"):
        connect_authenticated(servers["left"].address, world.dirs["stranger"])
    # Our host reaching the stranger's server: refused there as well.
    with pytest.raises(HandshakeError, match="not from this cluster"):
        connect_authenticated(servers["stranger"].address, world.dirs["right"])
    # And a stranger's server that would admit us (it trusts our CA) is refused by our client,
    # because it cannot show a certificate from our CA.
    stranger = idm.load_host_identity(world.dirs["stranger"])
    rogue = GatedServer(replace(stranger, ca_cert=world.demo_ca.cert), world.export)
    try:
        with pytest.raises(HandshakeError, match="certificate of 'left' is not from this cluster's CA"):
            connect_authenticated(rogue.address, world.dirs["right"])
    finally:
        rogue.close()
    assert servers["left"].alive() and servers["stranger"].alive()


def test_expired_certificates_refused(world: World, servers: dict[str, Serve]) -> None:
    past = idm.now_utc() - datetime.timedelta(days=10)
    expired = idm.issue_host(replace(world.demo_ca, directory=None), "right", days=1, start=past)
    with pytest.raises(HandshakeError, match="refused us: the peer's certificate has expired"):
        connect_authenticated(servers["left"].address, expired)
    future = idm.issue_host(replace(world.demo_ca, directory=None), "right",
                            start=idm.now_utc() + datetime.timedelta(days=1))
    with pytest.raises(HandshakeError, match="not valid yet"):
        connect_authenticated(servers["left"].address, future)
    # An expired server is refused by the client.
    expired_left = idm.issue_host(replace(world.demo_ca, directory=None), "left", days=1, start=past)
    srv = GatedServer(expired_left, world.export)
    try:
        with pytest.raises(HandshakeError, match="has expired"):
            connect_authenticated(srv.address, world.dirs["right"])
    finally:
        srv.close()


def test_wrong_key_for_certificate_refused(world: World, servers: dict[str, Serve]) -> None:
    right = idm.load_host_identity(world.dirs["right"])
    impostor = replace(right, key=ed25519.Ed25519PrivateKey.generate())  # right's certificate, another key
    with pytest.raises(HandshakeError, match="refused us: 'right' did not prove it holds its key"):
        connect_authenticated(servers["left"].address, impostor)
    left = idm.load_host_identity(world.dirs["left"])
    srv = GatedServer(replace(left, key=ed25519.Ed25519PrivateKey.generate()), world.export)
    try:
        with pytest.raises(HandshakeError, match="'left' did not prove it holds its key"):
            connect_authenticated(srv.address, world.dirs["right"])
    finally:
        srv.close()


class Recorder:
    """A socket that remembers what was sent: the client's half of a transcript."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sent: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.sent.append(bytes(data))
        self.sock.sendall(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self.sock, name)


def recv_result(sock: socket.socket) -> tuple[int, bytes]:
    """Skip to the RESULT frame and return (status, reason); (-1, b'') if the server hung up."""
    sock.settimeout(5)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    pos = 0
    while len(data) - pos >= auth.FRAME.size:
        _m, _v, kind, length = auth.FRAME.unpack_from(data, pos)
        payload = data[pos + auth.FRAME.size:pos + auth.FRAME.size + length]
        if kind == auth.RESULT:
            return payload[0], payload[1:]
        pos += auth.FRAME.size + length
    return -1, b""


def test_replayed_transcript_refused(world: World, servers: dict[str, Serve]) -> None:
    address = servers["left"].address
    host, port = address.rsplit(":", 1)
    right = idm.load_host_identity(world.dirs["right"])
    with socket.create_connection((host, int(port))) as s:
        rec = Recorder(s)
        auth.client_handshake(rec, right)  # type: ignore[arg-type]
    hello, proof = rec.sent
    # Replaying right's recorded HELLO and PROOF: the server's nonce is new, the proof is stale.
    with socket.create_connection((host, int(port))) as s:
        s.sendall(hello + proof)
        status, reason = recv_result(s)
    assert status == auth.REFUSED and b"did not prove" in reason


@pytest.mark.parametrize("garbage", [
    b"",  # connect and hang up
    b"GET / HTTP/1.0\r\n\r\n",
    os.urandom(4096),
    b"C9AU",  # a truncated header
    auth.FRAME.pack(b"C9AU", 1, auth.HELLO, 500) + b"x" * 10,  # a truncated payload
    auth.FRAME.pack(b"C9AU", 2, auth.HELLO, 0),  # a future version
    auth.FRAME.pack(b"C9AU", 1, auth.PROOF, 64) + bytes(64),  # out of order
    auth.FRAME.pack(b"C9AU", 1, auth.HELLO, 0xFFFF),  # too large
    auth.frame(auth.HELLO, os.urandom(32) + b"not a certificate"),
    auth.frame(auth.HELLO, b"short"),
    proto.encode(proto.TVERSION, proto.NOTAG, msize=8192, version=proto.VERSION),  # 9P without a handshake
], ids=["empty", "http", "random", "short-header", "short-payload", "version", "order", "huge", "bad-cert",
        "short-hello", "plain-9p"])
def test_garbage_refused_server_keeps_serving(garbage: bytes, world: World, servers: dict[str, Serve]) -> None:
    address = servers["left"].address
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port))) as s:
        if garbage:
            s.sendall(garbage)
        s.shutdown(socket.SHUT_WR)
        status, _reason = recv_result(s)
    assert status in (auth.REFUSED, -1)  # refused, or hung up on: never admitted
    assert servers["left"].alive()
    assert run(read_hello(address, world.dirs["right"]))[1] == b"hello from the export\n"


def test_silent_peer_times_out(world: World) -> None:
    srv = GatedServer(idm.load_host_identity(world.dirs["left"]), world.export, timeout=0.3)
    try:
        host, port = srv.address.rsplit(":", 1)
        with socket.create_connection((host, int(port))) as s:
            start = time.monotonic()
            status, reason = recv_result(s)
            assert status == auth.REFUSED and reason == b"handshake timed out"
            assert time.monotonic() - start < 5
        assert run(read_hello(srv.address, world.dirs["right"]))[0] == "left"
        states = [e.get("state") for e in srv.events if e["event"] == "auth"]
        assert states == ["refused", "admitted"]
    finally:
        srv.close()


def test_socket_handed_to_another_process(world: World, servers: dict[str, Serve]) -> None:
    """What the kernel gets with trans=fd: a descriptor on which the next byte is 9P. A child
    process (standing in for mount) speaks Tversion/Tattach on the inherited descriptor."""
    sock, _peer = connect_authenticated(servers["left"].address, world.dirs["right"])
    fd = sock.fileno()
    child = f"""
import os, sys
sys.path.insert(0, {str(REPO)!r})
from agent.ninep import creds, proto
fd = {fd}
def rpc(frame):
    os.write(fd, frame)
    head = os.read(fd, 7)
    size, mtype, tag = proto.HEADER.unpack(head)
    body = b""
    while len(body) < size - 7:
        body += os.read(fd, size - 7 - len(body))
    return mtype, body
mtype, body = rpc(proto.encode(proto.TVERSION, proto.NOTAG, msize=65536, version=proto.VERSION))
assert mtype == proto.RVERSION, mtype
mtype, body = rpc(proto.encode(proto.TATTACH, 1, fid=1, afid=proto.NOFID, uname="root", aname="", n_uname=0))
print(proto.NAMES[mtype])
"""
    try:
        out = subprocess.run([sys.executable, "-c", child], pass_fds=(fd,), capture_output=True, text=True,
                             timeout=30)
    finally:
        sock.close()
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "RATTACH"


def test_kernel_mount_argv() -> None:
    # The mount itself needs the 9p module, which this machine's kernel lacks: only the argv.
    assert kernel_mount_argv(5, "left", msize=262144) == [
        "mount", "-t", "9p", "-o", "trans=fd,rfdno=5,wfdno=5,version=9p2000.L,msize=262144,access=user,nosuid,nodev",
        "none", "/n/left"]
    argv = kernel_mount_argv(7, "right", aname="fs/home", mountpoint="/mnt/x")
    assert argv[4].endswith(",aname=fs/home") and argv[-1] == "/mnt/x"
    for bad in ({"fd": -1, "host": "left"}, {"fd": 3, "host": "../etc"}, {"fd": 3, "host": "left", "msize": 10}):
        with pytest.raises(ValueError):
            kernel_mount_argv(**bad)  # type: ignore[arg-type]


def fuse_missing() -> str | None:
    try:
        import pyfuse3  # noqa: F401
    except ImportError:
        return "pyfuse3 is not installed"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    return None


@pytest.mark.skipif(fuse_missing() is not None, reason=str(fuse_missing()))
def test_fuse_mount_authenticated(world: World, servers: dict[str, Serve], tmp_path: Path) -> None:
    mnt = tmp_path / "n-left"
    mnt.mkdir()
    base = [sys.executable, "-m", "builder.cli", "agent", "mount", servers["left"].address, str(mnt)]
    # A stranger mounts nothing.
    stranger = subprocess.Popen([*base, "--identity", str(world.dirs["stranger"])], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _out, err = stranger.communicate(timeout=30)
    finally:
        if stranger.poll() is None:  # it mounted after all: take it down before failing
            subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
            stranger.kill()
            stranger.wait()
    assert stranger.returncode == 1 and "not from this cluster" in err and not os.path.ismount(mnt)
    proc = subprocess.Popen([*base, "--identity", str(world.dirs["right"])], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ev = parse_line(proc.stdout.readline())
        assert ev is not None and ev["event"] == "mounted", proc.stderr.read() if proc.stderr else ""
        deadline = time.monotonic() + 10
        while not os.path.ismount(mnt):
            assert time.monotonic() < deadline, "mount point never appeared"
            time.sleep(0.05)
        assert (mnt / "fs" / "data" / "hello").read_bytes() == b"hello from the export\n"
        assert json.loads((mnt / "status").read_text())["host"] == "left"
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True)
    assert proc.returncode == 0
