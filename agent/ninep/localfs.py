"""Exported directories as 9P nodes, jailed to the export.

Each node holds an O_PATH descriptor reached by opening one name at a time with O_NOFOLLOW
from the export's root descriptor: a path is never resolved as a string, so '..', absolute
or relative symlinks and symlinks swapped in after a walk cannot lead outside. '..' goes back
along the chain of nodes the walk came down, stopping at the export root. Opening for I/O
reopens the walked inode itself through /proc/self/fd (never a name), symlinks are never
opened, and device files, FIFOs and sockets are never opened at all. Read-only exports
refuse every change with EROFS, and nothing links or renames across exports (EXDEV).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import struct
from dataclasses import dataclass, field

from agent.ninep import proto
from agent.ninep.node import Handle, Node, StatFs, check_name, dirent_type, fail, qid_type
from agent.ninep.proto import Qid

O_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
# Open flags passed through from Tlopen/Tlcreate (protocol values equal Linux's on all
# architectures we build for); O_DIRECT is dropped (it needs aligned buffers), as are
# O_NOATIME, O_NONBLOCK, O_CREAT and O_EXCL in Tlopen.
_PASS_FLAGS = proto.L_O_TRUNC | proto.L_O_APPEND | proto.L_O_DSYNC | proto.L_O_SYNC
F_OFD_GETLK, F_OFD_SETLK = 36, 37
_FLOCK = struct.Struct("hh4xqqi4x")
_LOCK_TYPES = {proto.LOCK_TYPE_RDLCK: fcntl.F_RDLCK, proto.LOCK_TYPE_WRLCK: fcntl.F_WRLCK,
               proto.LOCK_TYPE_UNLCK: fcntl.F_UNLCK}
_LOCK_TYPES_BACK = {v: k for k, v in _LOCK_TYPES.items()}


class FdRef:
    """Owns one descriptor; closed when the last node referring to it goes away."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __del__(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


@dataclass
class Export:
    name: str
    path: str
    readonly: bool = False
    root_fd: int = -1
    dev: int = 0
    index: int = 0
    mount_parent: Node | None = field(default=None, repr=False)

    def open(self) -> None:
        self.root_fd = os.open(self.path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.dev = os.fstat(self.root_fd).st_dev

    def root(self, mount_parent: Node | None = None) -> LocalNode:
        fd = os.dup(self.root_fd)
        st = os.fstat(fd)
        return LocalNode(self, FdRef(fd), st.st_mode, st.st_dev, st.st_ino, None, "", mount_parent)


def _proc(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


class LocalNode(Node):
    __slots__ = ("dev", "export", "fdref", "ino", "mode", "mount_parent", "name", "parent")

    def __init__(self, export: Export, fdref: FdRef, mode: int, dev: int, ino: int,
                 parent: LocalNode | None, name: str, mount_parent: Node | None = None) -> None:
        self.export = export
        self.fdref = fdref
        self.mode = mode
        self.dev = dev
        self.ino = ino
        self.parent = parent
        self.name = name
        self.mount_parent = mount_parent

    # -- identity ------------------------------------------------------------------------
    @property
    def fd(self) -> int:
        return self.fdref.fd

    def _qid_path(self, dev: int, ino: int) -> int:
        # Inode numbers are unique per device; files on another device inside an export
        # (a mount point below it) get the device folded into the high bits.
        if dev == self.export.dev:
            return ino
        return (ino ^ ((dev & 0xFFFFF) << 40)) | (1 << 62)

    def qid(self) -> Qid:
        return Qid(qid_type(self.mode), 0, self._qid_path(self.dev, self.ino))

    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    def attr(self) -> os.stat_result:
        return os.fstat(self.fd)

    def where(self) -> str:
        names = []
        node: LocalNode | None = self
        while node is not None and node.parent is not None:
            names.append(node.name)
            node = node.parent
        return "/".join(["fs", self.export.name, *reversed(names)])

    def _writable(self) -> None:
        if self.export.readonly:
            raise fail(errno.EROFS)

    def _need_dir(self) -> None:
        if not stat.S_ISDIR(self.mode):
            raise fail(errno.ENOTDIR)

    def _same_export(self, other: Node) -> LocalNode:
        if not isinstance(other, LocalNode) or other.export is not self.export:
            raise fail(errno.EXDEV)
        return other

    def _child(self, name: str) -> LocalNode:
        fd = os.open(name, O_PATH_FLAGS, dir_fd=self.fd)
        st = os.fstat(fd)
        return LocalNode(self.export, FdRef(fd), st.st_mode, st.st_dev, st.st_ino, self, name)

    def _child_qid(self, name: str) -> Qid:
        st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        return Qid(qid_type(st.st_mode), 0, self._qid_path(st.st_dev, st.st_ino))

    def _check_still_there(self) -> LocalNode:
        """The parent this node was reached from, after checking that the name there is
        still this inode (Tremove/Trename act by name; another fid may have moved it)."""
        if self.parent is None:
            raise fail(errno.EBUSY, "export root")
        st = os.stat(self.name, dir_fd=self.parent.fd, follow_symlinks=False)
        if (st.st_dev, st.st_ino) != (self.dev, self.ino):
            raise fail(errno.ESTALE)
        return self.parent

    # -- walking and listing -------------------------------------------------------------
    def walk(self, name: str) -> Node:
        self._need_dir()
        if name == "..":
            if self.parent is not None:
                return self.parent
            return self.mount_parent if self.mount_parent is not None else self
        if name == ".":
            return self
        check_name(name)
        return self._child(name)

    def entries(self) -> list[tuple[Qid, int, bytes]]:
        self._need_dir()
        up = self.parent if self.parent is not None else (self.mount_parent or self)
        out = [(self.qid(), stat.S_IFDIR >> 12, b"."), (up.qid(), stat.S_IFDIR >> 12, b"..")]
        fd = os.open(_proc(self.fd), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            with os.scandir(fd) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        mode = stat.S_IFDIR
                    elif entry.is_symlink():
                        mode = stat.S_IFLNK
                    elif entry.is_file(follow_symlinks=False):
                        mode = stat.S_IFREG
                    else:
                        try:
                            mode = entry.stat(follow_symlinks=False).st_mode
                        except OSError:
                            continue  # gone since the listing
                    qpath = entry.inode()
                    if qpath is None:
                        continue
                    out.append((Qid(qid_type(mode), 0, qpath), dirent_type(mode), os.fsencode(entry.name)))
        finally:
            os.close(fd)
        return out

    # -- opening -------------------------------------------------------------------------
    def open(self, flags: int) -> Handle:
        acc = flags & proto.L_O_ACCMODE
        if stat.S_ISLNK(self.mode):
            raise fail(errno.ELOOP)
        if not (stat.S_ISREG(self.mode) or stat.S_ISDIR(self.mode)):
            # Device nodes would reach whatever they name; FIFOs would block the server.
            raise fail(errno.EACCES, "not a regular file or directory")
        if acc != proto.L_O_RDONLY or flags & (proto.L_O_TRUNC | proto.L_O_APPEND):
            self._writable()
        if stat.S_ISDIR(self.mode):
            if acc != proto.L_O_RDONLY:
                raise fail(errno.EISDIR)
            return LocalHandle(os.open(_proc(self.fd), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), self)
        if flags & proto.L_O_DIRECTORY:
            raise fail(errno.ENOTDIR)
        real = (acc if acc != proto.L_O_ACCMODE else os.O_RDWR) | (flags & _PASS_FLAGS)
        return LocalHandle(os.open(_proc(self.fd), real | os.O_CLOEXEC | os.O_NOCTTY), self)

    def create(self, name: str, flags: int, mode: int, gid: int) -> tuple[Node, Handle]:
        self._need_dir()
        self._writable()
        check_name(name)
        acc = flags & proto.L_O_ACCMODE
        real = (acc if acc != proto.L_O_ACCMODE else os.O_RDWR) | (flags & (_PASS_FLAGS | proto.L_O_EXCL))
        fd = os.open(name, real | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY,
                     mode & 0o7777, dir_fd=self.fd)
        try:
            pfd = os.open(_proc(fd), os.O_PATH | os.O_CLOEXEC)
            st = os.fstat(pfd)
        except OSError:
            os.close(fd)
            raise
        node = LocalNode(self.export, FdRef(pfd), st.st_mode, st.st_dev, st.st_ino, self, name)
        return node, LocalHandle(fd, node)

    # -- changing the tree ---------------------------------------------------------------
    def mkdir(self, name: str, mode: int, gid: int) -> Qid:
        self._need_dir()
        self._writable()
        check_name(name)
        os.mkdir(name, mode & 0o7777, dir_fd=self.fd)
        return self._child_qid(name)

    def symlink(self, name: str, target: str, gid: int) -> Qid:
        self._need_dir()
        self._writable()
        check_name(name)
        # The target is only text: the server never follows it.
        os.symlink(target, name, dir_fd=self.fd)
        return self._child_qid(name)

    def mknod(self, name: str, mode: int, major: int, minor: int, gid: int) -> Qid:
        self._need_dir()
        self._writable()
        check_name(name)
        # Device nodes would open a door out of the export; FIFOs and sockets could not be
        # opened through it anyway. Refused for every type.
        raise fail(errno.EPERM, "mknod is not served")

    def link(self, name: str, target: Node) -> None:
        self._need_dir()
        self._writable()
        check_name(name)
        src = self._same_export(target)
        # Link the walked inode itself (not a name that may since have changed).
        os.link(_proc(src.fd), name, dst_dir_fd=self.fd, follow_symlinks=True)

    def unlinkat(self, name: str, flags: int) -> None:
        self._need_dir()
        self._writable()
        check_name(name)
        if flags & proto.AT_REMOVEDIR:
            os.rmdir(name, dir_fd=self.fd)
        else:
            os.unlink(name, dir_fd=self.fd)

    def renameat(self, oldname: str, newdir: Node, newname: str) -> None:
        self._need_dir()
        self._writable()
        check_name(oldname)
        check_name(newname)
        dst = self._same_export(newdir)
        dst._need_dir()
        os.rename(oldname, newname, src_dir_fd=self.fd, dst_dir_fd=dst.fd)

    def rename_to(self, newdir: Node, name: str) -> None:
        self._writable()
        check_name(name)
        dst = self._same_export(newdir)
        dst._need_dir()
        parent = self._check_still_there()
        os.rename(self.name, name, src_dir_fd=parent.fd, dst_dir_fd=dst.fd)
        self.parent, self.name = dst, name

    def remove(self) -> None:
        self._writable()
        parent = self._check_still_there()
        if stat.S_ISDIR(self.mode):
            os.rmdir(self.name, dir_fd=parent.fd)
        else:
            os.unlink(self.name, dir_fd=parent.fd)

    def setattr(self, valid: int, mode: int, uid: int, gid: int, size: int,
                atime: tuple[int, int], mtime: tuple[int, int]) -> None:
        if not valid & ~proto.SETATTR_CTIME:
            return  # ctime alone: the kernel's "touch ctime", nothing to do
        self._writable()
        link = stat.S_ISLNK(self.mode)
        path = _proc(self.fd)
        if valid & proto.SETATTR_MODE:
            if link:
                raise fail(errno.EOPNOTSUPP)
            os.chmod(path, mode & 0o7777)
        if valid & (proto.SETATTR_UID | proto.SETATTR_GID):
            u = uid if valid & proto.SETATTR_UID else -1
            g = gid if valid & proto.SETATTR_GID else -1
            if link:
                os.chown(self.name, u, g, dir_fd=self._check_still_there().fd, follow_symlinks=False)
            else:
                os.chown(path, u, g)
        if valid & proto.SETATTR_SIZE:
            if not stat.S_ISREG(self.mode):
                raise fail(errno.EISDIR if stat.S_ISDIR(self.mode) else errno.EINVAL)
            os.truncate(path, size)
        if valid & (proto.SETATTR_ATIME | proto.SETATTR_MTIME):
            if link:
                return  # times of symlinks: not worth a name-based call
            st = os.fstat(self.fd)
            now = None
            a = st.st_atime_ns
            m = st.st_mtime_ns
            if valid & proto.SETATTR_ATIME:
                if valid & proto.SETATTR_ATIME_SET:
                    a = atime[0] * 1_000_000_000 + atime[1]
                else:
                    now = now or _now_ns()
                    a = now
            if valid & proto.SETATTR_MTIME:
                if valid & proto.SETATTR_MTIME_SET:
                    m = mtime[0] * 1_000_000_000 + mtime[1]
                else:
                    now = now or _now_ns()
                    m = now
            os.utime(path, ns=(a, m))

    def readlink(self) -> str:
        if not stat.S_ISLNK(self.mode):
            raise fail(errno.EINVAL)
        return os.readlink("", dir_fd=self.fd)

    def statfs(self) -> StatFs:
        sv = os.fstatvfs(self.fd)
        # f_type needs statfs(2), which Python lacks; like diod we report V9FS_MAGIC.
        return StatFs(proto.V9FS_MAGIC, sv.f_bsize, sv.f_blocks, sv.f_bfree, sv.f_bavail,
                      sv.f_files, sv.f_ffree, sv.f_fsid & 0xFFFFFFFFFFFFFFFF, sv.f_namemax)

    # -- extended attributes -------------------------------------------------------------
    def xattr_get(self, name: str) -> bytes:
        if stat.S_ISLNK(self.mode):
            raise fail(errno.ENODATA)
        return os.getxattr(_proc(self.fd), name)

    def xattr_list(self) -> list[str]:
        if stat.S_ISLNK(self.mode):
            return []
        return os.listxattr(_proc(self.fd))

    def xattr_prepare(self, name: str, flags: int) -> None:
        self._writable()
        if stat.S_ISLNK(self.mode):
            raise fail(errno.EPERM)
        if not name:
            raise fail(errno.EINVAL)

    def xattr_set(self, name: str, value: bytes, flags: int) -> None:
        self._writable()
        if stat.S_ISLNK(self.mode):
            raise fail(errno.EPERM)
        os.setxattr(_proc(self.fd), name, value, flags & (proto.XATTR_CREATE | proto.XATTR_REPLACE))


def _now_ns() -> int:
    import time

    return time.time_ns()


class LocalHandle(Handle):
    __slots__ = ("fd", "node")

    def __init__(self, fd: int, node: LocalNode) -> None:
        self.fd = fd
        self.node = node

    def read(self, offset: int, count: int) -> bytes:
        return os.pread(self.fd, count, offset)

    def read_into(self, offset: int, view: memoryview) -> int:
        return os.preadv(self.fd, [view], offset)

    def write(self, offset: int, data: bytes) -> int:
        return os.pwrite(self.fd, data, offset)

    def fsync(self, datasync: bool) -> None:
        if datasync:
            os.fdatasync(self.fd)
        else:
            os.fsync(self.fd)

    def lock(self, ltype: int, start: int, length: int) -> bool:
        # Open-file-description locks: each fid's open file owns its locks, so two clients
        # of this one server process conflict as two processes would.
        if ltype not in _LOCK_TYPES:
            raise fail(errno.EINVAL)
        arg = _FLOCK.pack(_LOCK_TYPES[ltype], os.SEEK_SET, start, length, 0)
        try:
            fcntl.fcntl(self.fd, F_OFD_SETLK, arg)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise
        return True

    def getlock(self, ltype: int, start: int, length: int) -> tuple[int, int, int] | None:
        if ltype not in _LOCK_TYPES:
            raise fail(errno.EINVAL)
        arg = _FLOCK.pack(_LOCK_TYPES[ltype], os.SEEK_SET, start, length, 0)
        res = fcntl.fcntl(self.fd, F_OFD_GETLK, arg)
        ftype, _whence, lstart, llen, _pid = _FLOCK.unpack(res)
        if ftype == fcntl.F_UNLCK:
            return None
        return _LOCK_TYPES_BACK[ftype], lstart, llen

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __del__(self) -> None:
        self.close()
