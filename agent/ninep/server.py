"""The asyncio 9P2000.L server: connections, framing and flow control.

One Connection per client. Frames are parsed as they arrive and most requests are answered
at once, in arrival order, without a task; requests that wait (a read of the events stream,
fsync) run as tasks, so many requests can be in flight per connection and Tflush can cancel
them. Memory per connection is bounded: a frame may not exceed the negotiated msize (the
connection is dropped otherwise, since the stream can no longer be trusted), handling and
reading pause while replies queue in user space, waiting requests and fids are capped.
The request handlers themselves are in handlers.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import socket
import struct
from collections.abc import Callable, Coroutine
from typing import Any, cast

from agent import control
from agent.ninep import creds, proto
from agent.ninep.handlers import MAX_FIDS, MAX_WAITING, Fid, Handlers, Namespace, lerror
from agent.ninep.localfs import LocalNode
from agent.ninep.node import Node, fail
from agent.ninep.proto import HEADER, HEADER_SIZE, ProtocolError

log = logging.getLogger("agent.ninep")

__all__ = ["MAX_FIDS", "MAX_WAITING", "Connection", "Fid", "Namespace", "Server", "split_address"]

RECV_START = 65536
BATCH_FRAME_MAX = 4096  # small replies only: file data is never copied into a batch
SEND_BUFFER = 4 << 20
WRITE_HIGH = 256 * 1024  # replies queued in user space before we stop handling requests

_U32 = struct.Struct("<I")
# Requests whose body does not start with a fid.
_NO_FID = frozenset((proto.TVERSION, proto.TAUTH, proto.TATTACH, proto.TFLUSH))


class Server:
    """Serves one namespace to any number of connections."""

    def __init__(self, namespace: Namespace, *, max_msize: int = proto.MAX_MSIZE,
                 authenticate: Callable[[str, str, int], None] | None = None,
                 on_event: Callable[..., Any] | None = None,
                 gate: Callable[[Callable[[], Connection], Callable[..., None]], asyncio.BaseProtocol]
                 | None = None, people: creds.People | None = None) -> None:
        if not proto.MIN_MSIZE <= max_msize <= proto.MAX_MSIZE:
            raise ValueError(f"max msize must be {proto.MIN_MSIZE}..{proto.MAX_MSIZE}")
        self.namespace = namespace
        self.max_msize = max_msize
        self.authenticate = authenticate
        self.on_event = on_event
        # Wraps each new connection (agent.auth: the handshake runs before the 9P loop).
        self.gate = gate
        # With people, each request on an exported file runs as the person who attached
        # (agent.ninep.creds); without, as the server itself.
        if people is not None and not creds.can_switch():
            raise ValueError("acting as each person needs root (CAP_SETUID, CAP_SETGID)")
        self.people = people
        self.connections: set[Connection] = set()
        raise_fd_limit()

    def changed(self, op: str, node: Node, name: str = "") -> None:
        """Tell the change stream about a change made through 9P (never fails a request)."""
        if self.on_event is None:
            return
        where = node.where()
        self.event("fs", op=op, path=f"{where}/{name}" if name else where)

    def event(self, event: str, **fields: Any) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(event, **fields)
        except Exception:
            log.exception("event hook failed")

    def protocol(self) -> asyncio.BaseProtocol:
        if self.gate is not None:
            return self.gate(lambda: Connection(self), self.event)
        return Connection(self)

    async def listen(self, address: str) -> asyncio.base_events.Server:
        """Listen on ``HOST:PORT``, ``[V6]:PORT`` or ``unix:PATH``."""
        loop = asyncio.get_running_loop()
        if address.startswith("unix:"):
            return await loop.create_unix_server(self.protocol, address[5:])
        host, port = split_address(address)
        return await loop.create_server(self.protocol, host, port, reuse_address=True)


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"address {address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def raise_fd_limit() -> None:
    # Every walked fid holds a descriptor; take all the descriptors the system allows us.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Connection(Handlers, asyncio.BufferedProtocol):
    def __init__(self, server: Server) -> None:
        self.server = server
        self.msize = server.max_msize
        self.versioned = False
        self.fids: dict[int, Fid] = {}
        self.waiting: dict[int, asyncio.Task[None]] = {}
        # Frames are received straight into this buffer and handled in place (a Twrite's data
        # goes from here to pwrite without a copy); it grows to the largest frame seen.
        self.rbuf = bytearray(RECV_START)
        self.filled = 0
        self.spare_bufs: list[bytearray] = []  # read reply buffers free for reuse
        self.sent_bufs: list[bytearray] = []  # handed to the transport, not yet known sent
        self.batch: list[bytes | bytearray] | None = None  # replies waiting for one write
        self.transport: asyncio.Transport | None = None
        self.paused_write = False
        self.paused_read = False
        self.closed = False
        self.peer = "?"
        self.admitted: str | None = None  # the host the handshake admitted (agent.auth)
        h: dict[int, Callable[[int, memoryview], Any]] = {
            proto.TVERSION: self.t_version, proto.TAUTH: self.t_auth, proto.TATTACH: self.t_attach,
            proto.TFLUSH: self.t_flush, proto.TWALK: self.t_walk, proto.TREAD: self.t_read,
            proto.TWRITE: self.t_write, proto.TCLUNK: self.t_clunk, proto.TREMOVE: self.t_remove,
            proto.TSTATFS: self.t_statfs, proto.TLOPEN: self.t_lopen, proto.TLCREATE: self.t_lcreate,
            proto.TSYMLINK: self.t_symlink, proto.TMKNOD: self.t_mknod, proto.TRENAME: self.t_rename,
            proto.TREADLINK: self.t_readlink, proto.TGETATTR: self.t_getattr, proto.TSETATTR: self.t_setattr,
            proto.TXATTRWALK: self.t_xattrwalk, proto.TXATTRCREATE: self.t_xattrcreate,
            proto.TREADDIR: self.t_readdir, proto.TFSYNC: self.t_fsync, proto.TLOCK: self.t_lock,
            proto.TGETLOCK: self.t_getlock, proto.TLINK: self.t_link, proto.TMKDIR: self.t_mkdir,
            proto.TRENAMEAT: self.t_renameat, proto.TUNLINKAT: self.t_unlinkat,
        }
        self.handlers = h

    # -- transport -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio subclasses
        peer = transport.get_extra_info("peername")
        self.peer = str(peer)
        self.server.connections.add(self)
        self.server.event("client", state="connected", peer=self.peer)
        # Stop handling requests while replies queue up in user space (the socket is full):
        # they wait in the receive buffer instead, and reading pauses.
        transport.set_write_buffer_limits(high=WRITE_HIGH, low=0)
        sock = transport.get_extra_info("socket")
        if SEND_BUFFER and sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # A send buffer that holds a few whole replies: TCP's autotuning starts at 16 KiB,
            # and every reply that does not fit costs a loop turn per piece.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        self.reset()
        self.server.event("client", state="disconnected", peer=self.peer)

    def pause_writing(self) -> None:
        self.paused_write = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.paused_write = False
        self._update_reading()
        if self.filled >= HEADER_SIZE and not self.closed:
            self.process()  # requests that arrived while the socket was full

    def _update_reading(self) -> None:
        if self.transport is None or self.closed:
            return
        want_pause = self.paused_write
        if want_pause and not self.paused_read:
            self.transport.pause_reading()
            self.paused_read = True
        elif not want_pause and self.paused_read:
            self.paused_read = False
            self.transport.resume_reading()

    def drop(self, why: str) -> None:
        log.warning("9P connection %s dropped: %s", self.peer, why)
        if self.transport is not None:
            self.transport.abort()
        self.closed = True

    def reset(self) -> None:
        for task in self.waiting.values():
            task.cancel()
        self.waiting.clear()
        for f in self.fids.values():
            if f.handle is not None:
                f.handle.close()
        self.fids.clear()

    def send(self, data: bytes | bytearray | memoryview) -> None:
        if self.closed or self.transport is None:
            return
        if self.batch is not None and len(data) <= BATCH_FRAME_MAX:
            # Replies to requests that arrived together leave in one write (one syscall):
            # copied, since a memoryview here may point into a buffer that is reused.
            self.batch.append(bytes(data) if isinstance(data, memoryview) else data)
            return
        self.flush_batch()
        self.transport.write(data)

    def flush_batch(self) -> None:
        batch = self.batch
        if batch:
            self.batch = []
            if self.transport is not None and not self.closed:
                self.transport.write(batch[0] if len(batch) == 1 else b"".join(batch))

    def get_buffer(self, sizehint: int) -> memoryview:
        if len(self.rbuf) - self.filled < 4096:
            self._grow(len(self.rbuf) * 2)
        return memoryview(self.rbuf)[self.filled:]

    def _grow(self, size: int) -> None:
        size = min(max(size, RECV_START), self.msize + RECV_START)
        if size > len(self.rbuf):
            new = bytearray(size)
            new[:self.filled] = self.rbuf[:self.filled]
            self.rbuf = new

    def buffer_updated(self, nbytes: int) -> None:
        self.filled += nbytes
        self.process()

    def process(self) -> None:
        """Handle the whole frames received so far, in order; stop early while the socket is
        full (the rest wait here, and reading pauses, so replies do not pile up)."""
        buf = self.rbuf
        end = self.filled
        pos = 0
        self.batch = []
        try:
            with memoryview(buf) as view:
                while end - pos >= 4 and not self.closed:
                    (size,) = _U32.unpack_from(buf, pos)
                    if size < HEADER_SIZE or size > self.msize:
                        self.batch = None
                        self.drop(f"frame of {size} bytes (msize {self.msize})")
                        return
                    if end - pos < size or self.paused_write:
                        break
                    # Handlers use the frame only until they return (async ones copy what they keep).
                    self.dispatch(view[pos:pos + size])
                    pos += size
        finally:
            self.flush_batch()
            self.batch = None
        if pos:
            rest = end - pos
            if rest:
                buf[:rest] = buf[pos:end]
            self.filled = rest
        if self.filled >= 4:
            (size,) = _U32.unpack_from(self.rbuf, 0)
            if HEADER_SIZE <= size <= self.msize and size > len(self.rbuf):
                self._grow(size)

    def dispatch(self, frame: memoryview) -> None:
        _size, mtype, tag = HEADER.unpack_from(frame)
        body = frame[HEADER_SIZE:]
        handler = self.handlers.get(mtype)
        try:
            if handler is None:
                raise fail(errno.EOPNOTSUPP, f"message type {mtype}")
            if not self.versioned and mtype != proto.TVERSION:
                raise fail(errno.EPROTO, "no Tversion yet")
            if mtype == proto.TWRITE:
                out = self._as_requester(handler, tag, body)
            elif self.server.people is not None and mtype not in _NO_FID:
                out = self._as_person(handler, tag, body)
            else:
                out = handler(tag, body)
        except OSError as exc:
            out = lerror(tag, exc.errno or errno.EIO)
        except (ProtocolError, struct.error, UnicodeError) as exc:
            log.debug("bad %s frame: %s", proto.NAMES.get(mtype, mtype), exc)
            out = lerror(tag, errno.EPROTO)
        except Exception:
            log.exception("9P %s failed", proto.NAMES.get(mtype, mtype))
            out = lerror(tag, errno.EIO)
        if out is None:
            return
        if isinstance(out, bytes | bytearray):
            self.send(out)
            return
        task = asyncio.get_running_loop().create_task(self._finish(tag, mtype, out))
        old = self.waiting.get(tag)
        if old is not None:
            old.cancel()
        self.waiting[tag] = task
        self._update_reading()

    def _as_requester(self, handler: Callable[[int, memoryview], Any], tag: int, body: memoryview) -> Any:
        """A write, with who sent it known to what runs it (a ctl command: agent.control)."""
        f = self.fids.get(_U32.unpack_from(body)[0]) if len(body) >= 4 else None
        token = control.current.set(control.Requester(self.admitted, f.uid if f is not None else -1))
        try:
            if self.server.people is not None:
                return self._as_person(handler, tag, body)
            return handler(tag, body)
        finally:
            control.current.reset(token)

    def _as_person(self, handler: Callable[[int, memoryview], Any], tag: int, body: memoryview) -> Any:
        """Run a request on an exported file as the person its fid was attached for; the
        kernel checks permissions. Back to the server's own credentials before anything else
        on this thread runs."""
        f = self.fids.get(_U32.unpack_from(body)[0]) if len(body) >= 4 else None
        node = f.node if f is not None else None
        if not isinstance(node, LocalNode):
            return handler(tag, body)  # synthetic files are the server's own
        assert self.server.people is not None and f is not None
        creds.switch(self.server.people.creds(f.uid, node.export.name))
        try:
            return handler(tag, body)
        finally:
            creds.switch(None)

    async def _finish(self, tag: int, mtype: int, coro: Coroutine[Any, Any, bytes]) -> None:
        try:
            out = await coro
        except asyncio.CancelledError:
            return  # flushed, or the connection is gone: no reply
        except OSError as exc:
            out = lerror(tag, exc.errno or errno.EIO)
        except Exception:
            log.exception("9P %s failed", proto.NAMES.get(mtype, mtype))
            out = lerror(tag, errno.EIO)
        finally:
            if self.waiting.get(tag) is asyncio.current_task():
                del self.waiting[tag]
                self._update_reading()
        self.send(out)
