"""One method per 9P2000.L request, over a connection's fid table.

Handlers is mixed into the server's Connection, which owns the transport and the framing:
each ``t_*`` method takes a request's tag and body and returns the reply frame, a coroutine
for requests that wait, or None when it sent the reply itself. Errors are OSErrors (their
errno goes back in Rlerror) and ProtocolErrors (EPROTO).
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import os
import struct
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from agent.ninep import proto
from agent.ninep.node import Handle, Node, fail
from agent.ninep.proto import HEADER, HEADER_SIZE, NOFID, NOTAG, ProtocolError, decode_body, encode

if TYPE_CHECKING:
    from agent.ninep.server import Server

MAX_FIDS = 32768
SPARE_BUFFERS = 8
MAX_WAITING = 256  # requests waiting in tasks (events reads, fsyncs) per connection; more get EAGAIN
XATTR_SIZE_MAX = 65536

_U32 = struct.Struct("<I")
_RERR = struct.Struct("<IBHI")
_RD = struct.Struct("<IQI")
_RREAD_HDR = struct.Struct("<IBHI")
_RWRITE = struct.Struct("<IBHI")
_FID = struct.Struct("<I")
_FID2 = struct.Struct("<II")
_WALK = struct.Struct("<IIH")
_GETATTR_REQ = struct.Struct("<IQ")
_RGETATTR = struct.Struct("<IBHQBIQIIIQQQQQQQQQQQQQQQ")
_RLOPEN = struct.Struct("<IBHBIQI")
_QID_R = struct.Struct("<IBHBIQ")
_EMPTY = struct.Struct("<IBH")
_RSTATFS = struct.Struct("<IBHIIQQQQQQI")
_SETATTR = struct.Struct("<IIIIIQQQQQ")


class Namespace(Protocol):
    def attach(self, aname: str, uname: str, n_uname: int) -> Node: ...


class Fid:
    __slots__ = ("dirents", "handle", "isdir", "node", "uid", "xattr_data", "xattr_new")

    def __init__(self, node: Node, uid: int = -1) -> None:
        self.node = node
        self.uid = uid  # the attaching user's n_uname, carried to every fid walked from it
        self.handle: Handle | None = None
        self.isdir = False
        self.xattr_data: bytes | None = None
        self.xattr_new: tuple[str, int, int, bytearray] | None = None
        self.dirents: list[tuple[Any, int, bytes]] | None = None


def _empty(mtype: int, tag: int) -> bytes:
    return _EMPTY.pack(HEADER_SIZE, mtype, tag)


def _qid_reply(mtype: int, tag: int, qid: proto.Qid) -> bytes:
    return _QID_R.pack(HEADER_SIZE + 13, mtype, tag, qid.type, qid.version, qid.path)


def lerror(tag: int, code: int) -> bytes:
    return _RERR.pack(HEADER_SIZE + 4, proto.RLERROR, tag, code)


class Handlers:
    """The request handlers; the attributes below are the Connection's."""

    server: Server
    msize: int
    versioned: bool
    fids: dict[int, Fid]
    waiting: dict[int, asyncio.Task[None]]
    transport: asyncio.Transport | None
    admitted: str | None
    spare_bufs: list[bytearray]
    sent_bufs: list[bytearray]

    def send(self, data: bytes | bytearray | memoryview) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError

    # -- helpers -------------------------------------------------------------------------
    def fid(self, n: int) -> Fid:
        f = self.fids.get(n)
        if f is None:
            raise fail(errno.EBADF, f"fid {n}")
        return f

    def new_fid(self, n: int) -> None:
        if n == NOFID:
            raise fail(errno.EBADF)
        if n in self.fids:
            raise fail(errno.EBADF, f"fid {n} in use")
        if len(self.fids) >= MAX_FIDS:
            raise fail(errno.EMFILE)

    def may_wait(self) -> None:
        """Requests that wait (stream reads, fsync) are capped per connection so memory stays
        bounded; past the cap they get EAGAIN (Tflush is never refused)."""
        if len(self.waiting) >= MAX_WAITING:
            raise fail(errno.EAGAIN, "too many requests waiting")

    def io_limit(self, count: int) -> int:
        return min(count, self.msize - proto.READ_HDR)

    # -- session -------------------------------------------------------------------------
    def t_version(self, tag: int, body: memoryview) -> bytes:
        req = decode_body(proto.TVERSION, body)
        self.reset()
        msize = min(req["msize"], self.server.max_msize)
        if msize < proto.MIN_MSIZE:
            self.versioned = False
            raise fail(errno.EINVAL, f"msize {req['msize']} is too small")
        version = proto.VERSION if req["version"].startswith(proto.VERSION) else "unknown"
        self.versioned = version == proto.VERSION
        self.msize = msize if self.versioned else self.server.max_msize
        return encode(proto.RVERSION, tag, msize=msize, version=version)

    def t_auth(self, tag: int, body: memoryview) -> bytes:
        decode_body(proto.TAUTH, body)
        # No afid authentication: identity is settled before 9P starts (by the connection's
        # owner), or not at all on an --insecure-no-auth loopback server. ENOENT, as diod
        # answers, tells the client to attach without an afid.
        raise fail(errno.ENOENT, "no 9P authentication")

    def t_attach(self, tag: int, body: memoryview) -> bytes:
        req = decode_body(proto.TATTACH, body)
        self.new_fid(req["fid"])
        if req["afid"] != NOFID:
            raise fail(errno.EINVAL, "afid given but no 9P authentication")
        if self.server.authenticate is not None:
            self.server.authenticate(req["uname"], req["aname"], req["n_uname"])
        node = self.server.namespace.attach(req["aname"], req["uname"], req["n_uname"])
        uid = req["n_uname"]
        if self.server.people is not None and self.admitted is None:
            uid = -1  # a person's attach is taken only from a host the cluster's CA vouched for
        self.fids[req["fid"]] = Fid(node, uid)
        return _qid_reply(proto.RATTACH, tag, node.qid())

    def t_flush(self, tag: int, body: memoryview) -> bytes | Coroutine[Any, Any, bytes]:
        (oldtag,) = struct.unpack_from("<H", body)
        task = self.waiting.get(oldtag)
        if task is None or task.done() or oldtag == NOTAG:
            return _empty(proto.RFLUSH, tag)
        task.cancel()

        async def after() -> bytes:
            await asyncio.wait({task})
            return _empty(proto.RFLUSH, tag)

        return after()

    # -- walking and attributes ----------------------------------------------------------
    def t_walk(self, tag: int, body: memoryview) -> bytes:
        fid, newfid, nwname = _WALK.unpack_from(body)
        if nwname > proto.MAXWELEM:
            raise ProtocolError(f"walk of {nwname} names (at most {proto.MAXWELEM})")
        names = []
        pos = _WALK.size
        for _ in range(nwname):
            name, pos = proto.read_string(body, pos)
            names.append(name)
        f = self.fid(fid)
        if f.handle is not None or f.xattr_data is not None or f.xattr_new is not None:
            raise fail(errno.EBADF, "walk from an opened fid")
        if newfid != fid:
            self.new_fid(newfid)
        node = f.node
        qids: list[bytes] = []
        for i, name in enumerate(names):
            try:
                node = node.walk(name)
            except OSError:
                if i == 0:
                    raise
                break
            qids.append(node.qid().pack())
        if len(qids) == nwname:
            if newfid == fid:
                f.node = node
            else:
                self.fids[newfid] = Fid(node, f.uid)
        body_out = struct.pack("<H", len(qids)) + b"".join(qids)
        return HEADER.pack(HEADER_SIZE + len(body_out), proto.RWALK, tag) + body_out

    def t_getattr(self, tag: int, body: memoryview) -> bytes:
        fid, _mask = _GETATTR_REQ.unpack_from(body)
        f = self.fid(fid)
        node = f.node
        st = node.attr()
        q = node.qid()
        size = st.st_size
        if f.handle is not None:
            snap = f.handle.size()
            if snap is not None:
                size = snap
        a, m, c = st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns
        return _RGETATTR.pack(
            _RGETATTR.size, proto.RGETATTR, tag, proto.GETATTR_BASIC, q.type, q.version, q.path,
            st.st_mode, st.st_uid, st.st_gid, st.st_nlink, st.st_rdev, size, st.st_blksize, st.st_blocks,
            a // 1_000_000_000, a % 1_000_000_000, m // 1_000_000_000, m % 1_000_000_000,
            c // 1_000_000_000, c % 1_000_000_000, 0, 0, 0, 0)

    def t_setattr(self, tag: int, body: memoryview) -> bytes:
        fid, valid, mode, uid, gid, size, asec, ansec, msec, mnsec = _SETATTR.unpack_from(body)
        self.fid(fid).node.setattr(valid, mode, uid, gid, size, (asec, ansec), (msec, mnsec))
        return _empty(proto.RSETATTR, tag)

    def t_statfs(self, tag: int, body: memoryview) -> bytes:
        (fid,) = _FID.unpack_from(body)
        s = self.fid(fid).node.statfs()
        return _RSTATFS.pack(_RSTATFS.size, proto.RSTATFS, tag, *s)

    def t_readlink(self, tag: int, body: memoryview) -> bytes:
        (fid,) = _FID.unpack_from(body)
        return encode(proto.RREADLINK, tag, target=self.fid(fid).node.readlink())

    # -- opening, reading, writing -------------------------------------------------------
    def t_lopen(self, tag: int, body: memoryview) -> bytes:
        fid, flags = _FID2.unpack_from(body)
        f = self.fid(fid)
        if f.handle is not None or f.xattr_data is not None or f.xattr_new is not None:
            raise fail(errno.EBADF, "fid already open")
        f.handle = f.node.open(flags)
        f.isdir = f.node.is_dir()
        q = f.node.qid()
        return _RLOPEN.pack(_RLOPEN.size, proto.RLOPEN, tag, q.type, q.version, q.path, 0)

    def t_lcreate(self, tag: int, body: memoryview) -> bytes:
        req = decode_body(proto.TLCREATE, body)
        f = self.fid(req["fid"])
        if f.handle is not None:
            raise fail(errno.EBADF, "fid already open")
        node, handle = f.node.create(req["name"], req["flags"], req["mode"], req["gid"])
        f.node, f.handle, f.isdir = node, handle, False
        self.server.changed("created", node)
        q = node.qid()
        return _RLOPEN.pack(_RLOPEN.size, proto.RLCREATE, tag, q.type, q.version, q.path, 0)

    def t_read(self, tag: int, body: memoryview) -> bytes | Coroutine[Any, Any, bytes] | None:
        fid, offset, count = _RD.unpack_from(body)
        f = self.fid(fid)
        count = self.io_limit(count)
        if f.xattr_data is not None:
            data = f.xattr_data[offset:offset + count]
            return _RREAD_HDR.pack(proto.READ_HDR + len(data), proto.RREAD, tag, len(data)) + data
        h = f.handle
        if h is None:
            raise fail(errno.EBADF, "fid not open")
        if f.isdir:
            raise fail(errno.EISDIR)
        if h.waits:
            self.may_wait()
        read_into = getattr(h, "read_into", None)
        if read_into is not None:
            return self._read_into(tag, read_into, offset, count)
        result = h.read(offset, count)
        if inspect.isawaitable(result):
            return self._await_read(tag, result)
        return _RREAD_HDR.pack(proto.READ_HDR + len(result), proto.RREAD, tag, len(result)) + result

    def _read_into(self, tag: int, read_into: Callable[[int, memoryview], int], offset: int, count: int) -> None:
        """Read file data straight into a reply buffer: one copy, and buffers are reused."""
        size = proto.READ_HDR + count
        if self.sent_bufs and self.transport is not None and self.transport.get_write_buffer_size() == 0:
            # Everything written has left: the transport holds none of these any more.
            self.spare_bufs.extend(self.sent_bufs[:SPARE_BUFFERS - len(self.spare_bufs)])
            self.sent_bufs.clear()
        buf = None
        while self.spare_bufs:
            candidate = self.spare_bufs.pop()
            if len(candidate) >= size:
                buf = candidate
                break
        if buf is None:
            buf = bytearray(max(size, min(self.msize, 1 << 20)))
        with memoryview(buf) as view:
            n = read_into(offset, view[proto.READ_HDR:size])
            _RREAD_HDR.pack_into(buf, 0, proto.READ_HDR + n, proto.RREAD, tag, n)
            self.send(view[:proto.READ_HDR + n])
        if self.transport is not None and self.transport.get_write_buffer_size() == 0:
            self.spare_bufs.append(buf)
        elif len(self.sent_bufs) < SPARE_BUFFERS:
            self.sent_bufs.append(buf)  # may still be referenced by the transport's queue
        return None

    async def _await_read(self, tag: int, pending: Awaitable[bytes]) -> bytes:
        data = await pending
        return _RREAD_HDR.pack(proto.READ_HDR + len(data), proto.RREAD, tag, len(data)) + data

    def t_write(self, tag: int, body: memoryview) -> bytes:
        fid, offset, count = _RD.unpack_from(body)
        data = body[16:16 + count]
        if len(data) != count:
            raise ProtocolError("Twrite count past the end of the message")
        f = self.fid(fid)
        if f.xattr_new is not None:
            _name, size, _flags, buf = f.xattr_new
            if offset != len(buf) or len(buf) + count > size:
                raise fail(errno.EINVAL, "xattr write out of order or past its size")
            buf += data
            n = count
        else:
            h = f.handle
            if h is None:
                raise fail(errno.EBADF, "fid not open")
            if f.isdir:
                raise fail(errno.EISDIR)
            n = h.write(offset, data)
        return _RWRITE.pack(HEADER_SIZE + 4, proto.RWRITE, tag, n)

    def t_clunk(self, tag: int, body: memoryview) -> bytes:
        (fid,) = _FID.unpack_from(body)
        f = self.fids.pop(fid, None)
        if f is None:
            raise fail(errno.EBADF, f"fid {fid}")
        if f.handle is not None:
            f.handle.close()
        if f.xattr_new is not None:
            name, size, flags, buf = f.xattr_new
            if len(buf) != size:
                raise fail(errno.EINVAL, "xattr value shorter than announced")
            f.node.xattr_set(name, bytes(buf), flags)
        return _empty(proto.RCLUNK, tag)

    def t_remove(self, tag: int, body: memoryview) -> bytes:
        (fid,) = _FID.unpack_from(body)
        f = self.fids.pop(fid, None)
        if f is None:
            raise fail(errno.EBADF, f"fid {fid}")
        # The fid is clunked whether or not the remove succeeds.
        if f.handle is not None:
            f.handle.close()
        where = f.node.where()
        f.node.remove()
        self.server.event("fs", op="removed", path=where)
        return _empty(proto.RREMOVE, tag)

    def t_readdir(self, tag: int, body: memoryview) -> bytes:
        fid, offset, count = _RD.unpack_from(body)
        f = self.fid(fid)
        if f.handle is None:
            raise fail(errno.EBADF, "fid not open")
        if not f.isdir:
            raise fail(errno.ENOTDIR)
        count = self.io_limit(count)
        if offset == 0 or f.dirents is None:
            f.dirents = f.node.entries()  # a snapshot; offsets are positions in it
        parts: list[bytes] = []
        used = 0
        ents = f.dirents
        i = offset
        while i < len(ents):
            q, dtype, name = ents[i]
            ent = proto.pack_dirent(q, i + 1, dtype, name)
            if used + len(ent) > count:
                break
            parts.append(ent)
            used += len(ent)
            i += 1
        if not parts and i < len(ents):
            raise fail(errno.EINVAL, "readdir count too small for one entry")
        data = b"".join(parts)
        return _RREAD_HDR.pack(proto.READ_HDR + len(data), proto.RREADDIR, tag, len(data)) + data

    def t_fsync(self, tag: int, body: memoryview) -> bytes | Coroutine[Any, Any, bytes]:
        (fid,) = _FID.unpack_from(body)
        datasync = _FID.unpack_from(body, 4)[0] if len(body) >= 8 else 0
        f = self.fid(fid)
        h = f.handle
        if h is None:
            raise fail(errno.EBADF, "fid not open")
        self.may_wait()

        async def run() -> bytes:
            # fsync can take seconds on a real disk: keep the loop serving others meanwhile.
            await asyncio.get_running_loop().run_in_executor(None, h.fsync, bool(datasync))
            return _empty(proto.RFSYNC, tag)

        return run()

    def t_lock(self, tag: int, body: memoryview) -> bytes:
        req = decode_body(proto.TLOCK, body)
        f = self.fid(req["fid"])
        if f.handle is None:
            raise fail(errno.EBADF, "fid not open")
        ok = f.handle.lock(req["type"], req["start"], req["length"])
        # A blocking request that would wait is answered BLOCKED: the kernel client retries.
        return encode(proto.RLOCK, tag, status=proto.LOCK_SUCCESS if ok else proto.LOCK_BLOCKED)

    def t_getlock(self, tag: int, body: memoryview) -> bytes:
        req = decode_body(proto.TGETLOCK, body)
        f = self.fid(req["fid"])
        if f.handle is None:
            raise fail(errno.EBADF, "fid not open")
        held = f.handle.getlock(req["type"], req["start"], req["length"])
        if held is None:
            return encode(proto.RGETLOCK, tag, type=proto.LOCK_TYPE_UNLCK, start=req["start"],
                          length=req["length"], proc_id=req["proc_id"], client_id=req["client_id"])
        ltype, start, length = held
        return encode(proto.RGETLOCK, tag, type=ltype, start=start, length=length, proc_id=0, client_id="")

    # -- changing the tree ---------------------------------------------------------------
    def t_mkdir(self, tag: int, body: memoryview) -> bytes:
        req = decode_body(proto.TMKDIR, body)
        d = self.fid(req["dfid"]).node
        q = d.mkdir(req["name"], req["mode"], req["gid"])
        self.server.changed("created", d, req["name"])
        return _qid_reply(proto.RMKDIR, tag, q)

    def t_symlink(self, tag: int, body: memoryview) -> bytes:
        req = decode_body(proto.TSYMLINK, body)
        d = self.fid(req["fid"]).node
        q = d.symlink(req["name"], req["symtgt"], req["gid"])
        self.server.changed("created", d, req["name"])
        return _qid_reply(proto.RSYMLINK, tag, q)

    def t_mknod(self, tag: int, body: memoryview) -> bytes:
        req = decode_body(proto.TMKNOD, body)
        q = self.fid(req["dfid"]).node.mknod(req["name"], req["mode"], req["major"], req["minor"], req["gid"])
        return _qid_reply(proto.RMKNOD, tag, q)

    def t_link(self, tag: int, body: memoryview) -> bytes:
        req = decode_body(proto.TLINK, body)
        d = self.fid(req["dfid"]).node
        d.link(req["name"], self.fid(req["fid"]).node)
        self.server.changed("created", d, req["name"])
        return _empty(proto.RLINK, tag)

    def t_rename(self, tag: int, body: memoryview) -> bytes:
        req = decode_body(proto.TRENAME, body)
        node = self.fid(req["fid"]).node
        node.rename_to(self.fid(req["dfid"]).node, req["name"])
        self.server.changed("renamed", node)
        return _empty(proto.RRENAME, tag)

    def t_renameat(self, tag: int, body: memoryview) -> bytes:
        req = decode_body(proto.TRENAMEAT, body)
        old = self.fid(req["olddirfid"]).node
        new = self.fid(req["newdirfid"]).node
        old.renameat(req["oldname"], new, req["newname"])
        self.server.changed("renamed", new, req["newname"])
        return _empty(proto.RRENAMEAT, tag)

    def t_unlinkat(self, tag: int, body: memoryview) -> bytes:
        req = decode_body(proto.TUNLINKAT, body)
        d = self.fid(req["dirfd"]).node
        d.unlinkat(req["name"], req["flags"])
        self.server.changed("removed", d, req["name"])
        return _empty(proto.RUNLINKAT, tag)

    # -- extended attributes -------------------------------------------------------------
    def t_xattrwalk(self, tag: int, body: memoryview) -> bytes:
        req = decode_body(proto.TXATTRWALK, body)
        f = self.fid(req["fid"])
        self.new_fid(req["newfid"]) if req["newfid"] != req["fid"] else None
        if req["name"]:
            data = f.node.xattr_get(req["name"])
        else:
            names = f.node.xattr_list()
            data = b"".join(os.fsencode(n) + b"\0" for n in names)
        nf = Fid(f.node, f.uid)
        nf.xattr_data = data
        self.fids[req["newfid"]] = nf
        return encode(proto.RXATTRWALK, tag, size=len(data))

    def t_xattrcreate(self, tag: int, body: memoryview) -> bytes:
        req = decode_body(proto.TXATTRCREATE, body)
        f = self.fid(req["fid"])
        if f.handle is not None or f.xattr_data is not None or f.xattr_new is not None:
            raise fail(errno.EBADF, "fid already open")
        if req["attr_size"] > XATTR_SIZE_MAX:
            raise fail(errno.E2BIG)
        f.node.xattr_prepare(req["name"], req["flags"])
        f.xattr_new = (req["name"], req["attr_size"], req["flags"], bytearray())
        return _empty(proto.RXATTRCREATE, tag)
