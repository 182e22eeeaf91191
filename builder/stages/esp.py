"""The EFI system partition, made as a file: one menu for UEFI and legacy BIOS.

UEFI: Debian's signed chain (builder/stages/bootchain.py), so boxes with Secure Boot on start
the stick: shim as the removable-media loader /EFI/BOOT/BOOTX64.EFI, GRUB beside it as
grubx64.efi (where shim looks for it), MokManager as mmx64.efi, and GRUB's menu at
/EFI/debian/grub.cfg (core/disk/bootmenu.py). BIOS: syslinux installed into the same FAT with
mtools (``syslinux --install``, no loop device); the image's MBR code (gptmbr.bin) starts it
from the partition carrying GPT's legacy-BIOS-bootable attribute. Kernels (Debian's, signed)
and initrds live on the ESP under /<os>/.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.stages.bootchain import unpack
from builder.stages.isoboot import build_iso_boot, grub_files_digest
from builder.stages.kind import StageContext, StageKind, file_sha256
from builder.stages.rootfs import read_member
from builder.tools import LineSink, ToolRunner
from core.disk.bootmenu import ISOBOOT_DIR, BootEntry, menus

if TYPE_CHECKING:
    from builder.plan import Stage

SYSLINUX_MODULES = Path("/usr/lib/syslinux/modules/bios")
GPTMBR = Path("/usr/lib/SYSLINUX/gptmbr.bin")
MiB = 1024 * 1024
MIN_ESP = 128 * MiB  # FAT32 wants at least 65525 clusters; sparse, so free space costs nothing


def boot_files_digest() -> dict[str, str]:
    """The boot loader binaries the ESP is made from (part of its key)."""
    out = {}
    for p in (GPTMBR, SYSLINUX_MODULES / "ldlinux.c32"):
        out[p.name] = file_sha256(p) if p.exists() else "missing"
    return out


def loader_files(entries: list[dict[str, Any]], default: str, timeout_s: int) -> dict[str, str]:
    """Text files of the menus: GRUB's grub.cfg, syslinux.cfg, and the entries first boot reads.

    The same writer as first boot's (core.disk.bootmenu), so the installed disk's menus keep
    the stick's shape; the default is the first entry."""
    if entries[0]["os"] != default:
        raise ValueError(f"the default OS {default!r} must be the first boot entry")
    return menus([_boot_entry(e) for e in entries], timeout_s)


def _boot_entry(e: dict[str, Any]) -> BootEntry:
    if e.get("kind") == "iso":
        return BootEntry(os=e["os"], title=e["title"], linux="", initrd="", options="",
                         grub_cfg=f"/{ISOBOOT_DIR}/{e['os']}.cfg", bios=f"/{ISOBOOT_DIR}/{e['os']}.lnx")
    return BootEntry(os=e["os"], title=e["title"], linux=f"/{e['os']}/vmlinuz", initrd=f"/{e['os']}/initrd.img",
                     options=e["cmdline"])


def build_esp(entries: list[dict[str, Any]], payloads: dict[str, tuple[Path, Path]], chain: dict[str, Path],
              default: str, timeout_s: int, hidden_sectors: int, out: Path, work: Path, log: Path,
              on_line: LineSink | None = None) -> dict[str, Any]:
    """Make the ESP file ``out``. ``payloads[os] = (kernel, initrd)`` files on the build machine;
    ISO entries get their GRUB scripts instead (builder/stages/isoboot.py). ``chain``: the signed
    boot chain's files by name (shimx64.efi, grubx64.efi, mmx64.efi)."""
    stage = work / "esp"
    (stage / "EFI" / "BOOT").mkdir(parents=True)
    shutil.copyfile(chain["shimx64.efi"], stage / "EFI" / "BOOT" / "BOOTX64.EFI")
    for name in ("grubx64.efi", "mmx64.efi"):
        shutil.copyfile(chain[name], stage / "EFI" / "BOOT" / name)
    for rel, text in loader_files(entries, default, timeout_s).items():
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        (stage / rel).write_text(text)
    run = ToolRunner(log, on_line).run
    for e in entries:
        if e.get("kind") == "iso":
            (stage / ISOBOOT_DIR).mkdir(exist_ok=True)
            build_iso_boot(e["os"], e["fs_uuid"], e.get("kernel_signed"), stage / ISOBOOT_DIR, work, run)
            continue
        kernel, initrd = payloads[e["os"]]
        d = stage / e["os"]
        d.mkdir()
        shutil.copyfile(kernel, d / "vmlinuz")
        shutil.copyfile(initrd, d / "initrd.img")
    content = sum(p.stat().st_size for p in stage.rglob("*") if p.is_file())
    size = max(MIN_ESP, (int(content * 1.1) + 32 * MiB + MiB - 1) // MiB * MiB)
    with open(out, "wb") as f:
        f.truncate(size)
    env = {"MTOOLS_SKIP_CHECK": "1"}
    volid = hashlib.sha256(str(sorted(e["os"] for e in entries)).encode()).hexdigest()[:8]
    run(["mkfs.vfat", "-F", "32", "-n", "ESP", "-i", volid, "-h", str(hidden_sectors), str(out)])
    top = sorted(p.name for p in stage.iterdir())
    run(["mcopy", "-i", str(out), "-s", "-Q", "-m", *[str(stage / n) for n in top], "::/"], env=env)
    # syslinux writes its boot sector, ldlinux.sys and ldlinux.c32 through mtools; hidden sectors (the
    # partition's start) are already in the FAT header, where syslinux's VBR reads them.
    run(["syslinux", "--install", "--directory", "/syslinux", str(out)], env=env)
    shutil.rmtree(stage, ignore_errors=True)
    return {"size": size, "content_bytes": content, "sha256": file_sha256(out)}


def run(ctx: StageContext, stage: Stage, work: Path, log: Path) -> tuple[dict[str, Any], Path]:
    payloads: dict[str, tuple[Path, Path]] = {}
    kernels: dict[str, str] = {}
    for e in stage.params["entries"]:
        if e["kind"] == "iso":
            continue  # its GRUB is made from the entry alone
        rootfs = ctx.results[e["rootfs"]]
        assert rootfs.path is not None
        version = sorted(rootfs.record["kernels"])[-1]
        kernels[e["os"]] = version
        k = work / f"{e['os']}.vmlinuz"
        read_member(rootfs.path, rootfs.record["kernels"][version]["kernel"], k)
        if e["kind"] == "rescue":
            rescue = ctx.results[e["payload"]]
            assert rescue.path is not None
            initrd = rescue.path
        else:
            initrd = work / f"{e['os']}.initrd"
            read_member(rootfs.path, rootfs.record["kernels"][version]["initrd"], initrd)
        payloads[e["os"]] = (k, initrd)
    chain_tar = ctx.dep(stage, "bootchain").path
    assert chain_tar is not None
    chain = unpack(chain_tar, work / "chain")
    out = work / "esp.vfat"
    rec = build_esp(stage.inputs["entries"], payloads, chain, stage.inputs["default"], stage.inputs["timeout_s"],
                    stage.inputs["hidden_sectors"], out, work, log, ctx.on_line(stage))
    return {**rec, "kernels": kernels}, out


def _has_isos(stage: Stage) -> bool:
    return any(e["kind"] == "iso" for e in stage.inputs["entries"])


def extra_tools(stage: Stage) -> list[str]:
    """An ESP with ISO entries also holds a BIOS GRUB per entry (builder/stages/isoboot.py)."""
    return ["grub-mkimage"] if _has_isos(stage) else []


def extra_inputs(stage: Stage) -> dict[str, Any]:
    """The boot loader binaries the ESP is made from (and GRUB's, with ISO entries)."""
    return {"boot_files": {**boot_files_digest(), **(grub_files_digest() if _has_isos(stage) else {})}}


KIND = StageKind(name="esp", version=4, tools=("mkfs.vfat", "syslinux"), run=run,
                 extra_tools=extra_tools, extra_inputs=extra_inputs)
