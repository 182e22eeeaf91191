"""A 9P2000.L client: every message of the protocol, many requests in flight.

ClientBase holds the protocol (tags, fids, one method per message, replies matched to
requests by tag) and leaves moving bytes to a transport: Client runs on asyncio (tests,
bench, CLI), TrioClient on trio (the FUSE client, since pyfuse3 runs on trio). Rlerror comes
back as NinePError, an OSError with the server's errno.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from agent.ninep import proto
from agent.ninep.proto import HEADER, HEADER_SIZE, NOFID, NOTAG, ProtocolError, Qid, decode_body, encode_body

_U32 = struct.Struct("<I")
_TREAD = struct.Struct("<IBHIQI")
_TWRITE = struct.Struct("<IBHIQI")


class NinePError(OSError):
    """An Rlerror: ``errno`` is the server's Linux errno."""

    def __init__(self, code: int, what: str = "") -> None:
        super().__init__(code, os.strerror(code) + (f" ({what})" if what else ""))


class ConnectionClosed(ConnectionError):
    pass


class ClientBase:
    def __init__(self) -> None:
        self.msize = proto.MAX_MSIZE
        self.version_string = ""
        self._free_tags = list(range(NOTAG - 1, -1, -1))
        self._next_fid = 1
        self._free_fids: list[int] = []
        self.closed = False
        self._buf = bytearray()
        self.stray: list[tuple[int, int]] = []  # (type, tag) of replies nobody waited for

    # -- to be provided by a transport -----------------------------------------------------
    async def _rpc(self, frame: bytes, tag: int, tail: bytes = b"") -> tuple[int, memoryview]:
        """Send ``frame`` (then ``tail``, the bulk of a Twrite, so it is never copied into
        the frame) and wait for the reply with ``tag``."""
        raise NotImplementedError

    async def send_raw(self, data: bytes) -> None:
        raise NotImplementedError

    # -- framing (shared) ------------------------------------------------------------------
    def _feed(self, data: bytes, deliver: Callable[[int, int, memoryview], None]) -> None:
        buf = self._buf
        buf += data
        pos = 0
        while len(buf) - pos >= HEADER_SIZE:
            size, mtype, tag = HEADER.unpack_from(buf, pos)
            if size < HEADER_SIZE:
                raise ProtocolError(f"reply frame of {size} bytes")
            if len(buf) - pos < size:
                break
            skip = HEADER_SIZE + 4 if mtype == proto.RREAD and size >= HEADER_SIZE + 4 else HEADER_SIZE
            with memoryview(buf) as view:
                body = memoryview(view[pos + skip:pos + size].tobytes())
            pos += size
            deliver(tag, mtype, body)
        del buf[:pos]

    def alloc_tag(self) -> int:
        if not self._free_tags:
            raise NinePError(errno.EAGAIN, "all tags in use")
        return self._free_tags.pop()

    def free_tag(self, tag: int) -> None:
        self._free_tags.append(tag)

    def alloc_fid(self) -> int:
        if self._free_fids:
            return self._free_fids.pop()
        fid = self._next_fid
        self._next_fid += 1
        return fid

    def free_fid(self, fid: int) -> None:
        self._free_fids.append(fid)

    async def request(self, mtype: int, body: bytes) -> memoryview:
        """Send one request, wait for its reply body; Rlerror raises NinePError."""
        tag = self.alloc_tag() if mtype != proto.TVERSION else NOTAG
        frame = HEADER.pack(HEADER_SIZE + len(body), mtype, tag) + body
        rtype, rbody = await self._rpc(frame, tag)
        if rtype == proto.RLERROR:
            raise NinePError(_U32.unpack_from(rbody)[0], proto.NAMES.get(mtype, str(mtype)))
        if rtype != mtype + 1:
            raise ProtocolError(f"{proto.NAMES.get(mtype)} answered by type {rtype}")
        return rbody

    async def call(self, mtype: int, **fields: Any) -> dict[str, Any]:
        rbody = await self.request(mtype, encode_body(mtype, fields))
        return decode_body(mtype + 1, rbody)

    # -- messages --------------------------------------------------------------------------
    async def version(self, msize: int = proto.MAX_MSIZE, version: str = proto.VERSION) -> tuple[int, str]:
        r = await self.call(proto.TVERSION, msize=msize, version=version)
        self.msize, self.version_string = r["msize"], r["version"]
        return r["msize"], r["version"]

    async def auth(self, afid: int, uname: str = "", aname: str = "", n_uname: int = NOFID) -> Qid:
        return (await self.call(proto.TAUTH, afid=afid, uname=uname, aname=aname, n_uname=n_uname))["aqid"]

    async def attach(self, fid: int, aname: str = "", uname: str = "root", n_uname: int = 0,
                     afid: int = NOFID) -> Qid:
        return (await self.call(proto.TATTACH, fid=fid, afid=afid, uname=uname, aname=aname,
                                n_uname=n_uname))["qid"]

    async def flush(self, oldtag: int) -> None:
        await self.call(proto.TFLUSH, oldtag=oldtag)

    async def walk(self, fid: int, newfid: int, names: list[str] | tuple[str, ...] = ()) -> list[Qid]:
        return (await self.call(proto.TWALK, fid=fid, newfid=newfid, wnames=list(names)))["wqids"]

    async def getattr(self, fid: int, mask: int = proto.GETATTR_ALL) -> dict[str, Any]:
        return await self.call(proto.TGETATTR, fid=fid, request_mask=mask)

    async def setattr(self, fid: int, valid: int, mode: int = 0, uid: int = 0, gid: int = 0, size: int = 0,
                      atime: tuple[int, int] = (0, 0), mtime: tuple[int, int] = (0, 0)) -> None:
        await self.call(proto.TSETATTR, fid=fid, valid=valid, mode=mode, uid=uid, gid=gid, size=size,
                        atime_sec=atime[0], atime_nsec=atime[1], mtime_sec=mtime[0], mtime_nsec=mtime[1])

    async def statfs(self, fid: int) -> dict[str, Any]:
        return await self.call(proto.TSTATFS, fid=fid)

    async def lopen(self, fid: int, flags: int) -> tuple[Qid, int]:
        r = await self.call(proto.TLOPEN, fid=fid, flags=flags)
        return r["qid"], r["iounit"]

    async def lcreate(self, fid: int, name: str, flags: int, mode: int = 0o644, gid: int = 0) -> tuple[Qid, int]:
        r = await self.call(proto.TLCREATE, fid=fid, name=name, flags=flags, mode=mode, gid=gid)
        return r["qid"], r["iounit"]

    async def read(self, fid: int, offset: int, count: int) -> bytes:
        tag = self.alloc_tag()
        frame = _TREAD.pack(HEADER_SIZE + 16, proto.TREAD, tag, fid, offset, count)
        rtype, rbody = await self._rpc(frame, tag)
        if rtype == proto.RREAD:
            # The transport hands over an Rread's data without its count (the frame size
            # says it), in a bytes object of its own: returned as is, no further copy.
            data = rbody.obj
            return data if isinstance(data, bytes) and len(data) == len(rbody) else bytes(rbody)
        if rtype == proto.RLERROR:
            raise NinePError(_U32.unpack_from(rbody)[0], "Tread")
        raise ProtocolError(f"Tread answered by type {rtype}")

    async def write(self, fid: int, offset: int, data: bytes) -> int:
        tag = self.alloc_tag()
        head = _TWRITE.pack(HEADER_SIZE + 16 + len(data), proto.TWRITE, tag, fid, offset, len(data))
        if len(data) <= 65536:
            rtype, rbody = await self._rpc(head + data, tag)
        else:
            rtype, rbody = await self._rpc(head, tag, data)
        if rtype == proto.RWRITE:
            return int(_U32.unpack_from(rbody)[0])
        if rtype == proto.RLERROR:
            raise NinePError(_U32.unpack_from(rbody)[0], "Twrite")
        raise ProtocolError(f"Twrite answered by type {rtype}")

    async def clunk(self, fid: int) -> None:
        await self.call(proto.TCLUNK, fid=fid)

    async def remove(self, fid: int) -> None:
        await self.call(proto.TREMOVE, fid=fid)

    async def readdir(self, fid: int, offset: int = 0, count: int | None = None) -> list[proto.Dirent]:
        r = await self.call(proto.TREADDIR, fid=fid, offset=offset, count=count or self.msize - proto.IOHDRSZ)
        return proto.unpack_dirents(r["data"])

    async def readdir_all(self, fid: int) -> list[proto.Dirent]:
        out: list[proto.Dirent] = []
        offset = 0
        while True:
            batch = await self.readdir(fid, offset)
            if not batch:
                return out
            out.extend(batch)
            offset = batch[-1].offset

    async def mkdir(self, dfid: int, name: str, mode: int = 0o755, gid: int = 0) -> Qid:
        return (await self.call(proto.TMKDIR, dfid=dfid, name=name, mode=mode, gid=gid))["qid"]

    async def symlink(self, fid: int, name: str, target: str, gid: int = 0) -> Qid:
        return (await self.call(proto.TSYMLINK, fid=fid, name=name, symtgt=target, gid=gid))["qid"]

    async def mknod(self, dfid: int, name: str, mode: int, major: int = 0, minor: int = 0, gid: int = 0) -> Qid:
        return (await self.call(proto.TMKNOD, dfid=dfid, name=name, mode=mode, major=major, minor=minor,
                                gid=gid))["qid"]

    async def readlink(self, fid: int) -> str:
        return (await self.call(proto.TREADLINK, fid=fid))["target"]

    async def link(self, dfid: int, fid: int, name: str) -> None:
        await self.call(proto.TLINK, dfid=dfid, fid=fid, name=name)

    async def rename(self, fid: int, dfid: int, name: str) -> None:
        await self.call(proto.TRENAME, fid=fid, dfid=dfid, name=name)

    async def renameat(self, olddirfid: int, oldname: str, newdirfid: int, newname: str) -> None:
        await self.call(proto.TRENAMEAT, olddirfid=olddirfid, oldname=oldname, newdirfid=newdirfid,
                        newname=newname)

    async def unlinkat(self, dirfid: int, name: str, flags: int = 0) -> None:
        await self.call(proto.TUNLINKAT, dirfd=dirfid, name=name, flags=flags)

    async def fsync(self, fid: int, datasync: int = 0) -> None:
        await self.request(proto.TFSYNC, struct.pack("<II", fid, datasync))

    async def lock(self, fid: int, ltype: int, start: int = 0, length: int = 0, flags: int = 0,
                   proc_id: int = 1, client_id: str = "client") -> int:
        return (await self.call(proto.TLOCK, fid=fid, type=ltype, flags=flags, start=start, length=length,
                                proc_id=proc_id, client_id=client_id))["status"]

    async def getlock(self, fid: int, ltype: int, start: int = 0, length: int = 0, proc_id: int = 1,
                      client_id: str = "client") -> dict[str, Any]:
        return await self.call(proto.TGETLOCK, fid=fid, type=ltype, start=start, length=length,
                               proc_id=proc_id, client_id=client_id)

    async def xattrwalk(self, fid: int, newfid: int, name: str = "") -> int:
        return (await self.call(proto.TXATTRWALK, fid=fid, newfid=newfid, name=name))["size"]

    async def xattrcreate(self, fid: int, name: str, size: int, flags: int = 0) -> None:
        await self.call(proto.TXATTRCREATE, fid=fid, name=name, attr_size=size, flags=flags)

    # -- conveniences --------------------------------------------------------------------
    @property
    def iosize(self) -> int:
        return self.msize - proto.IOHDRSZ

    async def read_all(self, fid: int, offset: int = 0) -> bytes:
        parts = []
        while True:
            chunk = await self.read(fid, offset, self.iosize)
            if not chunk:
                return b"".join(parts)
            parts.append(chunk)
            offset += len(chunk)

    async def write_all(self, fid: int, data: bytes, offset: int = 0) -> None:
        view = memoryview(data)
        while view:
            n = await self.write(fid, offset, bytes(view[:self.iosize]))
            if n <= 0:
                raise NinePError(errno.EIO, "short write")
            offset += n
            view = view[n:]


class _Stream(asyncio.BufferedProtocol):
    """Receives straight into one reusable buffer; each reply body is copied out once."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.buf = bytearray(1 << 16)
        self.filled = 0

    def get_buffer(self, sizehint: int) -> memoryview:
        if len(self.buf) - self.filled < 4096:
            self._grow(len(self.buf) * 2)
        return memoryview(self.buf)[self.filled:]

    def _grow(self, size: int) -> None:
        if size > len(self.buf):
            new = bytearray(size)
            new[:self.filled] = self.buf[:self.filled]
            self.buf = new

    def buffer_updated(self, nbytes: int) -> None:
        self.filled += nbytes
        buf, end, pos = self.buf, self.filled, 0
        deliver = self.client._deliver
        with memoryview(buf) as view:
            while end - pos >= HEADER_SIZE:
                size, mtype, tag = HEADER.unpack_from(buf, pos)
                if size < HEADER_SIZE:
                    if self.client.transport is not None:
                        self.client.transport.abort()
                    return
                if end - pos < size:
                    break
                # An Rread body is delivered as its data alone (see ClientBase.read).
                skip = HEADER_SIZE + 4 if mtype == proto.RREAD and size >= HEADER_SIZE + 4 else HEADER_SIZE
                deliver(tag, mtype, memoryview(view[pos + skip:pos + size].tobytes()))
                pos += size
        if pos:
            rest = end - pos
            if rest:
                buf[:rest] = buf[pos:end]
            self.filled = rest
        if self.filled >= 4:
            (size,) = _U32.unpack_from(self.buf, 0)
            if size > len(self.buf):
                self._grow(size)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._lost()


class Client(ClientBase):
    """The asyncio transport. ``await Client.connect("127.0.0.1:5640")`` (or ``unix:PATH``)."""

    def __init__(self) -> None:
        super().__init__()
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, asyncio.Future[tuple[int, memoryview]]] = {}
        self.lost = asyncio.get_running_loop().create_future()
        self._out: list[bytes] = []

    @classmethod
    async def connect(cls, address: str, msize: int = proto.MAX_MSIZE, version: bool = True) -> Client:
        loop = asyncio.get_running_loop()
        client = cls()
        if address.startswith("unix:"):
            transport, _p = await loop.create_unix_connection(lambda: _Stream(client), address[5:])
        else:
            host, _, port = address.rpartition(":")
            transport, _p = await loop.create_connection(lambda: _Stream(client), host.strip("[]"), int(port))
        client.transport = transport
        if version:
            await client.version(msize)
        return client

    def _lost(self) -> None:
        self.closed = True
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(ConnectionClosed("9P connection closed"))
        self.pending.clear()
        if not self.lost.done():
            self.lost.set_result(None)

    def _deliver(self, tag: int, mtype: int, body: memoryview) -> None:
        fut = self.pending.pop(tag, None)
        if fut is None:
            if len(self.stray) < 1024:
                self.stray.append((mtype, tag))
            return
        if not fut.done():
            fut.set_result((mtype, body))

    def _write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            raise ConnectionClosed("9P connection closed")
        # Requests made in the same loop turn leave in one write (one syscall), like the
        # server's replies; big frames go at once.
        if len(data) > 65536:
            self._flush_out()
            self.transport.write(data)
            return
        self._out.append(data)
        if len(self._out) == 1:
            asyncio.get_running_loop().call_soon(self._flush_out)

    def _flush_out(self) -> None:
        out, self._out = self._out, []
        if out and self.transport is not None and not self.closed:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    async def _rpc(self, frame: bytes, tag: int, tail: bytes = b"") -> tuple[int, memoryview]:
        if self.closed:
            if tag != NOTAG:
                self.free_tag(tag)
            raise ConnectionClosed("9P connection closed")
        fut: asyncio.Future[tuple[int, memoryview]] = asyncio.get_running_loop().create_future()
        self.pending[tag] = fut
        if tail:
            self._flush_out()
            assert self.transport is not None
            self.transport.write(frame)
            self.transport.write(tail)
        else:
            self._write(frame)
        try:
            return await fut
        except asyncio.CancelledError:
            # Abandoned (a timeout): the tag stays reserved until the server has answered
            # a Tflush for it, so a late reply can never be taken for another request's.
            if not self.closed and tag != NOTAG:
                self.pending.pop(tag, None)
                asyncio.get_running_loop().create_task(self._flush_then_free(tag))
            raise
        finally:
            if tag != NOTAG and fut.done() and not fut.cancelled():
                self.free_tag(tag)

    async def _flush_then_free(self, tag: int) -> None:
        try:
            await self.flush(tag)
        except (OSError, ProtocolError):
            return
        self.free_tag(tag)

    def start(self, frame: bytes, tag: int) -> Awaitable[tuple[int, memoryview]]:
        """Send a prepared frame and return its pending reply (tests pipeline with this)."""
        fut: asyncio.Future[tuple[int, memoryview]] = asyncio.get_running_loop().create_future()
        self.pending[tag] = fut
        self._write(frame)
        return fut

    async def send_raw(self, data: bytes) -> None:
        self._flush_out()
        if self.closed or self.transport is None:
            raise ConnectionClosed("9P connection closed")
        self.transport.write(data)
        await asyncio.sleep(0)
        if self.closed:
            raise ConnectionClosed("9P connection closed")

    async def close(self) -> None:
        if self.transport is not None:
            self._flush_out()
            self.transport.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.lost), 2)


class TrioClient(ClientBase):
    """The trio transport, for the FUSE client. Create with ``await TrioClient.connect(addr, nursery)``."""

    def __init__(self, stream: Any) -> None:
        super().__init__()
        self.stream = stream
        self.pending: dict[int, Any] = {}
        self.results: dict[int, tuple[int, memoryview] | BaseException] = {}
        self.abandoned: set[int] = set()
        self.on_close: Callable[[], None] | None = None
        import trio

        self._send_lock = trio.Lock()

    @classmethod
    async def connect(cls, address: str, nursery: Any, msize: int = proto.MAX_MSIZE) -> TrioClient:
        import trio

        if address.startswith("unix:"):
            stream = await trio.open_unix_socket(address[5:])
        else:
            host, _, port = address.rpartition(":")
            stream = await trio.open_tcp_stream(host.strip("[]"), int(port))
        client = cls(stream)
        nursery.start_soon(client._read_loop)
        await client.version(msize)
        return client

    async def _read_loop(self) -> None:
        import trio

        try:
            while True:
                data = await self.stream.receive_some(1 << 20)
                if not data:
                    break
                self._feed(data, self._deliver)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ProtocolError, OSError):
            pass
        finally:
            self.closed = True
            for tag, event in list(self.pending.items()):
                self.results[tag] = ConnectionClosed("9P connection closed")
                event.set()
            self.pending.clear()
            if self.on_close is not None:
                self.on_close()

    def _deliver(self, tag: int, mtype: int, body: memoryview) -> None:
        event = self.pending.pop(tag, None)
        if tag in self.abandoned:
            self.abandoned.discard(tag)
            self.free_tag(tag)
            return
        if event is None:
            if len(self.stray) < 1024:
                self.stray.append((mtype, tag))
            return
        self.results[tag] = (mtype, body)
        event.set()

    async def _rpc(self, frame: bytes, tag: int, tail: bytes = b"") -> tuple[int, memoryview]:
        import trio

        if self.closed:
            raise ConnectionClosed("9P connection closed")
        event = trio.Event()
        self.pending[tag] = event
        async with self._send_lock:
            await self.stream.send_all(frame)
            if tail:
                await self.stream.send_all(tail)
        try:
            await event.wait()
        except trio.Cancelled:
            # Interrupted (the FUSE request was): keep the tag until its reply arrives.
            self.abandoned.add(tag)
            raise
        result = self.results.pop(tag)
        if tag != NOTAG:
            self.free_tag(tag)
        if isinstance(result, BaseException):
            raise result
        return result

    async def send_raw(self, data: bytes) -> None:
        async with self._send_lock:
            await self.stream.send_all(data)

    async def close(self) -> None:
        await self.stream.aclose()

