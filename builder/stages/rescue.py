"""The rescue system: a whole (trimmed) root packed as the initramfs, so it runs from RAM.

The kernel unpacks the cpio into its tmpfs root and starts systemd from it
(``rdinit=/sbin/init``); nothing is read from the stick after that. Written in Python from
the tarballs (owners kept, no extraction, rootless), compressed with zstd, which Debian's
kernels unpack.
"""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from builder.stages.kind import StageContext, StageKind
from builder.tools import ToolError

if TYPE_CHECKING:
    from builder.plan import Stage

# Not needed by a rescue shell and most of the weight: GPU, sound, wireless, media drivers,
# the regular initramfs and kernel image (the bootloader loads those from the ESP).
PRUNE_PREFIXES = (
    "boot/", "usr/share/doc/", "usr/share/man/", "usr/share/locale/", "var/cache/apt/",
    "usr/share/zoneinfo/right/",
)
PRUNE_MODULE_DIRS = (
    "kernel/drivers/gpu/", "kernel/sound/", "kernel/drivers/net/wireless/", "kernel/drivers/media/",
    "kernel/drivers/infiniband/", "kernel/drivers/staging/", "kernel/net/wireless/", "kernel/net/mac80211/",
    "kernel/drivers/iio/", "kernel/drivers/isdn/", "kernel/drivers/bluetooth/", "kernel/net/bluetooth/",
    "kernel/drivers/net/ethernet/mellanox/", "kernel/drivers/scsi/qla2xxx/", "kernel/drivers/scsi/lpfc/",
    "kernel/fs/ocfs2/", "kernel/fs/gfs2/", "kernel/drivers/input/touchscreen/",
)


def _pruned(name: str) -> bool:
    if name.startswith(PRUNE_PREFIXES):
        return True
    if name.startswith("usr/lib/modules/"):
        rest = name.split("/", 4)
        return len(rest) == 5 and rest[4].startswith(PRUNE_MODULE_DIRS)
    return False


class _Newc:
    """A minimal writer of the kernel's initramfs format (cpio "newc")."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.ino = 1
        self.written = 0

    def _pad(self) -> None:
        pad = (-self.written) % 4
        if pad:
            self.out.write(b"\0" * pad)
            self.written += pad

    def add(self, name: str, mode: int, uid: int, gid: int, mtime: int, data: bytes | BinaryIO, size: int,
            nlink: int = 1) -> None:
        encoded = name.encode() + b"\0"
        header = (
            "070701" + "".join(f"{v:08x}" for v in (
                self.ino, mode, uid, gid, nlink, mtime, size, 0, 0, 0, 0, len(encoded), 0))
        ).encode()
        self.ino += 1
        self.out.write(header + encoded)
        self.written += len(header) + len(encoded)
        self._pad()
        if isinstance(data, bytes):
            self.out.write(data)
        else:
            left = size
            while left:
                chunk = data.read(min(left, 1 << 20))
                if not chunk:
                    raise OSError(f"{name}: short read")
                self.out.write(chunk)
                left -= len(chunk)
        self.written += size
        self._pad()

    def trailer(self) -> None:
        self.add("TRAILER!!!", 0, 0, 0, 0, b"", 0)


def _add_tar(cpio: _Newc, tar_path: Path, seen: set[str], override: set[str]) -> None:
    with tarfile.open(tar_path, "r:") as tar:
        for m in tar:
            name = m.name.removeprefix("./").rstrip("/")
            if not name or _pruned(name) or name in override or name in seen:
                continue
            seen.add(name)
            perm = m.mode & 0o7777
            if m.isdir():
                cpio.add(name, 0o040000 | perm, m.uid, m.gid, int(m.mtime), b"", 0, nlink=2)
            elif m.issym():
                target = m.linkname.encode()
                cpio.add(name, 0o120000 | 0o777, m.uid, m.gid, int(m.mtime), target, len(target))
            elif m.islnk():
                # Hard links become copies: simple, and rare in a Debian root.
                try:
                    src = tar.getmember(m.linkname)
                except KeyError:
                    continue
                f = tar.extractfile(src)
                if f is None:
                    continue
                cpio.add(name, 0o100000 | perm, m.uid, m.gid, int(m.mtime), f, src.size)
            elif m.isreg():
                f = tar.extractfile(m)
                if f is None:
                    continue
                cpio.add(name, 0o100000 | perm, m.uid, m.gid, int(m.mtime), f, m.size)
            elif m.ischr() or m.isblk():
                kind = 0o020000 if m.ischr() else 0o060000
                cpio.add(name, kind | perm, m.uid, m.gid, int(m.mtime), b"", 0)
            # FIFOs and sockets have no place in a fresh root.


def build_rescue(rootfs_tar: Path, overlay_tar: Path, out: Path, log: Path) -> dict[str, int]:
    """Write ``out``: zstd-compressed newc cpio of the root with the overlay laid over it."""
    with open(log, "a", encoding="utf-8") as lf:
        lf.write(f"packing {rootfs_tar} + {overlay_tar} into {out} (cpio newc | zstd)\n")
    with open(out, "wb") as dest, open(log, "ab") as errlog:
        proc = subprocess.Popen(["zstd", "-q", "-T0", "-6", "-c"], stdin=subprocess.PIPE, stdout=dest,
                                stderr=errlog)
        assert proc.stdin is not None
        try:
            cpio = _Newc(proc.stdin)
            seen: set[str] = set()
            # Overlay first so its files win; the root then fills in everything else.
            _add_tar(cpio, overlay_tar, seen, set())
            _add_tar(cpio, rootfs_tar, seen, set())
            cpio.trailer()
            proc.stdin.close()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if proc.wait() != 0:
            raise ToolError("zstd failed while packing the rescue system", log)
    return {"uncompressed": cpio.written, "size": out.stat().st_size}


def run(ctx: StageContext, stage: Stage, work: Path, log: Path) -> tuple[dict[str, Any], Path]:
    rootfs, overlay = ctx.dep(stage, "rootfs"), ctx.dep(stage, "overlay")
    assert rootfs.path is not None and overlay.path is not None
    out = work / "rescue.cpio.zst"
    return build_rescue(rootfs.path, overlay.path, out, log), out


KIND = StageKind(name="rescue", version=1, tools=(), run=run)
