"""A small stick image with the builder's layout, for installer tests on plain files (no tests here).

The ESP is made by the builder's own stage (systemd-boot, syslinux, loader entries per OS);
the roots are small ext4 file systems holding what the build puts on an installer's roots:
facts with no host yet, every host's overlay and secrets, first boot switched on. The GPT is
laid out as builder/stages/image.py does it (ESP first at 1 MiB, legacy-bootable; a root per
system OS; syslinux's gptmbr in the MBR).
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

from agent.stickseal import SEALED_NAME, SecretFile, StickKey, seal
from builder.stages.bootchain import fetch as fetch_chain
from builder.stages.esp import GPTMBR, build_esp
from builder.stages.isoboot import LINUX_DATA_TYPE, build_iso_partition
from builder.tools import ToolRunner

MiB = 1024 * 1024
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
ROOT_TYPE = "4F68BCE3-E8CD-4C1D-96E7-FBCAF984B709"
HOSTS = {"left": "desktop", "right": "storage"}
ROLE_OSES = {"desktop": ["stable", "next", "rescue"], "storage": ["stable", "rescue"]}
SYSTEM_OSES = ["stable", "next"]
ROOT_SIZE = 48 * MiB


def root_tree(tree: Path, os_name: str, sealed: StickKey | None = None) -> None:
    def put(rel: str, text: str, mode: int = 0o644) -> None:
        p = tree / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        os.chmod(p, mode)

    facts = {"cluster": "dualnano", "host": None, "role": None, "os": os_name, "image": "stick",
             "image_type": "usb-installer", "candidates": list(HOSTS)}
    put("etc/hostname", "dualnano-installer\n")
    put("etc/hosts", "127.0.0.1\tlocalhost\n127.0.1.1\tdualnano-installer.home.arpa dualnano-installer\n")
    put("etc/clusterctl/host.json", json.dumps(facts, indent=2) + "\n")
    put("etc/machine-id", "0123456789abcdef0123456789abcdef\n", 0o444)  # as after a boot of the stick
    put("etc/os-release", f'PRETTY_NAME="Debian ({os_name})"\n')
    for host in HOSTS:
        put(f"usr/lib/clusterctl/hosts/{host}/root/etc/motd", f"this is {host}\n")
        put(f"usr/lib/clusterctl/hosts/{host}/root/etc/clusterctl/role", f"{HOSTS[host]}\n")
        if sealed is not None:  # cluster.stick_secrets: passphrase
            blob = seal(sealed, "dualnano", host, host_secret_files(host))
            (tree / f"var/lib/clusterctl/hosts/{host}").mkdir(parents=True, mode=0o700)
            (tree / f"var/lib/clusterctl/hosts/{host}/{SEALED_NAME}").write_bytes(blob)
            continue
        for f in host_secret_files(host):
            put(f"var/lib/clusterctl/hosts/{host}/{f.path}", f.data.decode(), f.mode)
    os.symlink("/etc/motd", tree / "usr/lib/clusterctl/hosts/left/root/etc/motd.link")
    wants = tree / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    os.symlink("/etc/systemd/system/clusterctl-firstboot.service", wants / "clusterctl-firstboot.service")
    if sealed is None:
        os.chmod(tree / "var/lib/clusterctl/hosts/left/ssh", 0o700)


def host_secret_files(host: str) -> list[SecretFile]:
    """What the build puts in a host's folder on the stick (or seals): a key pair and an identity file."""
    return [SecretFile("ssh/ssh_host_ed25519_key", 0o600, f"PRIVATE KEY OF {host}\n".encode()),
            SecretFile("ssh/ssh_host_ed25519_key.pub", 0o644, f"ssh-ed25519 AAAA {host}\n".encode()),
            SecretFile("identity/host.key", 0o600, f"IDENTITY KEY OF {host}\n".encode())]


def make_stick(work: Path, sealed: StickKey | None = None) -> Path:
    """Build the stick image file in ``work``; returns its path. ``sealed``: the hosts' secrets
    sealed with that key, as cluster.stick_secrets: passphrase builds them."""
    work.mkdir(parents=True, exist_ok=True)
    log = work / "build.log"
    uuids = {o: str(uuid.uuid4()) for o in SYSTEM_OSES}
    entries, payloads = [], {}
    for o in ["stable", "next", "rescue"]:
        kernel, initrd = work / f"vmlinuz-{o}", work / f"initrd-{o}"
        kernel.write_bytes(f"kernel of {o}\n".encode() * 1000)
        initrd.write_bytes(f"initrd of {o}\n".encode() * 1000)
        payloads[o] = (kernel, initrd)
        cmd = f"root=PARTUUID={uuids[o]} console=ttyS0,115200 rw" if o in uuids else "rdinit=/sbin/init console=ttyS0"
        entries.append({"os": o, "title": f"{o} (Debian)", "cmdline": cmd})
    # A user's ISO on the stick's menu (and its partition): installed disks get neither.
    iso_fs_uuid = str(uuid.uuid4())
    entries.append({"os": "live", "kind": "iso", "title": "live (ISO live.iso)", "fs_uuid": iso_fs_uuid})
    esp = work / "esp.img"
    (work / "espwork").mkdir(exist_ok=True)
    chain = fetch_chain(work / "chain", ToolRunner(log))  # Debian's signed shim and GRUB, as a build has
    build_esp(entries, payloads, chain, "stable", 3, 2048, esp, work / "espwork", log)
    (work / "isowork").mkdir(exist_ok=True)
    (work / "live.iso").write_bytes(b"not really an ISO\n" * 1000)
    isos = work / "isos.img"
    build_iso_partition({"live": work / "live.iso"}, iso_fs_uuid, isos, work / "isowork", log)
    roots = {}
    for o in SYSTEM_OSES:
        tree = work / f"tree-{o}"
        tree.mkdir()
        root_tree(tree, o, sealed)
        roots[o] = work / f"root-{o}.img"
        with open(roots[o], "wb") as f:
            f.truncate(ROOT_SIZE)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-L", f"root-{o}", "-b", "4096", "-d", str(tree), str(roots[o])],
                       check=True)
    stick = work / "stick.img"
    pos = MiB
    lines = ["label: gpt", f"label-id: {uuid.uuid4()}", "unit: sectors", "first-lba: 2048", ""]
    placed = []
    esp_size = esp.stat().st_size
    lines.append(f'start={pos // 512}, size={esp_size // 512}, type={ESP_TYPE}, uuid={uuid.uuid4()}, name="ESP", '
                 'attrs="LegacyBIOSBootable"')
    placed.append((esp, pos))
    pos += esp_size
    for o in SYSTEM_OSES:
        lines.append(f'start={pos // 512}, size={ROOT_SIZE // 512}, type={ROOT_TYPE}, uuid={uuids[o]}, '
                     f'name="root-{o}"')
        placed.append((roots[o], pos))
        pos += ROOT_SIZE
    lines.append(f'start={pos // 512}, size={isos.stat().st_size // 512}, type={LINUX_DATA_TYPE}, '
                 f'uuid={uuid.uuid4()}, name="isos"')
    placed.append((isos, pos))
    pos += isos.stat().st_size
    with open(stick, "wb") as f:
        f.truncate(pos + 2 * MiB)
    subprocess.run(["sfdisk", "-q", "--no-reread", "--no-tell-kernel", str(stick)],
                   input="\n".join(lines).encode() + b"\n", check=True)
    fd = os.open(stick, os.O_WRONLY)
    try:
        os.pwrite(fd, GPTMBR.read_bytes()[:440], 0)
        for src, at in placed:
            data = src.read_bytes()
            for i in range(0, len(data), MiB):  # zero MiBs stay holes: the stick file stays small
                chunk = data[i:i + MiB]
                if chunk.count(0) != len(chunk):
                    os.pwrite(fd, chunk, at + i)
    finally:
        os.close(fd)
    for src, _ in placed:
        src.unlink()
    return stick
