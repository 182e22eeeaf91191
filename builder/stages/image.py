"""Disk images: a GPT written with sfdisk onto a sparse file, partitions copied into place.

The image is assembled under a temporary name beside its final path, with the host secrets
written into its root partitions through debugfs (no mount), its .bmap computed from the
sparse map, optionally converted to qcow2, and only then renamed into place.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.stickseal import SEALED_NAME
from builder.bmap import write_bmap
from builder.secrets import (
    IDENTITY_IN_ROOT,
    STICK_HOSTS,
    host_secret_files,
    identity_files,
    installer_identity,
    register_bytes,
    sealed_host_secrets,
    secret_owners,
)
from builder.sparse import copy_sparse
from builder.stages import ext4edit
from builder.stages.esp import GPTMBR
from builder.stages.kind import StageContext, StageKind
from builder.tools import LineSink, ToolRunner
from core.disk import gpt

if TYPE_CHECKING:
    from builder.plan import Stage

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


def finish(tmp: Path, final: Path, fmt: str, log: Path, on_line: LineSink | None = None,
           compress: bool = False) -> dict[str, Any]:
    """Bmap, qcow2 conversion (compressed for cloud images: it is uploaded, and a provider
    expands it once), then rename into place. Returns facts for the manifest."""
    facts: dict[str, Any] = {}
    if fmt == "qcow2":
        qtmp = tmp.with_name(tmp.name + ".qcow2")
        ToolRunner(log, on_line).run(["qemu-img", "convert", *(["-c"] if compress else []), "-O", "qcow2",
                                      str(tmp), str(qtmp)])
        facts["compressed"] = compress
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


def run(ctx: StageContext, stage: Stage, work: Path, log: Path) -> tuple[dict[str, Any], None]:
    final = Path(stage.inputs["output"])
    final.parent.mkdir(parents=True, exist_ok=True)
    # The old image goes first: from here until the rename, the final path holds no image
    # (never a stale one beside a new manifest, never a half-written one).
    for p in (final, final.with_name(final.name + ".bmap"), ctx.cluster_dir / "manifest.json"):
        p.unlink(missing_ok=True)
    files = {s: ctx.results[s].path for s in stage.deps}
    placed = layout(stage.inputs["partitions"], files, stage.inputs["size"])  # type: ignore[arg-type]
    tmp = final.with_name(f".{final.name}.partial-{os.getpid()}")
    try:
        assemble(placed, stage.inputs["size"], stage.inputs["disk_uuid"], tmp, log)
        for spec, part in zip(stage.inputs["partitions"], placed, strict=True):
            if spec.get("overlay"):
                _personalise(ctx, stage, spec["overlay"], tmp, part.start, work, log)
        facts = finish(tmp, final, stage.inputs["format"], log, compress=bool(stage.inputs.get("compress")))
    finally:
        tmp.unlink(missing_ok=True)
    st = final.stat()
    return {"size": st.st_size, "allocated": st.st_blocks * 512, "mtime_ns": st.st_mtime_ns,
            "partitions": [{"name": p.name, "start": p.start, "size": p.size, "uuid": p.uuid} for p in placed],
            **facts}, None


def _personalise(ctx: StageContext, stage: Stage, overlay_stage: str, img: Path, offset: int, work: Path,
                 log: Path) -> None:
    """Write an OS's overlay and the hosts' secrets into the image's copy of its root."""
    overlay = ctx.results[overlay_stage]
    assert overlay.path is not None
    scratch = work / overlay_stage.replace(":", "_").replace("/", "_")
    scratch.mkdir()
    puts = ext4edit.puts_from_tar(overlay.path, scratch)
    register = _register(ctx, work)
    owners: list[tuple[str, str]] = []
    if stage.params["installer"]:
        # The stick's own identity while it runs as an installer; each host's keys wait
        # under /var/lib/clusterctl/hosts/<host>/ for first boot to install them: in the clear,
        # or sealed in one blob per host (cluster.stick_secrets: passphrase).
        owners.append((installer_identity(stage.params["image_name"]), "/etc/ssh"))
        if ctx.stick_key is not None:
            puts += _sealed_puts(ctx, stage, work, register)
        else:
            owners += [(h, f"{STICK_HOSTS}/{h}/ssh") for h in stage.params["hosts"]]
            puts += _identity_puts(ctx, stage, register)
    else:
        owners += [(h, "/etc/ssh") for h in stage.params["hosts"]]
        puts += _identity_puts(ctx, stage, register)
    for h, base in owners:
        if base != "/etc/ssh":
            puts.append(ext4edit.Put(base, "dir", 0o700))
        for src, name, mode in host_secret_files(ctx.out_dir, ctx.profile_name, h):
            puts.append(ext4edit.Put(f"{base}/{name}", "file", mode, src=src))
    ext4edit.place(img, offset, puts, log)


def _register(ctx: StageContext, work: Path) -> Path:
    """The register of the profile's hosts (public, 0644), made once per image."""
    register = work / "hosts.json"
    if not register.exists():
        register.write_bytes(register_bytes(ctx.out_dir, ctx.profile_name, secret_owners(ctx.data)))
        register.chmod(0o644)
    return register


def _sealed_puts(ctx: StageContext, stage: Stage, work: Path, register: Path) -> list[ext4edit.Put]:
    """A sealed stick: /var/lib/clusterctl/hosts/<host>/sealed per host, nothing else secret."""
    assert ctx.stick_key is not None
    puts: list[ext4edit.Put] = []
    for h in stage.params["hosts"]:
        blob = work / f"{h}.sealed"
        if not blob.exists():
            blob.write_bytes(sealed_host_secrets(ctx.out_dir, ctx.profile_name, h, ctx.stick_key, register))
        puts += [ext4edit.Put(f"{STICK_HOSTS}/{h}", "dir", 0o700),
                 ext4edit.Put(f"{STICK_HOSTS}/{h}/{SEALED_NAME}", "file", 0o600, src=blob)]
    return puts


def _identity_puts(ctx: StageContext, stage: Stage, register: Path) -> list[ext4edit.Put]:
    """A disk/cloud image: its host's identity at /etc/clusterctl/identity/. A clear stick: each
    host's at /var/lib/clusterctl/hosts/<host>/identity/ for first boot to copy. Both with
    the register of the profile's hosts beside it."""
    folders = ([(h, f"{STICK_HOSTS}/{h}/identity") for h in stage.params["hosts"]] if stage.params["installer"]
               else [(h, IDENTITY_IN_ROOT) for h in stage.params["hosts"]])
    puts: list[ext4edit.Put] = []
    for h, base in folders:
        puts.append(ext4edit.Put(base, "dir", 0o700))
        for src, name, mode in identity_files(ctx.out_dir, ctx.profile_name, h):
            puts.append(ext4edit.Put(f"{base}/{name}", "file", mode, src=src))
        puts.append(ext4edit.Put(f"{base}/hosts.json", "file", 0o644, src=register))
    return puts


def is_current(cache: Any, stage: Stage) -> bool:
    """An image is reused when its output file is the one this key produced (it lives in
    images/, not in the cache)."""
    rec = cache.record(stage.key)
    out = Path(stage.inputs["output"])
    if rec is None or not out.exists():
        return False
    st = out.stat()
    return bool(rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns)


KIND = StageKind(name="image", version=1, tools=("sfdisk", "debugfs", "qemu-img"), run=run, is_current=is_current)
