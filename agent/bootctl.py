"""``boot OS`` on a host: its next boot only runs OS, then its default again
(core/disk/bootonce.py does it on the ESP of the disk the running root is on)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from core.disk import bootonce
from core.disk.tools import InstallError


def root_disk(mounts: str = "/proc/self/mounts") -> str:
    """The whole disk holding the running root (/dev/nvme0n1 for /dev/nvme0n1p2)."""
    with open(mounts, encoding="utf-8") as f:
        source = next((line.split()[0] for line in f if line.split()[1:2] == ["/"]), None)
    if source is None or not source.startswith("/dev/"):
        raise RuntimeError(f"the root is not on a disk partition ({source or 'not found'}): a system running "
                           "from RAM has no boot menu of its own")
    part = os.path.basename(os.path.realpath(source))
    parent = os.path.basename(os.path.dirname(os.path.realpath(f"/sys/class/block/{part}")))
    if parent in ("block", ""):
        raise RuntimeError(f"{source} is not a partition of a disk")
    return f"/dev/{parent}"


@dataclass
class BootControl:
    oses: Sequence[str]  # the OSes this host's menu offers (the profile's, default first)
    disk: str | None = None  # default: the disk of the running root
    uefi: bool | None = None  # default: as this boot's firmware

    def next_boot(self, os_name: str) -> str:
        """Boot ``os_name`` next time only; returns the disk whose menu was changed."""
        if os_name not in self.oses:
            raise ValueError(f"this host boots {', '.join(self.oses) or 'nothing of its own'}, not {os_name!r}")
        disk = self.disk or root_disk()
        uefi = os.path.isdir("/sys/firmware/efi") if self.uefi is None else self.uefi
        try:
            bootonce.set_next_boot(disk, os_name, uefi)
        except (InstallError, OSError) as e:
            raise RuntimeError(str(e)) from None
        return disk
