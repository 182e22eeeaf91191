"""Disk images: a GPT written with sfdisk onto a sparse file, partitions copied into place.

The image is assembled under a temporary name beside its final path, with the host secrets
written into its root partitions through debugfs (no mount), its .bmap computed from the
sparse map, optionally converted to qcow2, and only then renamed into place.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.bmap import write_bmap
from builder.sparse import copy_sparse
from builder.stages.esp import GPTMBR
from builder.tools import LineSink, ToolRunner
from core.disk import gpt

SECTOR = 512
ALIGN = 1024 * 1024
GPT_TAIL = 33 * SECTOR  # backup GPT entries + header at the end of the disk


@dataclass
class PlacedPartition:
    name: str
    file: Path
    start: int  # bytes
    size: int
    type: str
    uuid: str
    legacy_boot: bool = False


class ImageTooSmall(ValueError):
    pass


def layout(parts: list[dict[str, Any]], files: dict[str, Path], image_size: int) -> list[PlacedPartition]:
    """Place partitions one after another from 1 MiB, each aligned to 1 MiB."""
    placed: list[PlacedPartition] = []
    pos = ALIGN
    for p in parts:
        f = files[p["stage"]]
        size = (f.stat().st_size + ALIGN - 1) // ALIGN * ALIGN
        placed.append(PlacedPartition(p["name"], f, pos, size, p["type"], p["uuid"], bool(p.get("legacy_boot"))))
        pos += size
    if pos + GPT_TAIL > image_size:
        need = (pos + GPT_TAIL + ALIGN - 1) // ALIGN
        raise ImageTooSmall(f"the image size ({image_size // ALIGN} MiB) is too small for its partitions: "
                            f"at least {need} MiB are needed")
    return placed


def sfdisk_script(placed: list[PlacedPartition], disk_uuid: str) -> str:
    """sfdisk's input for the layout: the same writer as first boot's (core.disk.gpt)."""
    return gpt.script([gpt.Part(name=p.name, start=p.start, size=p.size, type=p.type, uuid=p.uuid,
                                legacy_boot=p.legacy_boot) for p in placed], disk_uuid)  # fmt: skip


def assemble(placed: list[PlacedPartition], image_size: int, disk_uuid: str, tmp: Path, log: Path,
             on_line: LineSink | None = None) -> None:
    with open(tmp, "wb") as f:
        f.truncate(image_size)
    ToolRunner(log, on_line).run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(tmp)],
                                 stdin_bytes=sfdisk_script(placed, disk_uuid).encode())
    fd = os.open(tmp, os.O_WRONLY)
    try:
        # Legacy BIOS: syslinux's GPT-aware MBR code boots the legacy-bootable partition. Only
        # the code area is written; the protective MBR's partition table stays.
        os.pwrite(fd, GPTMBR.read_bytes()[:440], 0)
        for p in placed:
            copy_sparse(str(p.file), fd, p.start)
    finally:
        os.close(fd)


def finish(tmp: Path, final: Path, fmt: str, log: Path, on_line: LineSink | None = None) -> dict[str, Any]:
    """Bmap, qcow2 conversion, then rename into place. Returns facts for the manifest."""
    facts: dict[str, Any] = {}
    if fmt == "qcow2":
        qtmp = tmp.with_name(tmp.name + ".qcow2")
        ToolRunner(log, on_line).run(["qemu-img", "convert", "-O", "qcow2", str(tmp), str(qtmp)])
        tmp.unlink()
        os.replace(qtmp, final)
        facts["bmap"] = None
    else:
        bmap_path = final.with_name(final.name + ".bmap")
        bmap = write_bmap(tmp, bmap_path.with_name(bmap_path.name + ".next"))
        # No fsync: the renames guard against interrupted builds (the page cache outlives a
        # killed process); flushing 1 GB here would only slow every rebuild.
        os.replace(bmap_path.with_name(bmap_path.name + ".next"), bmap_path)
        os.replace(tmp, final)
        facts["bmap"] = {"path": bmap_path.name, "mapped_bytes": bmap.mapped_blocks * bmap.block_size}
    return facts
