"""What the 9P server serves: a tree of nodes, each a directory, file or symlink.

A fid points at a Node; opening it yields a Handle. Real exported files (localfs) and the
synthetic state trees (synth) both implement this interface; the default methods refuse,
so a node only implements what it supports. Errors are OSErrors carrying Linux errnos, which
the server sends back in Rlerror.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Awaitable
from typing import Any, NamedTuple

from agent.ninep.proto import QTDIR, QTFILE, QTSYMLINK, Qid


def fail(code: int, what: str = "") -> OSError:
    return OSError(code, os.strerror(code) + (f": {what}" if what else ""))


def check_name(name: str) -> None:
    """A single path component: no '/', no NUL, not empty (walks and creates)."""
    if not name or "/" in name or "\0" in name:
        raise fail(errno.EINVAL, "bad file name")


def qid_type(mode: int) -> int:
    if stat.S_ISDIR(mode):
        return QTDIR
    if stat.S_ISLNK(mode):
        return QTSYMLINK
    return QTFILE


def dirent_type(mode: int) -> int:
    """The DT_* value readdir reports for a file of this mode."""
    return stat.S_IFMT(mode) >> 12


class Attr(NamedTuple):
    """The stat fields Rgetattr carries (an os.stat_result fits the same attribute names)."""

    st_mode: int
    st_ino: int
    st_nlink: int
    st_uid: int
    st_gid: int
    st_size: int
    st_atime_ns: int
    st_mtime_ns: int
    st_ctime_ns: int
    st_rdev: int = 0
    st_blksize: int = 4096
    st_blocks: int = 0


class StatFs(NamedTuple):
    type: int
    bsize: int
    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    fsid: int
    namelen: int


class Handle:
    """An opened node. read() may return an awaitable for reads that wait (events); such
    handles say so with ``waits``."""

    waits = False

    def read(self, offset: int, count: int) -> bytes | Awaitable[bytes]:
        raise fail(errno.EBADF)

    def write(self, offset: int, data: bytes) -> int:
        raise fail(errno.EBADF)

    def fsync(self, datasync: bool) -> None:
        return None

    def lock(self, ltype: int, start: int, length: int) -> bool:
        """Take or release a POSIX record lock without blocking; False when it is held elsewhere."""
        raise fail(errno.ENOLCK)

    def getlock(self, ltype: int, start: int, length: int) -> tuple[int, int, int] | None:
        """The (type, start, length) of a conflicting lock, or None."""
        raise fail(errno.ENOLCK)

    def size(self) -> int | None:
        """The size this reader sees (a synthetic snapshot's), when it differs from the node's."""
        return None

    def close(self) -> None:
        return None


class Node:
    """One file in a served tree. Subclasses override what they support."""

    def qid(self) -> Qid:
        raise NotImplementedError

    def is_dir(self) -> bool:
        return self.qid().type & QTDIR != 0

    def attr(self) -> Any:
        raise NotImplementedError

    def walk(self, name: str) -> Node:
        raise fail(errno.ENOTDIR)

    def open(self, flags: int) -> Handle:
        raise fail(errno.EACCES)

    def entries(self) -> list[tuple[Qid, int, bytes]]:
        """Directory listing (qid, DT_ type, name), including '.' and '..'."""
        raise fail(errno.ENOTDIR)

    def create(self, name: str, flags: int, mode: int, gid: int) -> tuple[Node, Handle]:
        raise fail(errno.EROFS)

    def mkdir(self, name: str, mode: int, gid: int) -> Qid:
        raise fail(errno.EROFS)

    def symlink(self, name: str, target: str, gid: int) -> Qid:
        raise fail(errno.EROFS)

    def mknod(self, name: str, mode: int, major: int, minor: int, gid: int) -> Qid:
        raise fail(errno.EROFS)

    def link(self, name: str, target: Node) -> None:
        raise fail(errno.EROFS)

    def unlinkat(self, name: str, flags: int) -> None:
        raise fail(errno.EROFS)

    def renameat(self, oldname: str, newdir: Node, newname: str) -> None:
        raise fail(errno.EROFS)

    def rename_to(self, newdir: Node, name: str) -> None:
        raise fail(errno.EROFS)

    def remove(self) -> None:
        raise fail(errno.EROFS)

    def setattr(self, valid: int, mode: int, uid: int, gid: int, size: int,
                atime: tuple[int, int], mtime: tuple[int, int]) -> None:
        if valid:
            raise fail(errno.EROFS)

    def readlink(self) -> str:
        raise fail(errno.EINVAL)

    def statfs(self) -> StatFs:
        return StatFs(0x01021997, 4096, 0, 0, 0, 0, 0, 0, 255)

    def xattr_get(self, name: str) -> bytes:
        raise fail(errno.ENODATA)

    def xattr_list(self) -> list[str]:
        return []

    def xattr_prepare(self, name: str, flags: int) -> None:
        """Refuse early (at Txattrcreate) what xattr_set would refuse at clunk."""
        raise fail(errno.EOPNOTSUPP)

    def xattr_set(self, name: str, value: bytes, flags: int) -> None:
        raise fail(errno.EOPNOTSUPP)

    def where(self) -> str:
        """Where this node is, for change events (export-relative for exported files)."""
        return ""
