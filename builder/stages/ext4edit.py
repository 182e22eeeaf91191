"""Laying files into an ext4 file system inside an image file, with debugfs (no mount).

A root partition is made once per root file system and shared by every image and host that
uses it; what differs per image (the overlay: host facts, users, on-host code, secrets) is
written into the image's copy of it afterwards. That keeps an overlay change, or a sixteenth
host, down to a sparse copy and a few hundred debugfs commands instead of a new mkfs.

debugfs itself (quoting, its harmless complaints, the placing script) is core.disk.ext4's, the
installer's wrapper; what is the builder's alone is here: an overlay tarball as placements,
and a stage log of what was placed.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

from builder.tools import ToolError
from core.disk.ext4 import Ext4, Put
from core.disk.tools import InstallError

__all__ = ["Put", "place", "puts_from_tar"]


def puts_from_tar(tar_path: Path, scratch: Path) -> list[Put]:
    """The overlay tarball as placements; its files are unpacked (contents only) into ``scratch``."""
    puts: list[Put] = []
    with tarfile.open(tar_path, "r:") as tar:
        for i, m in enumerate(tar):
            path = "/" + m.name.removeprefix("./").strip("/")
            if path == "/":
                continue
            if m.isdir():
                puts.append(Put(path, "dir", m.mode & 0o7777, m.uid, m.gid))
            elif m.issym():
                puts.append(Put(path, "link", target=m.linkname))
            elif m.isreg():
                src = scratch / f"{i}"
                f = tar.extractfile(m)
                assert f is not None
                src.write_bytes(f.read())
                puts.append(Put(path, "file", m.mode & 0o7777, m.uid, m.gid, src=src))
    return puts


def place(image: Path, offset: int, puts: list[Put], log: Path) -> None:
    """Apply ``puts`` to the ext4 file system starting ``offset`` bytes into ``image``; a
    failure is a :class:`ToolError` pointing at the stage's ``log``."""
    if not puts:
        return
    fs = Ext4(str(image), offset, stage="overlay")
    with open(log, "a", encoding="utf-8") as lf:
        lf.write(f"$ debugfs -w -f - '{fs.target}'  # {len(puts)} placement(s)\n")
    try:
        fs.place(puts)
    except InstallError as err:
        with open(log, "a", encoding="utf-8") as lf:
            lf.write(f"{err}\n")
        raise ToolError(f"debugfs could not place the overlay: {err}", log) from err
