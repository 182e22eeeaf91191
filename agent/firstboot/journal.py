"""The install journal: one sector in the gap between the GPT and the first partition.

It is the first thing written to the target and the last thing changed, so a disk cut off
mid-install says so, in a place no partition table, file system or boot loader uses
(LBA 1024; GPT ends at LBA 33, partitions start at LBA 2048, boot code lives in LBA 0). A
disk whose journal says ``incomplete`` holds nothing but our own unfinished install: the
next run may start it again without asking. One sector is written at once, so a power cut
leaves either the old or the new record.
"""

from __future__ import annotations

import json
import os
from typing import Any

OFFSET = 1024 * 512
SIZE = 512
MAGIC = b"CLUSTERCTL-INSTALL-JOURNAL v1\n"


def read(disk: str) -> dict[str, Any] | None:
    """The journal record on ``disk``, or None when there is none (or it cannot be read)."""
    try:
        fd = os.open(disk, os.O_RDONLY)
    except OSError:
        return None
    try:
        raw = os.pread(fd, SIZE, OFFSET)
    except OSError:
        return None
    finally:
        os.close(fd)
    if not raw.startswith(MAGIC):
        return None
    body = raw[len(MAGIC):].split(b"\0", 1)[0]
    try:
        rec = json.loads(body)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) else None


def write(disk: str, record: dict[str, Any]) -> None:
    """Replace the journal record, durably (fsync) before the step it announces starts."""
    data = MAGIC + json.dumps(record, separators=(",", ":"), sort_keys=True).encode()
    if len(data) > SIZE:
        raise ValueError(f"journal record too long ({len(data)} bytes)")
    fd = os.open(disk, os.O_WRONLY)
    try:
        os.pwrite(fd, data.ljust(SIZE, b"\0"), OFFSET)
        os.fsync(fd)
    finally:
        os.close(fd)


def is_incomplete(rec: dict[str, Any] | None) -> bool:
    return bool(rec) and rec.get("state") == "incomplete"  # type: ignore[union-attr]
