"""``clusterctl agent mount``: a FUSE client for 9P2000.L servers.

For machines whose kernel has no 9p module (this sandbox, RHEL-like kernels): the kernel
talks FUSE to this process, which talks 9P2000.L to the server. Built on pyfuse3 (Debian's
python3-pyfuse3), whose low-level inode API maps one to one onto 9P: a FUSE inode is a
walked fid, a lookup is Twalk+Tgetattr, an open file or directory is a cloned, Tlopen'ed
fid, and readdir offsets are the server's. Files are opened direct_io, as a 9P mount with
cache=none would be, so synthetic state files read as rendered. Servers without
Tunlinkat/Trenameat (diod) get the Tremove/Trename fallbacks the kernel client uses.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import signal
import socket
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pyfuse3
import trio

from agent.ninep import proto
from agent.ninep.client import ConnectionClosed, NinePError, TrioClient
from core import events

ROOT_FID = 1
ATTR_TIMEOUT = 1.0  # seconds the kernel may trust attributes and names (cache=none-like, but not zero)
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def fuse_errors(fn: F) -> F:
    """Turn 9P errors into FUSE errors (a lost connection is EIO, never a hang)."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except NinePError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except (ConnectionClosed, ConnectionError, trio.BrokenResourceError, trio.ClosedResourceError):
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


@dataclass
class Inode:
    fid: int
    qpath: int
    lookups: int = 0


class NinePFS(pyfuse3.Operations):
    def __init__(self, client: TrioClient, root_fid: int, root_qpath: int) -> None:
        super().__init__()
        self.c = client
        self.inodes: dict[int, Inode] = {pyfuse3.ROOT_INODE: Inode(root_fid, root_qpath, 1)}
        self.by_qpath: dict[int, int] = {root_qpath: pyfuse3.ROOT_INODE}
        self.next_inode = pyfuse3.ROOT_INODE + 1
        self.retired: list[int] = []  # replaced inode fids, clunked at the next forget
        self.dir_inodes: dict[int, int] = {}  # open directory fid -> its inode (walks start there)
        self.fallback_unlink = False
        self.fallback_rename = False

    # -- inode bookkeeping -----------------------------------------------------------------
    def fid_of(self, inode: int) -> int:
        try:
            return self.inodes[inode].fid
        except KeyError:
            raise pyfuse3.FUSEError(errno.ESTALE) from None

    async def _clunk(self, fid: int) -> None:
        with contextlib.suppress(NinePError, ConnectionClosed):
            await self.c.clunk(fid)
        self.c.free_fid(fid)

    async def _remember(self, fid: int, qpath: int) -> int:
        """The inode for a freshly walked fid (one more lookup on it)."""
        inode = self.by_qpath.get(qpath)
        if inode == pyfuse3.ROOT_INODE:
            self.inodes[inode].lookups += 1
            await self._clunk(fid)
            return inode
        if inode is not None:
            # Known file: use the newest fid (a path-based server such as diod may have lost
            # track of the old one after a rename); the old one may be in use by a request
            # right now, so it is clunked later, at the next forget.
            node = self.inodes[inode]
            self.retired.append(node.fid)
            node.fid = fid
            node.lookups += 1
            if len(self.retired) > 256:
                await self._clunk_retired()
            return inode
        inode = self.next_inode
        self.next_inode += 1
        self.inodes[inode] = Inode(fid, qpath, 1)
        self.by_qpath[qpath] = inode
        return inode

    async def _unref(self, inode: int, n: int) -> None:
        node = self.inodes.get(inode)
        if node is None or inode == pyfuse3.ROOT_INODE:
            return
        node.lookups -= n
        if node.lookups <= 0:
            del self.inodes[inode]
            if self.by_qpath.get(node.qpath) == inode:
                del self.by_qpath[node.qpath]
            await self._clunk(node.fid)

    def _entry(self, inode: int, a: dict[str, Any]) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = inode
        e.generation = 0
        e.entry_timeout = ATTR_TIMEOUT
        e.attr_timeout = ATTR_TIMEOUT
        e.st_mode = a["mode"]
        e.st_nlink = a["nlink"]
        e.st_uid = a["uid"]
        e.st_gid = a["gid"]
        e.st_rdev = a["rdev"]
        e.st_size = a["size"]
        e.st_blksize = a["blksize"] or 4096
        e.st_blocks = a["blocks"]
        e.st_atime_ns = a["atime_sec"] * 1_000_000_000 + a["atime_nsec"]
        e.st_mtime_ns = a["mtime_sec"] * 1_000_000_000 + a["mtime_nsec"]
        e.st_ctime_ns = a["ctime_sec"] * 1_000_000_000 + a["ctime_nsec"]
        return e

    async def _walk_attr(self, dirfid: int, name: str) -> tuple[int, dict[str, Any]]:
        fid = self.c.alloc_fid()
        try:
            qids = await self.c.walk(dirfid, fid, [name])
        except BaseException:
            self.c.free_fid(fid)
            raise
        if len(qids) != 1:
            self.c.free_fid(fid)
            raise pyfuse3.FUSEError(errno.ENOENT)
        try:
            return fid, await self.c.getattr(fid)
        except BaseException:
            await self._clunk(fid)
            raise

    async def _lookup(self, parent: int, name: str) -> pyfuse3.EntryAttributes:
        fid, a = await self._walk_attr(self.fid_of(parent), name)
        inode = await self._remember(fid, a["qid"].path)
        return self._entry(inode, a)

    async def _clone(self, inode: int) -> int:
        fid = self.c.alloc_fid()
        try:
            await self.c.walk(self.fid_of(inode), fid, [])
        except BaseException:
            self.c.free_fid(fid)
            raise
        return fid

    # -- names and attributes --------------------------------------------------------------
    @fuse_errors
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return await self._lookup(parent_inode, os.fsdecode(name))

    async def forget(self, inode_list: Any) -> None:
        await self._clunk_retired()
        for inode, n in inode_list:
            await self._unref(inode, n)

    async def _clunk_retired(self) -> None:
        retired, self.retired = self.retired, []
        for fid in retired:
            await self._clunk(fid)

    @fuse_errors
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._entry(inode, await self.c.getattr(self.fid_of(inode)))

    @fuse_errors
    async def setattr(self, inode: int, attr: Any, fields: Any, fh: Any, ctx: Any) -> pyfuse3.EntryAttributes:
        valid = 0
        if fields.update_mode:
            valid |= proto.SETATTR_MODE
        if fields.update_uid:
            valid |= proto.SETATTR_UID
        if fields.update_gid:
            valid |= proto.SETATTR_GID
        if fields.update_size:
            valid |= proto.SETATTR_SIZE
        if fields.update_atime:
            valid |= proto.SETATTR_ATIME | proto.SETATTR_ATIME_SET
        if fields.update_mtime:
            valid |= proto.SETATTR_MTIME | proto.SETATTR_MTIME_SET
        fid = self.fid_of(inode)
        if valid:
            a_ns, m_ns = attr.st_atime_ns, attr.st_mtime_ns
            await self.c.setattr(fid, valid, mode=stat.S_IMODE(attr.st_mode), uid=attr.st_uid, gid=attr.st_gid,
                                 size=attr.st_size, atime=divmod(a_ns, 1_000_000_000),
                                 mtime=divmod(m_ns, 1_000_000_000))
        return self._entry(inode, await self.c.getattr(fid))

    @fuse_errors
    async def readlink(self, inode: int, ctx: Any = None) -> bytes:
        return os.fsencode(await self.c.readlink(self.fid_of(inode)))

    @fuse_errors
    async def statfs(self, ctx: Any = None) -> pyfuse3.StatvfsData:
        s = await self.c.statfs(self.fid_of(pyfuse3.ROOT_INODE))
        out = pyfuse3.StatvfsData()
        out.f_bsize = out.f_frsize = s["bsize"] or 4096
        out.f_blocks, out.f_bfree, out.f_bavail = s["blocks"], s["bfree"], s["bavail"]
        out.f_files, out.f_ffree, out.f_favail = s["files"], s["ffree"], s["ffree"]
        out.f_namemax = s["namelen"] or 255
        return out

    # -- files -------------------------------------------------------------------------------
    @fuse_errors
    async def open(self, inode: int, flags: int, ctx: Any = None) -> pyfuse3.FileInfo:
        fid = await self._clone(inode)
        try:
            await self.c.lopen(fid, flags & ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY))
        except BaseException:
            await self._clunk(fid)
            raise
        return pyfuse3.FileInfo(fh=fid, direct_io=True, keep_cache=False)

    @fuse_errors
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: Any) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        fid = await self._clone(parent_inode)
        try:
            await self.c.lcreate(fid, os.fsdecode(name), flags & ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY),
                                 stat.S_IMODE(mode), ctx.gid)
        except BaseException:
            await self._clunk(fid)
            raise
        entry = await self._lookup(parent_inode, os.fsdecode(name))
        return pyfuse3.FileInfo(fh=fid, direct_io=True, keep_cache=False), entry

    @fuse_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        if size <= self.c.iosize:
            return await self.c.read(fh, off, size)
        parts = []
        while size > 0:
            chunk = await self.c.read(fh, off, min(size, self.c.iosize))
            if not chunk:
                break
            parts.append(chunk)
            off += len(chunk)
            size -= len(chunk)
        return b"".join(parts)

    @fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        if len(buf) <= self.c.iosize:
            return await self.c.write(fh, off, bytes(buf))
        await self.c.write_all(fh, bytes(buf), off)
        return len(buf)

    async def flush(self, fh: int) -> None:
        return None

    @fuse_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.c.fsync(fh, int(datasync))

    async def release(self, fh: int) -> None:
        await self._clunk(fh)

    # -- directories -----------------------------------------------------------------------
    @fuse_errors
    async def opendir(self, inode: int, ctx: Any = None) -> int:
        fid = await self._clone(inode)
        try:
            await self.c.lopen(fid, proto.L_O_RDONLY | proto.L_O_DIRECTORY)
        except BaseException:
            await self._clunk(fid)
            raise
        self.dir_inodes[fid] = inode
        return fid

    @fuse_errors
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        offset = start_id
        while True:
            raw = await self.c.readdir(fh, offset)
            if not raw:
                return
            batch = [e for e in raw if e.name not in (".", "..")]
            if not batch:
                offset = raw[-1].offset  # only '.' and '..' in this page
                continue
            results: list[tuple[int, dict[str, Any]] | None] = [None] * len(batch)

            async def fetch(i: int, name: str, out: list[tuple[int, dict[str, Any]] | None]) -> None:
                try:
                    # walk from the directory's own fid: an opened fid cannot be walked
                    out[i] = await self._walk_attr(self.fid_of(self.dir_inodes[fh]), name)
                except (NinePError, pyfuse3.FUSEError):
                    out[i] = None  # gone since the listing

            # The kernel wants attributes with every entry: fetch them all at once.
            async with trio.open_nursery() as n:
                for i, ent in enumerate(batch):
                    n.start_soon(fetch, i, ent.name, results)
            full = False
            for ent, res in zip(batch, results, strict=True):
                if res is None:
                    continue
                fid, a = res
                if full:
                    await self._clunk(fid)
                    continue
                inode = await self._remember(fid, a["qid"].path)
                if not pyfuse3.readdir_reply(token, os.fsencode(ent.name), self._entry(inode, a), ent.offset):
                    await self._unref(inode, 1)
                    full = True
            if full:
                return
            offset = raw[-1].offset

    async def releasedir(self, fh: int) -> None:
        self.dir_inodes.pop(fh, None)
        await self._clunk(fh)

    @fuse_errors
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        await self.c.mkdir(self.fid_of(parent_inode), os.fsdecode(name), stat.S_IMODE(mode), ctx.gid)
        return await self._lookup(parent_inode, os.fsdecode(name))

    async def _unlink(self, parent: int, name: str, flags: int) -> None:
        if not self.fallback_unlink:
            try:
                await self.c.unlinkat(self.fid_of(parent), name, flags)
                return
            except NinePError as exc:
                if exc.errno != errno.EOPNOTSUPP:
                    raise
                self.fallback_unlink = True
        fid, a = await self._walk_attr(self.fid_of(parent), name)
        if flags & proto.AT_REMOVEDIR and not stat.S_ISDIR(a["mode"]):
            await self._clunk(fid)
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if not flags & proto.AT_REMOVEDIR and stat.S_ISDIR(a["mode"]):
            await self._clunk(fid)
            raise pyfuse3.FUSEError(errno.EISDIR)
        try:
            await self.c.remove(fid)  # clunks the fid, whatever the outcome
        finally:
            self.c.free_fid(fid)

    @fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        await self._unlink(parent_inode, os.fsdecode(name), 0)

    @fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        await self._unlink(parent_inode, os.fsdecode(name), proto.AT_REMOVEDIR)

    @fuse_errors
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes,
                     flags: int, ctx: Any) -> None:
        if flags:
            raise pyfuse3.FUSEError(errno.EINVAL)  # RENAME_NOREPLACE/EXCHANGE: not in 9P2000.L
        old, new = os.fsdecode(name_old), os.fsdecode(name_new)
        if not self.fallback_rename:
            try:
                await self.c.renameat(self.fid_of(parent_inode_old), old, self.fid_of(parent_inode_new), new)
                return
            except NinePError as exc:
                if exc.errno != errno.EOPNOTSUPP:
                    raise
                self.fallback_rename = True
        fid, _a = await self._walk_attr(self.fid_of(parent_inode_old), old)
        try:
            await self.c.rename(fid, self.fid_of(parent_inode_new), new)
        finally:
            await self._clunk(fid)

    @fuse_errors
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        await self.c.symlink(self.fid_of(parent_inode), os.fsdecode(name), os.fsdecode(target), ctx.gid)
        return await self._lookup(parent_inode, os.fsdecode(name))

    @fuse_errors
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        await self.c.link(self.fid_of(new_parent_inode), self.fid_of(inode), os.fsdecode(new_name))
        return await self._lookup(new_parent_inode, os.fsdecode(new_name))

    @fuse_errors
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any) -> pyfuse3.EntryAttributes:
        await self.c.mknod(self.fid_of(parent_inode), os.fsdecode(name), mode, os.major(rdev), os.minor(rdev),
                           ctx.gid)
        return await self._lookup(parent_inode, os.fsdecode(name))

    # -- extended attributes ---------------------------------------------------------------
    async def _xattr_read(self, inode: int, name: str) -> bytes:
        fid = self.c.alloc_fid()
        try:
            size = await self.c.xattrwalk(self.fid_of(inode), fid, name)
        except BaseException:
            self.c.free_fid(fid)
            raise
        try:
            return await self.c.read(fid, 0, size) if size else b""
        finally:
            await self._clunk(fid)

    @fuse_errors
    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        return await self._xattr_read(inode, os.fsdecode(name))

    @fuse_errors
    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        data = await self._xattr_read(inode, "")
        return [n for n in data.split(b"\0") if n]

    @fuse_errors
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        fid = await self._clone(inode)
        try:
            await self.c.xattrcreate(fid, os.fsdecode(name), len(value), 0)
            if value:
                await self.c.write(fid, 0, bytes(value))
        finally:
            await self._clunk(fid)


async def _run(address: str, mountpoint: str, aname: str, msize: int, uname: str,
               sock: socket.socket | None = None) -> None:
    async with trio.open_nursery() as nursery:
        if sock is None:
            client = await TrioClient.connect(address, nursery, msize)
        else:  # already connected and authenticated (agent.peer)
            client = TrioClient(trio.SocketStream(trio.socket.from_stdlib_socket(sock)))
            nursery.start_soon(client._read_loop)
            await client.version(msize)
        qid = await client.attach(ROOT_FID, aname, uname, os.getuid())
        client._next_fid = ROOT_FID + 1
        fs = NinePFS(client, ROOT_FID, qid.path)
        options = set(pyfuse3.default_options)
        options |= {f"fsname=9p:{address}", "subtype=9p"}
        pyfuse3.init(fs, mountpoint, options)
        closed = trio.Event()
        client.on_close = closed.set

        async def stop_when_closed() -> None:
            await closed.wait()
            pyfuse3.terminate()  # the server went away: unmount instead of hanging callers

        async def stop_on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _sig in signals:
                    pyfuse3.terminate()
                    return

        nursery.start_soon(stop_when_closed)
        nursery.start_soon(stop_on_signal)
        events.emit("mounted", address=address, aname=aname, path=os.path.abspath(mountpoint), msize=client.msize)
        try:
            await pyfuse3.main(max_tasks=64)
        finally:
            pyfuse3.close(unmount=True)
            nursery.cancel_scope.cancel()
            await client.close()


def mount(address: str, mountpoint: str, *, aname: str = "", msize: int = proto.MAX_MSIZE, uname: str = "root",
          sock: socket.socket | None = None) -> int:
    """Mount and serve until unmounted (fusermount3 -u), the server hangs up, or a signal.
    With ``sock``, 9P runs on that connected socket (``address`` then only names the mount)."""
    trio.run(_run, address, mountpoint, aname, msize, uname, sock)
    return 0
