"""The installer: the stick's partitions onto the host's disk, grown, booted, and made this host.

The layout: the ESP where the stick has it, then the host's roots, the default OS's root
last and grown to the end of the disk. Steps, each announced in the install journal
(agent/firstboot/journal.py) before it starts:

  esp            the stick's ESP copied as it is (boot loaders, kernels, syslinux's sectors)
  copy:<os>      each root the host's role boots: zeros, then e2image (used blocks only), fsck
  grow:<os>      e2fsck, then resize2fs of the default root to its partition
  identity:<os>  host name, /etc/hosts, /etc/clusterctl/host.json, the host's overlay and
                 secrets from the stick; other hosts' files removed; first boot switched off
  partition      a fresh GPT for the layout above (written once the data is in place)
  boot           boot code in the MBR, both menus rewritten for this disk's PARTUUIDs
  done           the journal says complete

A disk that holds data is refused unless the caller allows wiping it (the profile or the
person, via the wizard) or its journal shows our own unfinished install; that one is simply
installed again from the start. Works on devices and on plain files (offsets throughout).
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.firstboot import journal
from agent.stickseal import SEALED_NAME, SecretFile
from core.disk.bootmenu import ISOBOOT_DIR, Fat, rewrite, stick_entries, with_root
from core.disk.ext4 import Ext4, dump_tree, place_tree
from core.disk.gpt import (
    ESP_TYPE,
    GPT_TAIL,
    ROOT_X86_64_TYPE,
    MiB,
    Part,
    Table,
    disk_size,
    read_table,
    write_table,
)
from core.disk.tools import InstallError, ext4, run

CHUNK = 4 * MiB
FIRSTBOOT_LINK = "/etc/systemd/system/multi-user.target.wants/clusterctl-firstboot.service"
INSTALLED_FILE = "/etc/clusterctl/installed.json"
HOST_LAYERS = "/usr/lib/clusterctl/hosts"
HOST_SECRETS = "/var/lib/clusterctl/hosts"
IDENTITY_DIR = "/etc/clusterctl/identity"


@dataclass
class Request:
    stick: str  # the boot medium (device or image file)
    target: str  # the install disk
    host: str
    role: str
    oses: list[str]  # the role's OSes, default first
    allow_wipe: bool = False  # the profile allows it, or the person typed the disk's serial
    # A sealed stick's keys for this host, opened by first boot (agent/firstboot/unseal.py);
    # None: the stick carries them in the clear, under HOST_SECRETS/<host>/.
    secrets: list[SecretFile] | None = None


@dataclass
class Plan:
    parts: list[Part]
    disk_id: str
    esp: Part  # on the stick
    roots: dict[str, tuple[Part, Part]]  # os -> (stick partition, target partition)
    default_os: str
    steps: list[str] = field(default_factory=list)


def _align_down(n: int) -> int:
    return n // MiB * MiB


def _same_disk(a: str, b: str) -> bool:
    sa, sb = os.stat(a), os.stat(b)
    if stat.S_ISBLK(sa.st_mode) and stat.S_ISBLK(sb.st_mode):
        return sa.st_rdev == sb.st_rdev
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def contents(disk: str, table: Table) -> str | None:
    """What the disk holds, in words, or None when it is blank (no table, no signature)."""
    if table.label:
        names = ", ".join(p.name or p.node for p in table.parts) or "no partitions"
        return f"a {table.label} partition table ({names})"
    sig = run("check", ["blkid", "-p", "-o", "export", disk], ok=(0, 2))
    kind = dict(line.split("=", 1) for line in sig.splitlines() if "=" in line).get("TYPE")
    return f"a {kind} file system" if kind else None


def plan_install(req: Request) -> Plan:
    """Where everything goes; checks that the disk may be used and is big enough. Writes nothing."""
    for path in (req.stick, req.target):
        if not os.path.exists(path):
            raise InstallError("check", f"{path} does not exist")
    if _same_disk(req.stick, req.target):
        raise InstallError("check", f"{req.target} is the medium this system booted from; never an install target")
    stick = read_table(req.stick, "check")
    esp = next((p for p in stick.parts if p.type == ESP_TYPE), None)
    if stick.label != "gpt" or esp is None:
        raise InstallError("check", f"{req.stick} is not a clusterctl stick (no GPT with an EFI system partition)")
    target = read_table(req.target, "check")
    held = contents(req.target, target)
    rec = journal.read(req.target)
    if held and not req.allow_wipe and not journal.is_incomplete(rec):
        raise InstallError("check", f"{req.target} holds {held}; it is not touched unless the profile allows "
                                    "wiping it (install.disk.wipe) or a person confirms it in the wizard")
    system = [o for o in req.oses if stick.by_name(f"root-{o}") is not None]
    if not system:
        raise InstallError("check", f"the stick has no root partition for any OS of role {req.role} "
                                    f"({', '.join(req.oses)})")
    default = system[0]
    size = disk_size(req.target)
    parts = [Part("ESP", esp.start, esp.size, ESP_TYPE, str(uuid.uuid4()), legacy_boot=True)]
    pos = esp.start + esp.size
    roots: dict[str, tuple[Part, Part]] = {}
    for o in [*system[1:], default]:
        src = stick.by_name(f"root-{o}")
        assert src is not None
        length = src.size if o != default else _align_down(size - GPT_TAIL - pos)
        if length < src.size:
            need = (pos + src.size + GPT_TAIL + MiB - 1) // MiB
            raise InstallError("check", f"{req.target} is too small: {size // MiB} MiB, at least {need} MiB needed")
        dst = Part(f"root-{o}", pos, length, ROOT_X86_64_TYPE, str(uuid.uuid4()))
        parts.append(dst)
        roots[o] = (src, dst)
        pos += length
    # Copies in the order of their places on the disk; the partition table once they are in.
    steps = ["esp", *[f"copy:{o}" for o in sorted(roots, key=lambda o: roots[o][1].start)], f"grow:{default}",
             *[f"identity:{o}" for o in roots], "partition", "boot", "done"]
    return Plan(parts, str(uuid.uuid4()), esp, roots, default, steps)


# --- steps ---------------------------------------------------------------------------------


def copy_bytes(src: str, src_off: int, dst: str, dst_off: int, length: int, stage: str) -> None:
    """Copy a byte range (the ESP) byte for byte, since the target may hold old data. A chunk
    the target already holds is not written again (a rerun after a power cut, a sparse file)."""
    try:
        fi, fo = os.open(src, os.O_RDONLY), os.open(dst, os.O_RDWR)
    except OSError as e:
        raise InstallError(stage, str(e)) from None
    try:
        done = 0
        while done < length:
            n = min(CHUNK, length - done)
            data = os.pread(fi, n, src_off + done)
            if len(data) != n:
                raise InstallError(stage, f"{src} ended early at byte {src_off + done + len(data)}")
            if os.pread(fo, n, dst_off + done) != data:
                os.pwrite(fo, data, dst_off + done)
            done += n
        os.fsync(fo)
    finally:
        os.close(fi)
        os.close(fo)


@contextmanager
def keep_size(disk: str) -> Iterator[None]:
    """e2image and resize2fs set a plain file's length to the file system's end, as if it began
    at offset 0; a disk image keeps its size (a block device cannot change it anyway)."""
    size = disk_size(disk)
    yield
    if disk_size(disk) != size:
        os.truncate(disk, size)


def zero_range(disk: str, offset: int, length: int, stage: str) -> None:
    """Zeros over a byte range: the device's write-zeroes where it has one, a hole in a file."""
    if stat.S_ISBLK(os.stat(disk).st_mode):
        run(stage, ["blkdiscard", "--zeroout", "--offset", str(offset), "--length", str(length), disk])
    else:
        run(stage, ["fallocate", "--punch-hole", "--keep-size", "--offset", str(offset), "--length", str(length),
                    disk])


def copy_root(req: Request, src: Part, dst: Part, stage: str) -> None:
    # e2image -ra copies the file system's used blocks and metadata, and skips blocks of zeros,
    # so the range gets zeros first: the disk may hold old data there.
    zero_range(req.target, dst.start, src.size, stage)
    with keep_size(req.target):
        run(stage, ["e2image", "-ra", "-o", str(src.start), "-O", str(dst.start), req.stick, req.target])
    # The stick's root may have been live while copied: the copy is checked and repaired.
    run(stage, ["e2fsck", "-fy", ext4(req.target, dst.start)], ok=(0, 1))


def grow_root(req: Request, dst: Part, stage: str) -> None:
    run(stage, ["e2fsck", "-fy", ext4(req.target, dst.start)], ok=(0, 1))
    with keep_size(req.target):
        run(stage, ["resize2fs", ext4(req.target, dst.start), f"{dst.size // 1024}K"])


def _rename_host(text: str, old: str | None, new: str) -> str:
    if not old or old == new:
        return text
    return re.sub(rf"(?<![\w.-]){re.escape(old)}(?![\w-])", new, text)


def scrub_files(fs: Ext4, top: str) -> None:
    """Zero the data blocks of every file under ``top``: removing a file frees its blocks but
    leaves the bytes, and the other hosts' private keys must not stay readable on this disk."""
    files = [f"{top}/{rel}" for rel, e in fs.walk(top) if not e.is_dir] if fs.listdir(top) is not None else []
    if not files:
        return
    # debugfs echoes each command read with -f ("debugfs: blocks ..."); a file's block list follows.
    out = fs.debugfs([f'blocks "{f}"' for f in files]).split("debugfs: ")[1:]
    counts = [len(reply.partition("\n")[2].split()) for reply in out]
    if len(counts) != len(files):
        raise InstallError("identity", f"debugfs listed the blocks of {len(counts)} of {len(files)} secret files")
    fs.debugfs([f'zap_block -f "{f}" {i}' for f, n in zip(files, counts, strict=True) for i in range(n)], write=True)


def _secret_place(path: str) -> bool:
    sub, _, name = path.partition("/")
    return sub in ("ssh", "identity") and bool(name) and "/" not in name and name not in (".", "..")


def host_secrets(req: Request, fs: Ext4) -> list[SecretFile]:
    """The host's ssh keys (ssh/<name>) and agent identity (identity/<name>, docs/identity.md):
    those first boot unsealed, else the stick's clear copies (keys keep their 0600)."""
    if req.secrets is not None:
        return [f for f in req.secrets if _secret_place(f.path)]
    if fs.read(f"{HOST_SECRETS}/{req.host}/{SEALED_NAME}") is not None:
        raise InstallError("identity", f"the stick's keys for {req.host} are sealed: the passphrase is needed "
                                       "(first boot asks for it; clusterctl.passphrase= when unattended)")
    out: list[SecretFile] = []
    for sub in ("ssh", "identity"):
        for e in fs.listdir(f"{HOST_SECRETS}/{req.host}/{sub}") or []:
            if not e.is_dir:
                data = fs.read(f"{HOST_SECRETS}/{req.host}/{sub}/{e.name}") or b""
                mode = (0o644 if e.name.endswith(".pub") else 0o600) if sub == "ssh" else e.mode
                out.append(SecretFile(f"{sub}/{e.name}", mode, data))
    return out


def write_identity(req: Request, os_name: str, dst: Part, disk_name: str, stage: str) -> None:
    fs = Ext4(req.target, dst.start, stage)
    installer_name = (fs.read("/etc/hostname") or b"").decode().strip() or None
    with tempfile.TemporaryDirectory(prefix="clusterctl-identity.") as tmp:
        # The host's own tree (base and OS layers rendered for it, role and host layers) over the root.
        layer = Path(tmp) / "layer"
        if dump_tree(fs, f"{HOST_LAYERS}/{req.host}/root", layer):
            place_tree(fs, layer / "root", "/")
    raw = fs.read("/etc/clusterctl/host.json")
    facts: dict[str, Any] = json.loads(raw) if raw else {}
    facts.update(host=req.host, role=req.role, os=os_name, candidates=[])
    hosts_text = (fs.read("/etc/hosts") or b"").decode()
    files = [(f"{'/etc/ssh' if f.path.startswith('ssh/') else IDENTITY_DIR}/{f.path.split('/', 1)[1]}", f.data,
              f.mode & 0o7777, 0, 0) for f in host_secrets(req, fs)]
    ident_files = [f for f in files if f[0].startswith(f"{IDENTITY_DIR}/")]
    installed = {"host": req.host, "role": req.role, "os": os_name, "disk": disk_name,
                 "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    files += [
        ("/etc/hostname", f"{req.host}\n".encode(), 0o644, 0, 0),
        # An older stick renders /etc/hosts for the installer only: the name is replaced.
        ("/etc/hosts", _rename_host(hosts_text, installer_name, req.host).encode(), 0o644, 0, 0),
        ("/etc/clusterctl/host.json", (json.dumps(facts, indent=2) + "\n").encode(), 0o644, 0, 0),
        (INSTALLED_FILE, (json.dumps(installed, indent=2) + "\n").encode(), 0o644, 0, 0),
        # Made afresh on the installed system's first boot (the stick's boot may have set one).
        ("/etc/machine-id", b"", 0o444, 0, 0),
    ]
    fs.write_files(files)
    if ident_files:
        fs.debugfs([f"sif {IDENTITY_DIR} mode 040700"], write=True)  # the host's private keys live in it
    # Every host's files and secrets travel on the stick; only this host's stay, in place.
    fs.remove_tree(HOST_LAYERS)
    scrub_files(fs, HOST_SECRETS)
    fs.remove_tree(HOST_SECRETS)
    fs.remove([FIRSTBOOT_LINK, "/var/lib/dbus/machine-id", "/var/lib/systemd/random-seed",
               "/var/lib/systemd/credential.secret"])


def write_boot(req: Request, plan: Plan, stage: str) -> None:
    # Legacy BIOS: the stick's MBR boot code (syslinux gptmbr) starts the legacy-bootable ESP.
    fi, fo = os.open(req.stick, os.O_RDONLY), os.open(req.target, os.O_RDWR)
    try:
        os.pwrite(fo, os.pread(fi, 440, 0), 0)
        os.fsync(fo)
    finally:
        os.close(fi)
        os.close(fo)
    esp = Fat(req.target, plan.esp.start, stage)
    entries = stick_entries(esp)
    uuids = {o: dst.uuid for o, (_src, dst) in plan.roots.items()}
    for e in entries:
        e.options = with_root(e.options, uuids.get(e.os))
    # Menu order: the role's order, but its default system OS first.
    present = {e.os for e in entries}
    keep = [plan.default_os] + [o for o in req.oses if o != plan.default_os and o in present]
    esp.delete_tree(f"/{ISOBOOT_DIR}")  # the stick's ISO entries: their ISOs are not copied
    with tempfile.TemporaryDirectory(prefix="clusterctl-boot.") as tmp:
        rewrite(esp, entries, keep, tmp)


# --- running -------------------------------------------------------------------------------


StepHook = Callable[[str], None]


def install(req: Request, on_step: StepHook | None = None, disk_name: str | None = None) -> dict[str, Any]:
    """Install; returns {host, disk, seconds}. ``on_step(step)`` is called as each step starts
    (after the journal names it)."""
    t0 = time.monotonic()
    plan = plan_install(req)
    disk_name = disk_name or req.target
    base = {"state": "incomplete", "host": req.host, "started": int(time.time()), "disk_id": plan.disk_id}
    for step in plan.steps:
        if step == "done":
            break
        journal.write(req.target, {**base, "step": step})
        if on_step is not None:
            on_step(step)
        kind, _, os_name = step.partition(":")
        if kind == "partition":
            write_table(req.target, plan.parts, plan.disk_id)
        elif kind == "esp":
            copy_bytes(req.stick, plan.esp.start, req.target, plan.parts[0].start, plan.esp.size, step)
        elif kind == "copy":
            copy_root(req, *plan.roots[os_name], step)
        elif kind == "grow":
            grow_root(req, plan.roots[os_name][1], step)
        elif kind == "identity":
            write_identity(req, os_name, plan.roots[os_name][1], disk_name, step)
        elif kind == "boot":
            write_boot(req, plan, step)
    seconds = round(time.monotonic() - t0, 1)
    journal.write(req.target, {"state": "complete", "host": req.host, "disk_id": plan.disk_id, "seconds": seconds})
    return {"host": req.host, "disk": disk_name, "seconds": seconds}
