"""Reaching a peer's agent: an authenticated socket, and what to do with it.

``connect_authenticated`` opens TCP (or a unix socket), runs the handshake of agent.auth and
returns the socket positioned at the first 9P byte. From there it goes to our asyncio client
(``open_client``), the FUSE client (``agent.fuse9p``) or the kernel: ``kernel_mount_argv``
builds the ``mount -t 9p -o trans=fd`` command that hands the descriptor to v9fs.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from agent.auth import TIMEOUT, HandshakeError, Peer, client_handshake
from agent.identity import HostIdentity, check_host_name, load_host_identity
from agent.ninep import proto
from agent.ninep.client import Client, _Stream
from agent.ninep.server import split_address


def open_socket(address: str, timeout: float = TIMEOUT) -> socket.socket:
    if address.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(address[5:])
        except OSError:
            sock.close()
            raise
    else:
        host, port = split_address(address)
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(None)
    return sock


def connect_authenticated(address: str, identity: Path | HostIdentity, *, expect_host: str | None = None,
                          timeout: float = TIMEOUT) -> tuple[socket.socket, Peer]:
    """A blocking socket to ``address`` whose server proved it belongs to our cluster (and is
    ``expect_host``, if given) and admitted us. HandshakeError (a ConnectionError) otherwise."""
    ident = identity if isinstance(identity, HostIdentity) else load_host_identity(Path(identity))
    sock = open_socket(address, timeout)
    try:
        peer = client_handshake(sock, ident, timeout)
        if expect_host is not None and peer.host != expect_host:
            raise HandshakeError(f"{address} is {peer.host!r}, not {expect_host!r}")
    except BaseException:
        sock.close()
        raise
    return sock, peer


async def open_client(address: str, identity: Path | HostIdentity, *, msize: int = proto.MAX_MSIZE,
                      expect_host: str | None = None) -> tuple[Client, Peer]:
    """Our asyncio 9P client over an authenticated connection, version already agreed."""
    loop = asyncio.get_running_loop()
    sock, peer = await loop.run_in_executor(
        None, lambda: connect_authenticated(address, identity, expect_host=expect_host))
    client = Client()
    try:
        sock.setblocking(False)
        transport, _proto = await loop.create_connection(lambda: _Stream(client), sock=sock)
    except BaseException:
        sock.close()
        raise
    client.transport = transport
    await client.version(msize)
    return client, peer


def kernel_mount_argv(fd: int, host: str, *, msize: int = 1 << 20, aname: str = "",
                      mountpoint: str | None = None) -> list[str]:
    """``mount`` for the kernel's v9fs on an already authenticated descriptor (the agent keeps
    ``fd`` open and inheritable until mount returns). Untested here: this machine's kernel has
    no 9p module; the QEMU kernel test mounts with trans=virtio instead."""
    check_host_name(host)
    if not proto.MIN_MSIZE <= msize <= proto.MAX_MSIZE:
        raise ValueError(f"msize must be {proto.MIN_MSIZE}..{proto.MAX_MSIZE}")
    if fd < 0:
        raise ValueError("a descriptor is not negative")
    # access=user: one attach per local user, naming their uid, so the server acts as each
    # person (agent.ninep.creds) and its permissions apply, not the mounting root's.
    options = [f"trans=fd,rfdno={fd},wfdno={fd}", "version=9p2000.L", f"msize={msize}", "access=user",
               "nosuid", "nodev"]
    if aname:
        if "," in aname:
            raise ValueError("an attach name may not contain ','")
        options.append(f"aname={aname}")
    return ["mount", "-t", "9p", "-o", ",".join(options), "none", mountpoint or f"/n/{host}"]
