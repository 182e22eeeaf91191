"""Partition tables through sfdisk: read one as data, write one from a plan."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass

from core.disk.tools import InstallError, run

SECTOR = 512
MiB = 1024 * 1024
GPT_TAIL = 33 * SECTOR  # backup entries and header at the end of the disk
# GPT partition type GUIDs (the one definition; the builder imports them from here).
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
ROOT_X86_64_TYPE = "4F68BCE3-E8CD-4C1D-96E7-FBCAF984B709"
LINUX_DATA_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"  # a stick's ISO partition
# A stick's CLUSTER partition (the claim ledger): basic data, so any OS shows the FAT file system.
BASIC_DATA_TYPE = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
CLAIMS_NAME = "CLUSTER"  # that partition's GPT name and its FAT label, written by the builder, read by first boot


@dataclass
class Part:
    name: str
    start: int  # bytes
    size: int  # bytes
    type: str
    uuid: str
    legacy_boot: bool = False
    node: str = ""  # the partition's device name (informational)


@dataclass
class Table:
    label: str | None  # "gpt", "dos" or None (no table)
    disk_id: str | None
    parts: list[Part]

    def by_name(self, name: str) -> Part | None:
        return next((p for p in self.parts if p.name == name), None)


def disk_size(path: str) -> int:
    """Bytes of a block device or a plain file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        return os.lseek(fd, 0, os.SEEK_END) if stat.S_ISBLK(st.st_mode) else st.st_size
    finally:
        os.close(fd)


def read_table(disk: str, stage: str = "read") -> Table:
    """The disk's partition table; ``label`` None when it has none."""
    text = run(stage, ["sfdisk", "--json", disk], ok=(0, 1))
    if not text.strip():
        return Table(None, None, [])
    try:
        pt = json.loads(text)["partitiontable"]
    except (ValueError, KeyError) as e:
        raise InstallError(stage, f"sfdisk gave an unreadable table for {disk}: {e}") from None
    ssz = int(pt.get("sectorsize", SECTOR))
    parts = [Part(name=p.get("name", ""), start=int(p["start"]) * ssz, size=int(p["size"]) * ssz,
                  type=str(p.get("type", "")).upper(), uuid=str(p.get("uuid", "")).lower(),
                  legacy_boot="LegacyBIOSBootable" in str(p.get("attrs", "")), node=p.get("node", ""))
             for p in pt.get("partitions", [])]
    return Table(pt.get("label"), str(pt.get("id", "")).lower() or None, parts)


def script(parts: list[Part], disk_id: str) -> str:
    lines = ["label: gpt", f"label-id: {disk_id}", "unit: sectors", "first-lba: 2048", ""]
    for p in parts:
        attrs = ', attrs="LegacyBIOSBootable"' if p.legacy_boot else ""
        lines.append(f'start={p.start // SECTOR}, size={p.size // SECTOR}, type={p.type}, uuid={p.uuid}, '
                     f'name="{p.name}"{attrs}')
    return "\n".join(lines) + "\n"


def write_table(disk: str, parts: list[Part], disk_id: str) -> None:
    """Write a fresh GPT. The kernel is not told (the install reboots; offsets are used meanwhile)."""
    run("partition", ["sfdisk", "--no-reread", "--no-tell-kernel", "-q", "--wipe", "always", disk],
        stdin=script(parts, disk_id).encode())
