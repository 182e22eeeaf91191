"""The ``claims`` stage: a usb-installer stick's CLUSTER partition, where first boot keeps the
claim ledger (which box became which host; agent/firstboot/claims.py, docs/install.md).

A small FAT file system, made empty: first boot writes ``claims.json`` into it with mtools.
FAT, so that any computer the stick is plugged into can read and edit the ledger. Its volume
serial comes from the inputs, so equal inputs give equal bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.stages.kind import StageContext, StageKind, file_sha256
from builder.tools import ToolRunner

if TYPE_CHECKING:
    from builder.plan import Stage

SIZE_MIB = 8


def run(ctx: StageContext, stage: Stage, work: Path, log: Path) -> tuple[dict[str, Any], Path]:
    out = work / "claims.vfat"
    with open(out, "wb") as f:
        f.truncate(stage.inputs["size_mib"] * 1024 * 1024)
    ToolRunner(log, ctx.on_line(stage)).run(["mkfs.vfat", "-n", stage.inputs["label"], "-i",
                                             stage.inputs["volume_id"], str(out)])
    return {"size": out.stat().st_size, "sha256": file_sha256(out)}, out


KIND = StageKind(name="claims", version=1, tools=("mkfs.vfat",), run=run)
