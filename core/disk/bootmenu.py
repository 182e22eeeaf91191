"""Boot menus: the stick's (made by the builder) and the installed disk's (derived from it).

One list of entries gives three files: GRUB's ``/EFI/debian/grub.cfg`` (UEFI: Debian's signed
shim and GRUB, so Secure Boot boxes start it), syslinux's ``syslinux.cfg`` (legacy BIOS), and a
Boot Loader Specification entry per OS under ``/loader/entries/``: the machine-readable list
first boot reads back (GRUB's script is not meant to be parsed).

The stick's ESP is copied to the disk as it is (syslinux's boot sector and ldlinux.sys keep
their places, so legacy BIOS boots without re-running syslinux); then its menus are rewritten
with mtools: only the host's OSes, each system root found by the PARTUUID it has on this disk,
the host's default OS first.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from core.disk.tools import MTOOLS_ENV, InstallError, fat, run

_ROOT = re.compile(r"\broot=PARTUUID=[0-9A-Fa-f-]+")
# The ESP folder of the stick's ISO entries (builder/stages/isoboot.py): their ISOs stay on
# the stick, so an installed disk gets neither the entries nor this folder.
ISOBOOT_DIR = "isoboot"
# Where Debian's signed GRUB reads its configuration: its built-in prefix is /EFI/debian on the
# device it was started from.
GRUB_CFG = "EFI/debian/grub.cfg"


@dataclass
class BootEntry:
    os: str
    title: str
    linux: str
    initrd: str
    options: str
    extra: dict[str, str] = field(default_factory=dict)
    # An ISO's entry instead of a kernel: GRUB (UEFI) runs the script ``grub_cfg``, syslinux
    # (BIOS) loads the GRUB program ``bios`` as its kernel. Such entries live on the stick only.
    grub_cfg: str = ""
    bios: str = ""


def parse_entry(text: str) -> BootEntry | None:
    """A systemd-boot loader entry; its OS is the folder holding the kernel (``/<os>/vmlinuz``).
    None for an entry with no kernel (an ISO's GRUB: the stick's alone)."""
    keys: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key and not key.startswith("#"):
            keys[key] = value.strip()
    linux = keys.get("linux", "")
    os_name = linux.strip("/").split("/")[0] if linux.count("/") >= 2 else ""
    if not os_name:
        return None
    return BootEntry(os_name, keys.get("title", os_name), linux, keys.get("initrd", ""), keys.get("options", ""))


def with_root(options: str, partuuid: str | None) -> str:
    """Kernel options with the root named by ``partuuid`` (rescue entries have no root: unchanged)."""
    if partuuid is None or not _ROOT.search(options):
        return options
    return _ROOT.sub(f"root=PARTUUID={partuuid}", options)


def grub_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


# Set (and exported) by the stick's GRUB menu when the box has a serial port.
SERIAL_VAR = "clusterctl_serial"


def grub_menu(entries: list[BootEntry], timeout_s: int) -> str:
    """GRUB's script: the entries in order, the first the default; digit N boots entry N."""
    out = [
        "# clusterctl: made from the entries under /loader/entries (core/disk/bootmenu.py)",
        "set default=0", f"set timeout={timeout_s}",
        # The next boot only (core/disk/bootonce.py): an entry named in grubenv, then cleared.
        "if [ -s $prefix/grubenv ]; then load_env --file $prefix/grubenv next_entry; fi",
        'if [ "${next_entry}" ]; then',
        '  set default="${next_entry}"', "  set next_entry=", "  save_env --file $prefix/grubenv next_entry",
        "fi",
        # A box without a serial port: the menu stays on its screen alone.
        "if serial --unit=0 --speed=115200; then",
        "  terminal_input console serial", "  terminal_output console serial",
        f"  set {SERIAL_VAR}=y", f"  export {SERIAL_VAR}",  # for the ISO entries' scripts (configfile)
        "fi",
    ]
    for i, e in enumerate(entries):
        hotkey = f" --hotkey={i + 1}" if i < 9 else ""
        out.append(f"menuentry {grub_quote(e.title)} --id {grub_quote(e.os)}{hotkey} {{")
        if e.grub_cfg:
            out.append(f"  configfile {e.grub_cfg}")
        else:
            out += [f"  echo {grub_quote('Loading ' + e.title + ' ...')}", f"  linux {e.linux} {e.options}",
                    f"  initrd {e.initrd}"]
        out.append("}")
    return "\n".join(out) + "\n"


def menus(entries: list[BootEntry], timeout_s: int = 3) -> dict[str, str]:
    """The text files of the menus, default first (same shape as the stick's)."""
    files: dict[str, str] = {}
    for i, e in enumerate(entries):
        if e.grub_cfg:
            continue  # an ISO's entry: the stick's alone, so first boot never reads it back
        files[f"loader/entries/{10 * (i + 1):02d}-{e.os}.conf"] = (
            f"title {e.title}\nsort-key {10 * (i + 1):02d}\n"
            f"linux {e.linux}\ninitrd {e.initrd}\noptions {e.options}\n")
    files[GRUB_CFG] = grub_menu(entries, timeout_s)
    txt = ["Boot menu (type a name and Enter; the first is the default):"]
    txt += [f"  {e.os:<12} {e.title}" for e in entries]
    files["syslinux/boot.txt"] = "\n".join(txt) + "\n"
    cfg = ["SERIAL 0 115200", "CONSOLE 1", "PROMPT 1", f"TIMEOUT {timeout_s * 10}", "DISPLAY boot.txt",
           f"DEFAULT {entries[0].os}", ""]
    for e in entries:
        if e.bios:
            cfg += [f"LABEL {e.os}", f"  KERNEL {e.bios}", ""]
        else:
            cfg += [f"LABEL {e.os}", f"  KERNEL {e.linux}", f"  INITRD {e.initrd}", f"  APPEND {e.options}", ""]
    files["syslinux/syslinux.cfg"] = "\n".join(cfg)
    return files


class Fat:
    """A FAT file system at ``offset`` bytes into ``disk``, through mtools."""

    def __init__(self, disk: str, offset: int, stage: str = "boot") -> None:
        self.image = fat(disk, offset)
        self.stage = stage

    def _run(self, argv: list[str], ok: tuple[int, ...] = (0,)) -> str:
        return run(self.stage, [argv[0], "-i", self.image, *argv[1:]], env=MTOOLS_ENV, ok=ok)

    def names(self, folder: str) -> list[str]:
        out = self._run(["mdir", "-b", f"::{folder}"], ok=(0, 1))
        return [line.rstrip("/").rsplit("/", 1)[-1] for line in out.splitlines() if line.startswith("::")]

    def read(self, path: str) -> str:
        return self._run(["mtype", f"::{path}"])

    def write(self, path: str, text: str, tmpdir: str) -> None:
        local = os.path.join(tmpdir, path.replace("/", "_"))
        with open(local, "w", encoding="utf-8") as f:
            f.write(text)
        self._run(["mcopy", "-o", "-Q", local, f"::{path}"])

    def delete(self, path: str) -> None:
        self._run(["mdel", f"::{path}"], ok=(0, 1))

    def delete_tree(self, path: str) -> None:
        self._run(["mdeltree", f"::{path}"], ok=(0, 1))


def stick_entries(esp: Fat) -> list[BootEntry]:
    """The stick's loader entries, in its menu order (file names sort as the menu does)."""
    out = []
    for name in sorted(esp.names("/loader/entries")):
        if name.endswith(".conf"):
            e = parse_entry(esp.read(f"/loader/entries/{name}"))
            if e is not None:
                out.append(e)
    if not out:
        raise InstallError("boot", "the stick's ESP has no loader entries (loader/entries/*.conf)")
    return out


def rewrite(esp: Fat, entries: list[BootEntry], keep: list[str], tmpdir: str) -> list[BootEntry]:
    """Leave only the OSes in ``keep`` (in that order) on the ESP and write both menus for them."""
    by_os = {e.os: e for e in entries}
    missing = [o for o in keep if o not in by_os]
    if missing:
        raise InstallError("boot", f"the stick has no boot entry for {', '.join(missing)}")
    for e in entries:
        if e.os not in keep:
            esp.delete_tree(f"/{e.os}")
    for name in esp.names("/loader/entries"):
        esp.delete(f"/loader/entries/{name}")
    kept = [by_os[o] for o in keep]
    for path, text in menus(kept).items():
        esp.write(path, text, tmpdir)
    return kept
