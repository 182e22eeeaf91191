"""ISO files a user supplies, booted from the stick (the spec's "like Ventoy does").

The ISOs sit whole, as files, in their own ext4 partition (made with ``mkfs.ext4 -d``: no
loop device). Each one gets a boot menu entry that starts a small GRUB (``grub-mkimage``, its
configuration and modules built in): GRUB loop-mounts the file and hands over to the ISO's own
``/boot/grub/loopback.cfg``, with ``iso_path`` set to the file's path. That file is the
convention distributions ship for exactly this (Debian live, Ubuntu, Arch, Kali, GParted and
Clonezilla among them): it boots their kernel with the argument that makes their initrd find
the ISO again (``findiso=``, ``iso-scan/filename=``, ``img_loop=``). Ventoy instead patches each
distribution's initrd as it boots; we do not, so an ISO without loopback.cfg is not bootable
from a file, and its entry says so on the console (an ``error`` event) instead of guessing.

UEFI: the stick's own GRUB (Debian's signed one) runs the entry's script, /isoboot/<entry>.cfg.
Under Secure Boot that GRUB boots only kernels shim trusts; an ISO whose kernel carries no
signature at all is found at build time, its menu line says so, and under Secure Boot its entry
says what to do instead of failing silently. Legacy BIOS: syslinux loads GRUB's i386-pc core
with lnxboot.img in front, which makes it look like a Linux kernel to syslinux. Both are on the
ESP under /isoboot/; first boot removes them from installed disks (the ISO partition stays on
the stick).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from builder.tools import LineSink, ToolError, ToolRunner
from core.disk.bootmenu import ISOBOOT_DIR, SERIAL_VAR, grub_quote
from core.disk.gpt import LINUX_DATA_TYPE as LINUX_DATA_TYPE  # the ISO partition's type (re-exported)

GRUB_PC_DIR = Path("/usr/lib/grub/i386-pc")
LNXBOOT = GRUB_PC_DIR / "lnxboot.img"
ISOS_LABEL = "clusterctl-isos"
ISOS_BLOCK = 4096  # the ISO partition's block size, fixed so fill_holes can count blocks
MiB = 1024 * 1024

# Built into every GRUB image: no module files are read at boot (``insmod`` of one of these
# succeeds at once). Besides what our config uses, what distributions' loopback.cfg files ask
# for: menus and themes, fonts, compressed kernels, CPU checks, searches by label or file.
COMMON_MODULES = ("part_gpt", "part_msdos", "ext2", "fat", "iso9660", "udf", "loopback", "search",
                  "search_fs_uuid", "search_label", "search_fs_file", "configfile", "normal", "linux", "echo",
                  "test", "true", "serial", "terminal", "terminfo", "sleep", "reboot", "halt", "regexp", "gzio",
                  "xzio", "lzopio", "zstd", "all_video", "font", "gfxterm", "gfxterm_background", "gfxmenu", "png",
                  "jpeg", "tga", "gettext", "loadenv", "ls", "cat", "minicmd", "keystatus", "read", "help",
                  "cpuid", "chain", "probe", "memdisk", "tar")  # fmt: skip
PC_MODULES = (*COMMON_MODULES, "biosdisk", "linux16", "vbe", "vga")


def iso_entry_name(path: str | os.PathLike[str]) -> str:
    """The menu entry (and syslinux label) of a stick's ``isos:`` file: its name, plainly spelt."""
    stem = Path(path).name.removesuffix(".iso").removesuffix(".ISO")
    return re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")[:40] or "iso"


def iso_file_name(entry: str) -> str:
    """The ISO's name in the partition: the entry's name (plain characters: it ends up on the
    ISO's kernel command line through ``iso_path``)."""
    return f"{entry}.iso"


# The serial terminal's size while an event line is written: GRUB wraps a line at the width.
WIDE_SERIAL = "250x50"


def _event_line(os_name: str, message: str) -> str:
    return "CLUSTERCTL " + json.dumps({"event": "error", "stage": "iso", "os": os_name, "message": message})


def grub_config(os_name: str, fs_uuid: str, *, serial: bool, kernel_signed: bool | None = True) -> str:
    """The GRUB script of one ISO entry: built into its BIOS GRUB (``serial``: that GRUB sets up
    its own consoles), or a file on the ESP that Debian's signed GRUB runs (UEFI). Under Secure
    Boot (GRUB's ``lockdown``), an ISO whose kernel is unsigned is not tried: the screen says why."""
    iso_path = f"/{iso_file_name(os_name)}"

    def fail(message: str, indent: str) -> list[str]:
        # For a person at the screen, and as an event for whoever follows the serial console. GRUB
        # wraps a serial line at the terminal's width (80): the event is echoed with the serial
        # terminal widened, then put back (the menu is drawn there again afterwards).
        show, event = (f"{indent}echo {grub_quote(text)}" for text in (message, _event_line(os_name, message)))
        if serial:  # this GRUB's own serial terminal is already wide (head, below)
            return [show, event]

        def on_serial(geometry: str) -> str:
            return f'{indent}if [ "${SERIAL_VAR}" = y ]; then terminfo -g {geometry} serial; fi'

        return [show, on_serial(WIDE_SERIAL), event, on_serial("80x24")]

    body = [
        f"set iso_path={iso_path}",
        "export iso_path",
        f"if search --no-floppy --fs-uuid --set=isopart {fs_uuid}; then",
        "  if loopback loop ($isopart)$iso_path; then",
        "    set root=(loop)",
        "    if [ -f /boot/grub/loopback.cfg ]; then",
        "      configfile /boot/grub/loopback.cfg",
        "    else",
        *fail(f"{iso_path} has no /boot/grub/loopback.cfg: this ISO cannot be booted from a file", "      "),
        "    fi",
        "  else",
        *fail(f"cannot open {iso_path} in the {ISOS_LABEL} partition", "    "),
        "  fi",
        "else",
        *fail(f"no partition with file system UUID {fs_uuid} ({ISOS_LABEL}) on this machine", "  "),
        "fi",
    ]
    if kernel_signed is False:
        refusal = (f"Secure Boot is on and {iso_path}'s kernel is not signed: turn Secure Boot off in the "
                   "firmware's setup to boot this ISO (docs/real-machines.md)")
        body = ['if [ "$lockdown" = "y" ]; then', *fail(refusal, "  "), "  sleep 10", "else",
                *(f"  {line}" for line in body), "fi"]
    head = ["# clusterctl: boot an ISO file through its own /boot/grub/loopback.cfg"]
    if serial:
        head += ["serial --unit=0 --speed=115200", "terminal_input --append serial", "terminal_output --append serial",
                 f"terminfo -g {WIDE_SERIAL} serial"]  # an event line must not wrap at 80 columns
    return "\n".join([*head, *body, ""])


def build_iso_boot(os_name: str, fs_uuid: str, kernel_signed: bool | None, out_dir: Path, work: Path,
                   run: Any) -> dict[str, str]:
    """``<os>.cfg`` (run by the ESP's signed GRUB, UEFI) and ``<os>.lnx`` (BIOS, for syslinux) in
    ``out_dir``.

    The BIOS GRUB's configuration goes in a memdisk, as grub-mkstandalone does: GRUB runs
    $prefix/grub.cfg with its full script parser (a config given with ``-c`` runs before it,
    without ``if``)."""
    cfg = out_dir / f"{os_name}.cfg"
    cfg.write_text(grub_config(os_name, fs_uuid, serial=False, kernel_signed=kernel_signed))
    tree = work / f"{os_name}.memdisk"
    (tree / "boot" / "grub").mkdir(parents=True)
    (tree / "boot" / "grub" / "grub.cfg").write_text(grub_config(os_name, fs_uuid, serial=True))
    memdisk = work / f"{os_name}.memdisk.tar"
    with tarfile.open(memdisk, "w", format=tarfile.USTAR_FORMAT) as tar:
        tar.add(tree / "boot", arcname="boot")
    core, lnx = work / f"{os_name}.core.img", out_dir / f"{os_name}.lnx"
    run(["grub-mkimage", "-O", "i386-pc", "-d", str(GRUB_PC_DIR), "-o", str(core), "-p", "(memdisk)/boot/grub",
         "-m", str(memdisk), *PC_MODULES])
    with open(lnx, "wb") as f:
        f.write(LNXBOOT.read_bytes())
        f.write(core.read_bytes())
    return {"grub_cfg": f"/{ISOBOOT_DIR}/{cfg.name}", "bios": f"/{ISOBOOT_DIR}/{lnx.name}"}


def grub_files_digest() -> dict[str, str]:
    """What the BIOS GRUB images are made from (part of the ESP's key when it has ISO entries)."""
    h = hashlib.sha256()
    for name in ("kernel.img", *(f"{m}.mod" for m in PC_MODULES)):
        p = GRUB_PC_DIR / name
        h.update(f"{p}\0".encode())
        h.update(p.read_bytes() if p.exists() else b"missing")
    h.update(LNXBOOT.read_bytes() if LNXBOOT.exists() else b"missing")
    return {"grub": h.hexdigest()}


def pe_signed(data: bytes) -> bool:
    """Whether a PE/COFF program (an EFI loader, a Linux EFI-stub kernel) carries an Authenticode
    signature: its certificate table (data directory 4) is not empty. Whom it is signed by is
    not checked here: under Secure Boot, shim decides that."""
    try:
        pe = struct.unpack_from("<I", data, 0x3C)[0]
        if data[:2] != b"MZ" or data[pe:pe + 4] != b"PE\0\0":
            return False
        opt = pe + 24
        magic = struct.unpack_from("<H", data, opt)[0]
        dirs = opt + (112 if magic == 0x20B else 96)  # PE32+ or PE32
        _offset, size = struct.unpack_from("<II", data, dirs + 4 * 8)
        return size > 0
    except struct.error:
        return False


LINUX_LINE = re.compile(r"^\s*linux(?:efi)?\s+(/[^\s$]+)", re.MULTILINE)


def iso_kernels_signed(iso: Path) -> bool | None:
    """Whether every kernel the ISO's /boot/grub/loopback.cfg boots is signed (None: it has no
    loopback.cfg, or names no kernel by a plain path). Read with xorriso's osirrox: no mount."""
    with tempfile.TemporaryDirectory(prefix="clusterctl-iso-") as tmp:
        cfg = Path(tmp) / "loopback.cfg"
        if not _extract(iso, "/boot/grub/loopback.cfg", cfg):
            return None
        kernels = sorted(set(LINUX_LINE.findall(cfg.read_text(errors="replace"))))
        if not kernels:
            return None
        for i, path in enumerate(kernels):
            out = Path(tmp) / f"kernel{i}"
            if not _extract(iso, path, out) or not pe_signed(out.read_bytes()):
                return False
        return True


def _extract(iso: Path, member: str, out: Path) -> bool:
    r = subprocess.run(["osirrox", "-indev", str(iso), "-extract", member, str(out)], capture_output=True, check=False)
    return r.returncode == 0 and out.is_file()


def iso_partition_size(total: int) -> int:
    """Room for the files plus ext4's own (about 2 % with no journal), in whole MiB."""
    return (int(total * 1.03) + 16 * MiB + MiB - 1) // MiB * MiB


def build_iso_partition(sources: dict[str, Path], fs_uuid: str, out: Path, work: Path, log: Path,
                        on_line: LineSink | None = None) -> dict[str, Any]:
    """The ext4 file holding each ISO as ``<entry>.iso`` (``sources[entry] = the user's file``)."""
    tree = work / "isos"
    tree.mkdir()
    total = 0
    for name, src in sources.items():
        dst = tree / iso_file_name(name)
        try:
            os.link(src, dst)  # mkfs reads it once; no copy of a multi-GB file to stage it
        except OSError:
            shutil.copyfile(src, dst)
        total += dst.stat().st_size
    size = iso_partition_size(total)
    with open(out, "wb") as f:
        f.truncate(size)
    # No journal (the stick's ISOs are read, not written) and no features GRUB 2.06's ext2 reader
    # refuses (newer mke2fs may turn metadata_csum_seed and orphan_file on by default).
    runner = ToolRunner(log, on_line)
    runner.run(["mkfs.ext4", "-q", "-F", "-b", str(ISOS_BLOCK), "-L", ISOS_LABEL, "-U", fs_uuid, "-m", "0",
                "-O", "^has_journal,^metadata_csum_seed,^orphan_file",
                "-E", "root_owner=0:0", "-d", str(tree), str(out)])
    fill_holes(out, {iso_file_name(n): (tree / iso_file_name(n)).stat().st_size for n in sources}, runner)
    shutil.rmtree(tree, ignore_errors=True)
    return {"size": size, "content_bytes": total}


def fill_holes(fs_file: Path, files: dict[str, int], runner: ToolRunner) -> None:
    """Allocate every block of each file (``{name in /: size}``) that ``mkfs -d`` left a hole.

    mke2fs -d stores all-zero blocks as holes, and GRUB 2.06's ext2 reader cannot read a file
    whose first block is a hole once its extent tree has an index level ("invalid extent"): an
    ISO without a hybrid MBR starts with 32 KiB of zeros. debugfs' fallocate fills the holes
    with unwritten extents over blocks of the fresh (zeroed) file system, which Linux reads as
    zeros and GRUB reads as the zeros they hold."""
    script = [f'fallocate "/{name}" 0 {(size + ISOS_BLOCK - 1) // ISOS_BLOCK - 1}'
              for name, size in sorted(files.items()) if size]
    if not script:
        return
    said = runner.run(["debugfs", "-w", "-f", "-", str(fs_file)], stdin_bytes="\n".join(script).encode() + b"\n")
    # debugfs goes on after a failed command and exits 0; its banner and echoed commands start
    # with "debugfs", anything else is a complaint.
    complaints = [line for line in said.splitlines() if line.strip() and not line.startswith("debugfs")]
    if complaints:
        raise ToolError(f"debugfs could not fill the ISO files' holes: {complaints[0]}", runner.log)
