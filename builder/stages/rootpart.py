"""A root partition as a plain file: ``mkfs.ext4 -d`` over the root tarball.

No loop device, no mount. e2fsprogs 1.47.0 (Debian bookworm) cannot read a tarball for
``-d`` (1.47.1 can), so the tarball is unpacked into scratch space first, owners kept:
as root directly, otherwise inside a user namespace with the caller's subordinate ids.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.stages.kind import StageContext, StageKind, file_sha256
from builder.tools import LineSink, ToolRunner, userns_prefix

if TYPE_CHECKING:
    from builder.plan import Stage

MiB = 1024 * 1024


def partition_size(content_bytes: int, headroom_mib: int) -> int:
    """Room for the files, ext4's own metadata (~8%), and free space for the running system."""
    size = int(content_bytes * 1.12) + headroom_mib * MiB
    return (size + MiB - 1) // MiB * MiB


def build_rootpart(rootfs_tar: Path, out: Path, work: Path, *, label: str, fs_uuid: str,
                   size: int, log: Path, on_line: LineSink | None = None, scratch: Path | None = None) -> None:
    """``scratch``: an empty folder to unpack into (RAM, say); by default one under ``work``."""
    tree = scratch or work / "tree"
    tree.mkdir(exist_ok=True)
    with open(out, "wb") as f:
        f.truncate(size)
    # One shell in one namespace: unpack, make the file system from the tree, clean up.
    script = (
        'set -e; trap \'rm -rf "$2"\' EXIT; tar -x -p --numeric-owner --xattrs --xattrs-include="*" -f "$1" -C "$2"; '
        'mkfs.ext4 -q -F -t ext4 -L "$4" -U "$5" -b 4096 -I 256 -m 0 '
        '-E lazy_itable_init=0,nodiscard,root_owner=0:0 -d "$2" "$3"'
    )
    runner = ToolRunner(log, on_line)
    try:
        runner.run([*userns_prefix(), "sh", "-c", script, "rootpart", str(rootfs_tar), str(tree), str(out),
                    label, fs_uuid])
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def run(ctx: StageContext, stage: Stage, work: Path, log: Path) -> tuple[dict[str, Any], Path]:
    rootfs = ctx.dep(stage, "rootfs")
    assert rootfs.path is not None
    size = partition_size(rootfs.record["content_bytes"], stage.inputs["headroom_mib"])
    out = work / "root.ext4"
    build_rootpart(rootfs.path, out, work, label=stage.inputs["label"], fs_uuid=stage.inputs["fs_uuid"],
                   size=size, log=log, on_line=ctx.on_line(stage), scratch=ctx.ram_scratch())
    return {"size": size, "sha256": file_sha256(out)}, out


KIND = StageKind(name="rootpart", version=1, tools=("mke2fs",), run=run)
