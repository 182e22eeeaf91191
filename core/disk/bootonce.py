"""The next boot only: one OS of the menu, once, then the default again. On a disk or an image
file whose ESP holds our menus (core/disk/bootmenu.py), without mounting anything.

UEFI (shim, then Debian's signed GRUB): our grub.cfg loads ``next_entry`` from the GRUB
environment block ``EFI/debian/grubenv`` and, when it is set, boots that entry and clears it
with ``save_env`` before anything else: the same contract as ``grub-reboot``.

Legacy BIOS (syslinux): the boot-once command of syslinux's auxiliary data vector (ADV), the
last two 512-byte sectors of ``ldlinux.sys``. ldlinux runs that command (a label of our menu)
and clears it on disk before it loads the kernel, as ``extlinux --once`` does. The mtools
installer cannot set it (``--once`` is not implemented there), so the two sectors are written
in place: the file's clusters come from the FAT (mshowfat), and the file's own data is never
moved (its sectors were patched into the boot code at install).
"""

from __future__ import annotations

import os
import re
import struct
import tempfile

from core.disk.bootmenu import Fat
from core.disk.gpt import ESP_TYPE, read_table
from core.disk.tools import MTOOLS_ENV, InstallError, fat, run

GRUBENV = "EFI/debian/grubenv"
GRUBENV_SIZE = 1024
GRUBENV_HEAD = b"# GRUB Environment Block\n"
LDLINUX = "syslinux/ldlinux.sys"
ADV_SIZE = 512
ADV_MAGIC1, ADV_MAGIC2, ADV_MAGIC3 = 0x5A2D2FA5, 0xA3041767, 0xDD28BF64
ADV_END, ADV_BOOTONCE = 0, 1
STAGE = "boot-once"


def grubenv_block(values: dict[str, str]) -> bytes:
    """A GRUB environment block: the header, NAME=VALUE lines, '#' padding to 1024 bytes."""
    body = GRUBENV_HEAD + b"".join(f"{k}={v}\n".encode() for k, v in values.items())
    if len(body) > GRUBENV_SIZE:
        raise ValueError("the GRUB environment block is full")
    return body + b"#" * (GRUBENV_SIZE - len(body))


def parse_grubenv(block: bytes) -> dict[str, str]:
    out = {}
    for line in block.split(b"\n")[1:]:
        if line.startswith(b"#") or b"=" not in line:
            continue
        k, _, v = line.decode("utf-8", "replace").partition("=")
        out[k] = v
    return out


def adv_block(records: dict[int, bytes]) -> bytes:
    """Both copies of an ADV holding ``records`` (tag -> data), with syslinux's checksum."""
    data = b"".join(bytes((tag, len(v))) + v for tag, v in records.items() if v)
    if len(data) > ADV_SIZE - 12 - 1:
        raise ValueError("the boot-once command does not fit syslinux's ADV")
    area = data + bytes((ADV_END,)) + bytes(ADV_SIZE - 12 - len(data) - 1)
    words = struct.unpack(f"<{len(area) // 4}I", area)
    csum = (ADV_MAGIC2 - sum(words)) & 0xFFFFFFFF
    one = struct.pack("<II", ADV_MAGIC1, csum) + area + struct.pack("<I", ADV_MAGIC3)
    return one + one


def parse_adv(block: bytes) -> dict[int, bytes] | None:
    """The records of the first valid copy of an ADV, or None when neither copy is valid."""
    for copy in (block[:ADV_SIZE], block[ADV_SIZE:2 * ADV_SIZE]):
        head, csum = struct.unpack_from("<II", copy)
        (tail,) = struct.unpack_from("<I", copy, ADV_SIZE - 4)
        words = struct.unpack_from(f"<{(ADV_SIZE - 12) // 4}I", copy, 8)
        if head != ADV_MAGIC1 or tail != ADV_MAGIC3 or (csum + sum(words)) & 0xFFFFFFFF != ADV_MAGIC2:
            continue
        records, i, area = {}, 0, copy[8:ADV_SIZE - 4]
        while i + 1 < len(area) and area[i] != ADV_END:
            tag, size = area[i], area[i + 1]
            records[tag] = area[i + 2:i + 2 + size]
            i += 2 + size
        return records
    return None


class EspLocator:
    """The ESP of a disk (device or image file) and the byte ranges of a file in its FAT."""

    def __init__(self, disk: str) -> None:
        self.disk = disk
        esp = next((p for p in read_table(disk, STAGE).parts if p.type == ESP_TYPE), None)
        if esp is None:
            raise InstallError(STAGE, f"{disk} has no EFI system partition")
        self.offset = esp.start
        self.fat = Fat(disk, esp.start, STAGE)

    def geometry(self) -> tuple[int, int]:
        """(bytes per cluster, byte offset of cluster 2), from the FAT's boot sector."""
        with open(self.disk, "rb") as f:
            f.seek(self.offset)
            bs = f.read(512)
        bps, spc, reserved, nfats, root_entries = struct.unpack_from("<HBHBH", bs, 11)
        fat16 = struct.unpack_from("<H", bs, 22)[0]
        fat_size = fat16 or struct.unpack_from("<I", bs, 36)[0]
        root_sectors = (root_entries * 32 + bps - 1) // bps
        return bps * spc, self.offset + (reserved + nfats * fat_size + root_sectors) * bps

    def extents(self, path: str) -> list[tuple[int, int]]:
        """(disk byte offset, length) of each run of the file's clusters, in file order."""
        out = run(STAGE, ["mshowfat", "-i", fat(self.disk, self.offset), f"::/{path}"], env=MTOOLS_ENV)
        size, data_start = self.geometry()
        runs = []
        for a, b in re.findall(r"<(\d+)(?:-(\d+))?>", out):
            first, last = int(a), int(b or a)
            runs.append((data_start + (first - 2) * size, (last - first + 1) * size))
        if not runs:
            raise InstallError(STAGE, f"no clusters listed for {path}: {out.strip()}")
        return runs

    def file_size(self, path: str) -> int:
        with tempfile.TemporaryDirectory(prefix="clusterctl-bootonce.") as tmp:
            local = os.path.join(tmp, "f")
            run(STAGE, ["mcopy", "-n", "-i", fat(self.disk, self.offset), f"::/{path}", local], env=MTOOLS_ENV)
            return os.path.getsize(local)

    def tail_offsets(self, path: str, count: int) -> list[int]:
        """Disk byte offsets of the file's last ``count`` 512-byte sectors."""
        size = self.file_size(path)
        if size < count * 512 or size % 512:
            raise InstallError(STAGE, f"{path} is {size} bytes: not a syslinux ldlinux.sys with its ADV")
        offsets = []
        for pos in range(size - count * 512, size, 512):
            for start, length in self.extents(path):
                if pos < length:
                    offsets.append(start + pos)
                    break
                pos -= length
        return offsets


def set_grub_next(disk: str, os_name: str | None) -> None:
    """GRUB (UEFI): boot ``os_name`` next time only (None: clear)."""
    block = grubenv_block({"next_entry": os_name} if os_name else {})
    with tempfile.TemporaryDirectory(prefix="clusterctl-bootonce.") as tmp:
        EspLocator(disk).fat.write(GRUBENV, block.decode("ascii"), tmp)


def grub_next(disk: str) -> str | None:
    fat_fs = EspLocator(disk).fat
    if GRUBENV.rsplit("/", 1)[1] not in fat_fs.names("/EFI/debian"):
        return None
    return parse_grubenv(fat_fs.read(f"/{GRUBENV}").encode()).get("next_entry") or None


def _adv_sectors(disk: str) -> list[int]:
    return EspLocator(disk).tail_offsets(LDLINUX, 2)


def set_syslinux_once(disk: str, os_name: str | None) -> None:
    """syslinux (BIOS): run label ``os_name`` on the next boot only (None: clear)."""
    sectors = _adv_sectors(disk)
    block = adv_block({ADV_BOOTONCE: os_name.encode()} if os_name else {})
    fd = os.open(disk, os.O_RDWR)
    try:
        for i, at in enumerate(sectors):
            os.pwrite(fd, block[i * ADV_SIZE:(i + 1) * ADV_SIZE], at)
        os.fsync(fd)
    finally:
        os.close(fd)


def syslinux_once(disk: str) -> str | None:
    fd = os.open(disk, os.O_RDONLY)
    try:
        block = b"".join(os.pread(fd, ADV_SIZE, at) for at in _adv_sectors(disk))
    finally:
        os.close(fd)
    records = parse_adv(block)
    if records is None:
        raise InstallError(STAGE, f"{disk}: syslinux's ADV (end of {LDLINUX}) is not valid")
    once = records.get(ADV_BOOTONCE)
    return once.decode("utf-8", "replace") if once else None


def set_next_boot(disk: str, os_name: str, uefi: bool) -> None:
    """The running firmware's loader boots ``os_name`` next time only."""
    (set_grub_next if uefi else set_syslinux_once)(disk, os_name)
