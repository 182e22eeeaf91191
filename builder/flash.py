"""``clusterctl flash``: write an image to a removable disk using its block map, then verify.

Safety first: the target is described (model, size, what is on it) before anything is
written; a mounted disk is always refused; a disk that is not removable (or a regular file)
needs ``--force``. Only the mapped blocks are written; each range's sha256 is checked both
when read from the image and when read back from the target.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from builder.bmap import Bmap, BmapError, compute_bmap, read_bmap

CHUNK = 4 << 20


class FlashError(RuntimeError):
    pass


class FlashRefused(FlashError):
    """The target is not one we write to without being told to (or at all)."""


@dataclass
class Target:
    path: Path
    kind: str  # "disk" | "file" | "new file"
    size: int
    model: str = ""
    removable: bool = False
    holds: list[str] = field(default_factory=list)
    mounted: list[str] = field(default_factory=list)

    def describe(self) -> str:
        gib = self.size / 1024**3
        what = {"disk": "disk", "file": "regular file", "new file": "new file"}[self.kind]
        head = f"{self.path}: {what}"
        if self.model:
            head += f", {self.model}"
        head += f", {gib:.1f} GiB" if self.size else ""
        if self.kind == "disk":
            head += ", removable" if self.removable else ", NOT removable"
        lines = [head]
        lines += [f"  holds: {h}" for h in self.holds] or ["  holds: nothing recognisable"]
        lines += [f"  MOUNTED: {m}" for m in self.mounted]
        return "\n".join(lines)


def _read(p: Path) -> str:
    try:
        return p.read_text().strip()
    except OSError:
        return ""


def _mounts_of(devnames: set[str]) -> list[str]:
    out = []
    with open("/proc/self/mounts", encoding="utf-8") as f:
        for line in f:
            src, mnt = line.split()[:2]
            if src.startswith("/dev/") and os.path.basename(os.path.realpath(src)) in devnames:
                out.append(f"{src} on {mnt}")
    return out


def inspect_target(path: Path) -> Target:
    if not path.exists():
        return Target(path, "new file", 0)
    st = path.stat()
    if stat.S_ISREG(st.st_mode):
        holds = _partition_summary(path)
        return Target(path, "file", st.st_size, holds=holds)
    if not stat.S_ISBLK(st.st_mode):
        raise FlashRefused(f"{path} is neither a disk nor a regular file")
    name = os.path.basename(os.path.realpath(path))
    sysdir = Path("/sys/class/block") / name
    if (sysdir / "partition").exists():
        parent = sysdir.resolve().parent.name
        raise FlashRefused(f"{path} is a partition; give the whole disk (/dev/{parent})")
    size = int(_read(sysdir / "size") or 0) * 512
    model = " ".join(x for x in (_read(sysdir / "device" / "vendor"), _read(sysdir / "device" / "model")) if x)
    # USB disks that claim to be fixed (many USB SSDs) are still removable media here.
    removable = _read(sysdir / "removable") == "1" or "/usb" in str(sysdir.resolve())
    names = {name} | {p.name for p in sysdir.iterdir() if p.name.startswith(name)}
    return Target(path, "disk", size, model, removable, _lsblk(path), _mounts_of(names))


def _lsblk(path: Path) -> list[str]:
    try:
        out = subprocess.run(["lsblk", "-J", "-b", "-o", "NAME,SIZE,FSTYPE,LABEL,PARTLABEL", str(path)],
                             capture_output=True, text=True, timeout=20)
        devs = json.loads(out.stdout).get("blockdevices", [])
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return []
    rows = []
    for d in devs:
        for c in d.get("children") or []:
            label = c.get("label") or c.get("partlabel") or ""
            rows.append(f"{c['name']} {int(c.get('size') or 0) / 1024**3:.1f} GiB {c.get('fstype') or '?'} {label}")
    return rows


def _partition_summary(path: Path) -> list[str]:
    try:
        out = subprocess.run(["sfdisk", "--json", str(path)], capture_output=True, text=True, timeout=20)
        table = json.loads(out.stdout)["partitiontable"]
    except (OSError, ValueError, KeyError, subprocess.TimeoutExpired):
        return []
    return [f"{p.get('name') or p['node']} ({p['size'] * 512 / 1024**3:.1f} GiB)" for p in table.get("partitions", [])]


def check_allowed(target: Target, image_size: int, force: bool) -> None:
    if target.mounted:
        raise FlashRefused(f"{target.path} is in use (mounted); unmount it first")
    if target.kind == "disk" and not target.removable and not force:
        raise FlashRefused(f"{target.path} is not a removable disk; refusing (--force to write it anyway)")
    if target.kind in ("file", "new file") and not force:
        raise FlashRefused(f"{target.path} is not a disk; refusing (--force to write an image file)")
    if target.kind == "disk" and target.size < image_size:
        raise FlashRefused(f"{target.path} holds {target.size} bytes; the image needs {image_size}")


def load_map(image: Path) -> Bmap:
    bmap_path = image.with_name(image.name + ".bmap")
    if bmap_path.exists():
        try:
            bmap = read_bmap(bmap_path)
        except BmapError as err:
            raise FlashError(str(err)) from err
        if bmap.image_size != image.stat().st_size:
            raise FlashError(f"{bmap_path} describes {bmap.image_size} bytes but {image} has "
                             f"{image.stat().st_size}; they are not from the same build")
        return bmap
    return compute_bmap(image)  # no .bmap: the image's own sparse map serves


def flash(image: Path, device: Path, *, force: bool = False, assume_yes: bool = False, verify: bool = True,
          console: Console | None = None) -> Target:
    console = console or Console(stderr=True)
    if not image.is_file():
        raise FlashRefused(f"{image}: no such image")
    with open(image, "rb") as f:
        if f.read(4) == b"QFI\xfb":
            raise FlashRefused(f"{image} is a qcow2 image; flash a raw (.img) image")
    bmap = load_map(image)
    target = inspect_target(device)
    console.print(target.describe())
    check_allowed(target, bmap.image_size, force)
    if not assume_yes:
        if not sys.stdin.isatty():
            raise FlashRefused("not asking on a non-interactive input: add --yes to write")
        answer = console.input(f"Write {image.name} to {device}? Everything on it is lost. [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            raise FlashRefused("not written")
    total = bmap.mapped_blocks * bmap.block_size
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if target.kind == "disk" else 0)
    if target.kind == "disk":
        flags &= ~os.O_CREAT
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("writing", total=total)
        with open(image, "rb") as src:
            fd = os.open(device, flags, 0o644)
            try:
                if target.kind != "disk":
                    os.ftruncate(fd, 0)
                    os.ftruncate(fd, bmap.image_size)
                for first, last, digest in bmap.ranges:
                    h = hashlib.sha256()
                    off, end = first * bmap.block_size, min((last + 1) * bmap.block_size, bmap.image_size)
                    src.seek(off)
                    while off < end:
                        chunk = src.read(min(CHUNK, end - off))
                        if not chunk:
                            raise FlashError(f"{image} ends early at {off}")
                        h.update(chunk)
                        os.pwrite(fd, chunk, off)
                        off += len(chunk)
                        progress.advance(task, len(chunk))
                    if digest and h.hexdigest() != digest:
                        raise FlashError(f"{image} does not match its bmap at blocks {first}-{last}: "
                                         "the image is damaged")
                os.fsync(fd)
            finally:
                os.close(fd)
        if verify:
            task2 = progress.add_task("verifying", total=total)
            fd = os.open(device, os.O_RDONLY)
            try:
                # Read what the device holds, not what the page cache remembers writing.
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                for first, last, digest in bmap.ranges:
                    h = hashlib.sha256()
                    off, end = first * bmap.block_size, min((last + 1) * bmap.block_size, bmap.image_size)
                    while off < end:
                        chunk = os.pread(fd, min(CHUNK, end - off), off)
                        if not chunk:
                            raise FlashError(f"{device} ends early at {off}")
                        h.update(chunk)
                        off += len(chunk)
                        progress.advance(task2, len(chunk))
                    if digest and h.hexdigest() != digest:
                        raise FlashError(f"verification failed: {device} differs from {image} at blocks "
                                         f"{first}-{last}")
            finally:
                os.close(fd)
    console.print(f"[green]✓[/] wrote {total / 1024**2:.0f} MiB of {image.name} to {device}"
                  + (" and verified it" if verify else ""))
    return target
