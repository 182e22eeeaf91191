"""The ``isos`` stage: a stick's ISO files whole in their own ext4 partition.

How they are booted (a GRUB per entry on the ESP) and how the partition is made are in
builder/stages/isoboot.py; this is the stage kind around :func:`build_iso_partition`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.stages.isoboot import build_iso_partition
from builder.stages.kind import StageContext, StageKind, file_sha256

if TYPE_CHECKING:
    from builder.plan import Stage


def run(ctx: StageContext, stage: Stage, work: Path, log: Path) -> tuple[dict[str, Any], Path]:
    out = work / "isos.ext4"
    rec = build_iso_partition({n: Path(p) for n, p in stage.params["sources"].items()}, stage.inputs["fs_uuid"],
                              out, work, log, ctx.on_line(stage))
    return {**rec, "sha256": file_sha256(out)}, out


KIND = StageKind(name="isos", version=2, tools=("mke2fs",), run=run)
