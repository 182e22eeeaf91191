"""Synthetic nodes: directories and files whose content is made by code.

A file renders its bytes when it is opened, and that snapshot is what its reader sees until
it closes (stable for that reader); getattr on an unopened file renders to report a size. A
tree of nested dicts and lists (the hardware inventory, os facts) is served by DataDir: each
key is a name, scalars are one-line files, and ``json`` beside them holds the subtree whole.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import time
from collections.abc import Awaitable, Callable
from typing import Any

from agent.ninep import proto
from agent.ninep.node import Attr, Handle, Node, check_name, fail
from agent.ninep.proto import QTDIR, QTFILE, Qid

_UID = os.geteuid()
_GID = os.getegid()
_BOOT_NS = time.time_ns()


def synth_path(parts: tuple[str, ...]) -> int:
    """A stable qid path for a synthetic node: a hash of its place, with the top bit set so it
    never equals an exported file's inode number."""
    digest = hashlib.blake2b("/".join(parts).encode("utf-8", "surrogateescape"), digest_size=7).digest()
    return (1 << 63) | int.from_bytes(digest, "little")


class SynthNode(Node):
    def __init__(self, name: str, parent: SynthNode | None) -> None:
        self.name = name
        self.parent = parent
        self.parts: tuple[str, ...] = (*parent.parts, name) if parent is not None else ()
        self._qpath = synth_path(self.parts)

    def _attr(self, mode: int, size: int, nlink: int = 1) -> Attr:
        now = time.time_ns()
        return Attr(st_mode=mode, st_ino=self._qpath, st_nlink=nlink, st_uid=_UID, st_gid=_GID,
                    st_size=size, st_atime_ns=now, st_mtime_ns=now, st_ctime_ns=_BOOT_NS)


class SynthDir(SynthNode):
    """A directory whose children come from ``children()`` each time they are needed."""

    def __init__(self, name: str, parent: SynthNode | None,
                 children: Callable[[SynthDir], dict[str, Node]] | None = None) -> None:
        super().__init__(name, parent)
        self._children = children
        self.static: dict[str, Node] = {}

    def add(self, node: Node, name: str | None = None) -> Node:
        self.static[name if name is not None else node.name] = node  # type: ignore[attr-defined]
        return node

    def children(self) -> dict[str, Node]:
        out = dict(self.static)
        if self._children is not None:
            out.update(self._children(self))
        return out

    def qid(self) -> Qid:
        return Qid(QTDIR, 0, self._qpath)

    def attr(self) -> Attr:
        return self._attr(stat.S_IFDIR | 0o555, 0, 2)

    def walk(self, name: str) -> Node:
        if name == "..":
            return self.parent if self.parent is not None else self
        if name == ".":
            return self
        check_name(name)
        try:
            return self.children()[name]
        except KeyError:
            raise fail(errno.ENOENT, name) from None

    def entries(self) -> list[tuple[Qid, int, bytes]]:
        up = self.parent if self.parent is not None else self
        out = [(self.qid(), stat.S_IFDIR >> 12, b"."), (up.qid(), stat.S_IFDIR >> 12, b"..")]
        for name, node in sorted(self.children().items()):
            q = node.qid()
            out.append((q, (stat.S_IFDIR if q.type & QTDIR else stat.S_IFREG) >> 12, os.fsencode(name)))
        return out

    def open(self, flags: int) -> Handle:
        if flags & proto.L_O_ACCMODE != proto.L_O_RDONLY:
            raise fail(errno.EISDIR)
        return Handle()

    def create(self, name: str, flags: int, mode: int, gid: int) -> tuple[Node, Handle]:
        raise fail(errno.EACCES, "synthetic directory")

    def mkdir(self, name: str, mode: int, gid: int) -> Qid:
        raise fail(errno.EACCES, "synthetic directory")

    def unlinkat(self, name: str, flags: int) -> None:
        raise fail(errno.EACCES, "synthetic directory")


class SnapshotHandle(Handle):
    """An opened synthetic file: the bytes rendered at open, plus an optional command sink."""

    def __init__(self, data: bytes, sink: Callable[[bytes], None] | None) -> None:
        self.data = data
        self.sink = sink

    def read(self, offset: int, count: int) -> bytes:
        return self.data[offset:offset + count]

    def write(self, offset: int, data: bytes) -> int:
        if self.sink is None:
            raise fail(errno.EBADF)
        self.sink(bytes(data))
        return len(data)

    def size(self) -> int:
        return len(self.data)


class SynthFile(SynthNode):
    """A file rendered by ``render()`` on open; ``command`` (if any) takes what is written."""

    def __init__(self, name: str, parent: SynthNode | None, render: Callable[[], bytes],
                 command: Callable[[bytes], None] | None = None, writable: Callable[[], bool] | None = None) -> None:
        super().__init__(name, parent)
        self.render = render
        self.command = command
        self.writable = writable if writable is not None else (lambda: command is not None)

    def qid(self) -> Qid:
        return Qid(QTFILE, 0, self._qpath)

    def attr(self) -> Attr:
        mode = 0o644 if self.command is not None and self.writable() else 0o444
        try:
            size = len(self.render())
        except OSError:
            size = 0
        return self._attr(stat.S_IFREG | mode, size)

    def open(self, flags: int) -> Handle:
        acc = flags & proto.L_O_ACCMODE
        wants_write = acc != proto.L_O_RDONLY or flags & proto.L_O_TRUNC
        if wants_write and (self.command is None or not self.writable()):
            raise fail(errno.EACCES, "read-only state file")
        data = self.render() if acc != proto.L_O_WRONLY else b""
        return SnapshotHandle(data, self.command if wants_write else None)

    def setattr(self, valid: int, mode: int, uid: int, gid: int, size: int,
                atime: tuple[int, int], mtime: tuple[int, int]) -> None:
        # `echo cmd > ctl` truncates first: allow a size-0 truncate on a writable file.
        rest = valid & ~(proto.SETATTR_SIZE | proto.SETATTR_CTIME | proto.SETATTR_ATIME | proto.SETATTR_MTIME)
        if not valid & ~proto.SETATTR_CTIME:
            return
        if rest or self.command is None or not self.writable() or (valid & proto.SETATTR_SIZE and size):
            raise fail(errno.EACCES, "read-only state file")


class StreamHandle(Handle):
    """A reader of a stream: each read waits for what comes next (offsets are ignored)."""

    waits = True

    def __init__(self, next_chunk: Callable[[int], Awaitable[bytes]]) -> None:
        self.next_chunk = next_chunk

    def read(self, offset: int, count: int) -> Awaitable[bytes]:
        return self.next_chunk(count)


class StreamFile(SynthNode):
    def __init__(self, name: str, parent: SynthNode | None, opener: Callable[[], StreamHandle]) -> None:
        super().__init__(name, parent)
        self.opener = opener

    def qid(self) -> Qid:
        return Qid(QTFILE, 0, self._qpath)

    def attr(self) -> Attr:
        return self._attr(stat.S_IFREG | 0o444, 0)

    def open(self, flags: int) -> Handle:
        if flags & proto.L_O_ACCMODE != proto.L_O_RDONLY:
            raise fail(errno.EACCES, "read-only stream")
        return self.opener()


def render_scalar(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = ""
    else:
        text = str(value)
    return (text + "\n").encode("utf-8", "surrogateescape") if text else b""


def render_json(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True, default=str) + "\n").encode()


def _child_names(value: Any) -> dict[str, Any]:
    """A dict's keys, or a list's items named by their 'name' key (else by index)."""
    if isinstance(value, dict):
        return {str(k).replace("/", "_") or "_": v for k, v in value.items()}
    out: dict[str, Any] = {}
    for i, item in enumerate(value):
        label = item.get("name") if isinstance(item, dict) else None
        name = str(label).replace("/", "_") if label not in (None, "") else str(i)
        if name in out:
            name = f"{name}.{i}"
        out[name] = item
    return out


class DataDir(SynthDir):
    """A directory view of ``source()[path...]``: nested containers are directories."""

    def __init__(self, name: str, parent: SynthNode | None, source: Callable[[], Any],
                 path: tuple[str, ...] = ()) -> None:
        super().__init__(name, parent)
        self.source = source
        self.path = path

    def value(self) -> Any:
        value = self.source()
        for key in self.path:
            if not isinstance(value, dict | list):
                raise fail(errno.ENOENT)
            try:
                value = _child_names(value)[key]
            except KeyError:
                raise fail(errno.ENOENT, key) from None
        return value

    def children(self) -> dict[str, Node]:
        value = self.value()
        out: dict[str, Node] = {}
        for key, item in _child_names(value).items():
            name = "json_" if key == "json" else key  # "json" is the whole subtree's file
            if isinstance(item, dict | list):
                out[name] = DataDir(name, self, self.source, (*self.path, key))
            else:
                out[name] = SynthFile(name, self, self._leaf_renderer(key))
        out["json"] = SynthFile("json", self, lambda: render_json(self.value()))
        return out

    def _leaf_renderer(self, key: str) -> Callable[[], bytes]:
        def render() -> bytes:
            value = self.value()
            try:
                return render_scalar(_child_names(value)[key])
            except (KeyError, TypeError):
                raise fail(errno.ENOENT, key) from None

        return render
