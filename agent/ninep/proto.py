"""9P2000.L wire format: message numbers, constants, and one table-driven codec.

Every frame is ``size[4] type[1] tag[2] body``, little-endian; strings are ``len[2] utf-8``;
a qid is ``type[1] version[4] path[8]``. Each message body is described once in ``SPECS`` as
a field list, and the same table encodes and decodes it, for the server, the client and the
tests alike (written from the 9P2000.L protocol notes and the kernel's include/net/9p/9p.h).
Standard library only: this module runs inside images.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

# Message numbers (T = request, R = reply = T + 1).
RLERROR = 7
TSTATFS, RSTATFS = 8, 9
TLOPEN, RLOPEN = 12, 13
TLCREATE, RLCREATE = 14, 15
TSYMLINK, RSYMLINK = 16, 17
TMKNOD, RMKNOD = 18, 19
TRENAME, RRENAME = 20, 21
TREADLINK, RREADLINK = 22, 23
TGETATTR, RGETATTR = 24, 25
TSETATTR, RSETATTR = 26, 27
TXATTRWALK, RXATTRWALK = 30, 31
TXATTRCREATE, RXATTRCREATE = 32, 33
TREADDIR, RREADDIR = 40, 41
TFSYNC, RFSYNC = 50, 51
TLOCK, RLOCK = 52, 53
TGETLOCK, RGETLOCK = 54, 55
TLINK, RLINK = 70, 71
TMKDIR, RMKDIR = 72, 73
TRENAMEAT, RRENAMEAT = 74, 75
TUNLINKAT, RUNLINKAT = 76, 77
TVERSION, RVERSION = 100, 101
TAUTH, RAUTH = 102, 103
TATTACH, RATTACH = 104, 105
TFLUSH, RFLUSH = 108, 109
TWALK, RWALK = 110, 111
TREAD, RREAD = 116, 117
TWRITE, RWRITE = 118, 119
TCLUNK, RCLUNK = 120, 121
TREMOVE, RREMOVE = 122, 123

VERSION = "9P2000.L"
NOTAG = 0xFFFF
NOFID = 0xFFFFFFFF
HEADER = struct.Struct("<IBH")
HEADER_SIZE = 7
IOHDRSZ = 24  # bytes of a Twrite/Rread frame besides the data: what the kernel subtracts from msize
READ_HDR = 11  # size[4] type[1] tag[2] count[4]
MAXWELEM = 16
MIN_MSIZE = 4096
MAX_MSIZE = 1 << 20

# qid types
QTDIR, QTAPPEND, QTEXCL, QTMOUNT, QTAUTH, QTTMP, QTSYMLINK, QTFILE = 0x80, 0x40, 0x20, 0x10, 0x08, 0x04, 0x02, 0x00

# Tgetattr request_mask / Rgetattr valid bits
GETATTR_MODE, GETATTR_NLINK, GETATTR_UID, GETATTR_GID = 0x1, 0x2, 0x4, 0x8
GETATTR_RDEV, GETATTR_ATIME, GETATTR_MTIME, GETATTR_CTIME = 0x10, 0x20, 0x40, 0x80
GETATTR_INO, GETATTR_SIZE, GETATTR_BLOCKS = 0x100, 0x200, 0x400
GETATTR_BASIC = 0x7FF
GETATTR_BTIME, GETATTR_GEN, GETATTR_DATA_VERSION = 0x800, 0x1000, 0x2000
GETATTR_ALL = 0x3FFF

# Tsetattr valid bits
SETATTR_MODE, SETATTR_UID, SETATTR_GID, SETATTR_SIZE = 0x1, 0x2, 0x4, 0x8
SETATTR_ATIME, SETATTR_MTIME, SETATTR_CTIME = 0x10, 0x20, 0x40
SETATTR_ATIME_SET, SETATTR_MTIME_SET = 0x80, 0x100

# Tlopen/Tlcreate flags (the protocol's own values; they equal Linux x86 values)
L_O_RDONLY, L_O_WRONLY, L_O_RDWR, L_O_ACCMODE = 0, 1, 2, 3
L_O_CREAT, L_O_EXCL, L_O_NOCTTY, L_O_TRUNC = 0o100, 0o200, 0o400, 0o1000
L_O_APPEND, L_O_NONBLOCK, L_O_DSYNC, L_O_FASYNC = 0o2000, 0o4000, 0o10000, 0o20000
L_O_DIRECT, L_O_LARGEFILE, L_O_DIRECTORY, L_O_NOFOLLOW = 0o40000, 0o100000, 0o200000, 0o400000
L_O_NOATIME, L_O_CLOEXEC, L_O_SYNC = 0o1000000, 0o2000000, 0o4000000

# Tunlinkat flags
AT_REMOVEDIR = 0x200

# Tlock / Tgetlock
LOCK_TYPE_RDLCK, LOCK_TYPE_WRLCK, LOCK_TYPE_UNLCK = 0, 1, 2
LOCK_SUCCESS, LOCK_BLOCKED, LOCK_ERROR, LOCK_GRACE = 0, 1, 2, 3
LOCK_FLAGS_BLOCK, LOCK_FLAGS_RECLAIM = 1, 2

# Txattrcreate flags (setxattr's)
XATTR_CREATE, XATTR_REPLACE = 1, 2

V9FS_MAGIC = 0x01021997


class Qid(NamedTuple):
    type: int
    version: int
    path: int

    def pack(self) -> bytes:
        return QID.pack(self.type, self.version, self.path)


QID = struct.Struct("<BIQ")
QID_SIZE = 13


class ProtocolError(ValueError):
    """A frame that does not parse: too short, a bad string, a count that overruns the body."""


# Field codes: b u8, h u16, i u32, q u64, s string, Q qid, W list of strings (u16 count),
# X list of qids (u16 count), D data (u32 count, then the bytes; always last).
SPECS: dict[int, tuple[tuple[str, str], ...]] = {
    RLERROR: (("ecode", "i"),),
    TSTATFS: (("fid", "i"),),
    RSTATFS: (("type", "i"), ("bsize", "i"), ("blocks", "q"), ("bfree", "q"), ("bavail", "q"),
              ("files", "q"), ("ffree", "q"), ("fsid", "q"), ("namelen", "i")),
    TLOPEN: (("fid", "i"), ("flags", "i")),
    RLOPEN: (("qid", "Q"), ("iounit", "i")),
    TLCREATE: (("fid", "i"), ("name", "s"), ("flags", "i"), ("mode", "i"), ("gid", "i")),
    RLCREATE: (("qid", "Q"), ("iounit", "i")),
    TSYMLINK: (("fid", "i"), ("name", "s"), ("symtgt", "s"), ("gid", "i")),
    RSYMLINK: (("qid", "Q"),),
    TMKNOD: (("dfid", "i"), ("name", "s"), ("mode", "i"), ("major", "i"), ("minor", "i"), ("gid", "i")),
    RMKNOD: (("qid", "Q"),),
    TRENAME: (("fid", "i"), ("dfid", "i"), ("name", "s")),
    RRENAME: (),
    TREADLINK: (("fid", "i"),),
    RREADLINK: (("target", "s"),),
    TGETATTR: (("fid", "i"), ("request_mask", "q")),
    RGETATTR: (("valid", "q"), ("qid", "Q"), ("mode", "i"), ("uid", "i"), ("gid", "i"), ("nlink", "q"),
               ("rdev", "q"), ("size", "q"), ("blksize", "q"), ("blocks", "q"),
               ("atime_sec", "q"), ("atime_nsec", "q"), ("mtime_sec", "q"), ("mtime_nsec", "q"),
               ("ctime_sec", "q"), ("ctime_nsec", "q"), ("btime_sec", "q"), ("btime_nsec", "q"),
               ("gen", "q"), ("data_version", "q")),
    TSETATTR: (("fid", "i"), ("valid", "i"), ("mode", "i"), ("uid", "i"), ("gid", "i"), ("size", "q"),
               ("atime_sec", "q"), ("atime_nsec", "q"), ("mtime_sec", "q"), ("mtime_nsec", "q")),
    RSETATTR: (),
    TXATTRWALK: (("fid", "i"), ("newfid", "i"), ("name", "s")),
    RXATTRWALK: (("size", "q"),),
    TXATTRCREATE: (("fid", "i"), ("name", "s"), ("attr_size", "q"), ("flags", "i")),
    RXATTRCREATE: (),
    TREADDIR: (("fid", "i"), ("offset", "q"), ("count", "i")),
    RREADDIR: (("data", "D"),),
    TFSYNC: (("fid", "i"),),  # newer kernels append datasync[4]; decode() tolerates the extra bytes
    RFSYNC: (),
    TLOCK: (("fid", "i"), ("type", "b"), ("flags", "i"), ("start", "q"), ("length", "q"),
            ("proc_id", "i"), ("client_id", "s")),
    RLOCK: (("status", "b"),),
    TGETLOCK: (("fid", "i"), ("type", "b"), ("start", "q"), ("length", "q"), ("proc_id", "i"),
               ("client_id", "s")),
    RGETLOCK: (("type", "b"), ("start", "q"), ("length", "q"), ("proc_id", "i"), ("client_id", "s")),
    TLINK: (("dfid", "i"), ("fid", "i"), ("name", "s")),
    RLINK: (),
    TMKDIR: (("dfid", "i"), ("name", "s"), ("mode", "i"), ("gid", "i")),
    RMKDIR: (("qid", "Q"),),
    TRENAMEAT: (("olddirfid", "i"), ("oldname", "s"), ("newdirfid", "i"), ("newname", "s")),
    RRENAMEAT: (),
    TUNLINKAT: (("dirfd", "i"), ("name", "s"), ("flags", "i")),
    RUNLINKAT: (),
    TVERSION: (("msize", "i"), ("version", "s")),
    RVERSION: (("msize", "i"), ("version", "s")),
    TAUTH: (("afid", "i"), ("uname", "s"), ("aname", "s"), ("n_uname", "i")),
    RAUTH: (("aqid", "Q"),),
    TATTACH: (("fid", "i"), ("afid", "i"), ("uname", "s"), ("aname", "s"), ("n_uname", "i")),
    RATTACH: (("qid", "Q"),),
    TFLUSH: (("oldtag", "h"),),
    RFLUSH: (),
    TWALK: (("fid", "i"), ("newfid", "i"), ("wnames", "W")),
    RWALK: (("wqids", "X"),),
    TREAD: (("fid", "i"), ("offset", "q"), ("count", "i")),
    RREAD: (("data", "D"),),
    TWRITE: (("fid", "i"), ("offset", "q"), ("data", "D")),
    RWRITE: (("count", "i"),),
    TCLUNK: (("fid", "i"),),
    RCLUNK: (),
    TREMOVE: (("fid", "i"),),
    RREMOVE: (),
}

NAMES: dict[int, str] = {
    value: name for name, value in globals().items()
    if isinstance(value, int) and name[:1] in "TR" and name[1:].isalpha() and name.isupper() and value in SPECS
}

_INTS = {"b": struct.Struct("<B"), "h": struct.Struct("<H"), "i": struct.Struct("<I"), "q": struct.Struct("<Q")}
_U16 = _INTS["h"]
_U32 = _INTS["i"]


def pack_string(text: str | bytes) -> bytes:
    raw = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else bytes(text)
    if len(raw) > 0xFFFF:
        raise ValueError("9P string longer than 65535 bytes")
    return _U16.pack(len(raw)) + raw


def encode_body(mtype: int, fields: dict[str, Any]) -> bytes:
    """The body of message ``mtype`` from its named fields."""
    out: list[bytes] = []
    for name, code in SPECS[mtype]:
        value = fields[name]
        if code in _INTS:
            out.append(_INTS[code].pack(value))
        elif code == "s":
            out.append(pack_string(value))
        elif code == "Q":
            out.append(QID.pack(*value))
        elif code == "W":
            out.append(_U16.pack(len(value)))
            out.extend(pack_string(v) for v in value)
        elif code == "X":
            out.append(_U16.pack(len(value)))
            out.extend(QID.pack(*q) for q in value)
        else:  # "D"
            out.append(_U32.pack(len(value)))
            out.append(bytes(value))
    return b"".join(out)


def frame(mtype: int, tag: int, body: bytes = b"") -> bytes:
    return HEADER.pack(HEADER_SIZE + len(body), mtype, tag) + body


def encode(mtype: int, tag: int, **fields: Any) -> bytes:
    """A whole frame of message ``mtype``."""
    return frame(mtype, tag, encode_body(mtype, fields))


def read_string(buf: bytes | memoryview, pos: int) -> tuple[str, int]:
    if pos + 2 > len(buf):
        raise ProtocolError("string length past the end of the message")
    (n,) = _U16.unpack_from(buf, pos)
    pos += 2
    if pos + n > len(buf):
        raise ProtocolError("string past the end of the message")
    return str(buf[pos:pos + n], "utf-8", "surrogateescape"), pos + n


def decode_body(mtype: int, body: bytes | memoryview, exact: bool = False) -> dict[str, Any]:
    """Named fields of message ``mtype``; ProtocolError when the body is short (or, if
    ``exact``, long)."""
    spec = SPECS.get(mtype)
    if spec is None:
        raise ProtocolError(f"unknown message type {mtype}")
    out: dict[str, Any] = {}
    pos = 0
    size = len(body)
    try:
        for name, code in spec:
            if code in _INTS:
                st = _INTS[code]
                out[name] = st.unpack_from(body, pos)[0]
                pos += st.size
            elif code == "s":
                out[name], pos = read_string(body, pos)
            elif code == "Q":
                out[name] = Qid(*QID.unpack_from(body, pos))
                pos += QID_SIZE
            elif code == "W":
                (n,) = _U16.unpack_from(body, pos)
                pos += 2
                if n > MAXWELEM:
                    raise ProtocolError(f"walk of {n} names (at most {MAXWELEM})")
                names = []
                for _ in range(n):
                    s, pos = read_string(body, pos)
                    names.append(s)
                out[name] = names
            elif code == "X":
                (n,) = _U16.unpack_from(body, pos)
                pos += 2
                qids = []
                for _ in range(n):
                    qids.append(Qid(*QID.unpack_from(body, pos)))
                    pos += QID_SIZE
                out[name] = qids
            else:  # "D"
                (n,) = _U32.unpack_from(body, pos)
                pos += 4
                if pos + n > size:
                    raise ProtocolError("data count past the end of the message")
                out[name] = bytes(body[pos:pos + n])
                pos += n
    except struct.error as exc:
        raise ProtocolError(f"{NAMES.get(mtype, mtype)}: message too short") from exc
    if pos > size:
        raise ProtocolError(f"{NAMES.get(mtype, mtype)}: message too short")
    if exact and pos != size:
        raise ProtocolError(f"{NAMES.get(mtype, mtype)}: {size - pos} trailing bytes")
    return out


class Dirent(NamedTuple):
    qid: Qid
    offset: int
    type: int
    name: str


DIRENT_FIXED = QID_SIZE + 8 + 1 + 2


def pack_dirent(qid: Qid, offset: int, dtype: int, name: bytes) -> bytes:
    return QID.pack(*qid) + struct.pack("<QBH", offset, dtype, len(name)) + name


def unpack_dirents(data: bytes) -> list[Dirent]:
    out: list[Dirent] = []
    pos = 0
    while pos < len(data):
        qid = Qid(*QID.unpack_from(data, pos))
        offset, dtype = struct.unpack_from("<QB", data, pos + QID_SIZE)
        name, pos = read_string(data, pos + QID_SIZE + 9)
        out.append(Dirent(qid, offset, dtype, name))
    return out
