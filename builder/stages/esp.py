"""The EFI system partition, made as a file: one menu for UEFI and legacy BIOS.

UEFI: systemd-boot (Debian's systemd-boot-efi) as /EFI/BOOT/BOOTX64.EFI with one loader entry
per OS. BIOS: syslinux installed into the same FAT with mtools (``syslinux --install``, no
loop device); the image's MBR code (gptmbr.bin) starts it from the partition carrying GPT's
legacy-BIOS-bootable attribute. Kernels and initrds live on the ESP under /<os>/.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

from builder.tools import LineSink, ToolRunner

SYSTEMD_BOOT = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
SYSLINUX_MODULES = Path("/usr/lib/syslinux/modules/bios")
GPTMBR = Path("/usr/lib/SYSLINUX/gptmbr.bin")
MiB = 1024 * 1024
MIN_ESP = 128 * MiB  # FAT32 wants at least 65525 clusters; sparse, so free space costs nothing


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def boot_files_digest() -> dict[str, str]:
    """The boot loader binaries the ESP is made from (part of its key)."""
    out = {}
    for p in (SYSTEMD_BOOT, GPTMBR, SYSLINUX_MODULES / "ldlinux.c32"):
        out[p.name] = file_sha256(p) if p.exists() else "missing"
    return out


def loader_files(entries: list[dict[str, Any]], default: str, timeout_s: int) -> dict[str, str]:
    """Text files of both menus: systemd-boot's loader.conf and entries, syslinux.cfg."""
    files: dict[str, str] = {}
    ids = {e["os"]: f"{10 * (i + 1):02d}-{e['os']}" for i, e in enumerate(entries)}
    files["loader/loader.conf"] = (
        f"default {ids[default]}.conf\ntimeout {timeout_s}\neditor no\nconsole-mode keep\n")
    for i, e in enumerate(entries):
        files[f"loader/entries/{ids[e['os']]}.conf"] = (
            f"title {e['title']}\nsort-key {10 * (i + 1):02d}\n"
            f"linux /{e['os']}/vmlinuz\ninitrd /{e['os']}/initrd.img\noptions {e['cmdline']}\n")
    # Legacy BIOS: a plain prompt works on a serial line and a screen alike; type a name or
    # wait for the default.
    menu = ["Boot menu (type a name and Enter; the first is the default):"]
    menu += [f"  {e['os']:<12} {e['title']}" for e in entries]
    files["syslinux/boot.txt"] = "\n".join(menu) + "\n"
    cfg = ["SERIAL 0 115200", "CONSOLE 1", "PROMPT 1", f"TIMEOUT {timeout_s * 10}", "DISPLAY boot.txt",
           f"DEFAULT {default}", ""]
    for e in entries:
        cfg += [f"LABEL {e['os']}", f"  KERNEL /{e['os']}/vmlinuz", f"  INITRD /{e['os']}/initrd.img",
                f"  APPEND {e['cmdline']}", ""]
    files["syslinux/syslinux.cfg"] = "\n".join(cfg)
    return files


def build_esp(entries: list[dict[str, Any]], payloads: dict[str, tuple[Path, Path]], default: str,
              timeout_s: int, hidden_sectors: int, out: Path, work: Path, log: Path,
              on_line: LineSink | None = None) -> dict[str, Any]:
    """Make the ESP file ``out``. ``payloads[os] = (kernel, initrd)`` files on the build machine."""
    stage = work / "esp"
    (stage / "EFI" / "BOOT").mkdir(parents=True)
    (stage / "EFI" / "systemd").mkdir()
    shutil.copyfile(SYSTEMD_BOOT, stage / "EFI" / "BOOT" / "BOOTX64.EFI")
    shutil.copyfile(SYSTEMD_BOOT, stage / "EFI" / "systemd" / "systemd-bootx64.efi")
    for rel, text in loader_files(entries, default, timeout_s).items():
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        (stage / rel).write_text(text)
    for e in entries:
        kernel, initrd = payloads[e["os"]]
        d = stage / e["os"]
        d.mkdir()
        shutil.copyfile(kernel, d / "vmlinuz")
        shutil.copyfile(initrd, d / "initrd.img")
    content = sum(p.stat().st_size for p in stage.rglob("*") if p.is_file())
    size = max(MIN_ESP, (int(content * 1.1) + 32 * MiB + MiB - 1) // MiB * MiB)
    with open(out, "wb") as f:
        f.truncate(size)
    run = ToolRunner(log, on_line).run
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
