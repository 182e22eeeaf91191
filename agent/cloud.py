"""A cloud VM's own steps at every boot (clusterctl-cloud.service, on ``type: cloud`` images only):
grow the root file system to the disk the provider gave, and apply the provider's metadata
(hostname, SSH authorized keys) from a NoCloud or ConfigDrive seed when one is attached.

Why a small reader of our own and not cloud-init:

- what a clusterctl cloud host needs from its provider is two facts (a hostname, SSH keys) and
  one action (grow the root); the rest of what cloud-init does is already decided by the profile
  and the build (users, packages, the host's identity, its network: DHCP on every Ethernet port,
  written by the base overlay), and cloud-init's own network and user modules would fight those;
- cloud-init is a large Python program with its own dependencies (jsonschema, jinja2, configobj,
  netifaces, requests ...): tens of MB more in the root, and several seconds of Python start and
  module runs on every boot (far more under QEMU's TCG), where this reader is a few hundred lines
  on Debian's python3 and python3-yaml, which every root already has;
- its data sources reach out to metadata services over the network; ours reads only attached
  seeds (NoCloud: a vfat or iso9660 file system labelled CIDATA/cidata with ``meta-data`` and
  ``user-data``; ConfigDrive: one labelled config-2 with ``openstack/latest/meta_data.json``), so
  it runs before the network and never waits for a timeout on a provider without a service.

Growing the root does what growpart does, with tools every root has: sfdisk moves the backup GPT
to the disk's end and extends the root partition (the last one) to it, resizepart tells the
kernel (BLKPG, the file system stays mounted), resize2fs grows the mounted ext4 online.

Standard library, python3-yaml and core/ only (layer 2: never builder/ or testdriver/).
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import re
import socket
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core import exitcodes
from core.disk.tools import InstallError, run
from core.events import emit

SECTOR = 512
ALIGN_SECTORS = 2048  # 1 MiB: partitions end on a MiB boundary, as the builder lays them out
GPT_TAIL_SECTORS = 33  # the backup partition entries and header at the disk's end
NOCLOUD_LABEL = "cidata"
CONFIGDRIVE_LABEL = "config-2"
SEED_FILESYSTEMS = ("vfat", "iso9660")
HOSTNAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
KEY_RE = re.compile(r"(ssh-|ecdsa-|sk-)\S+ \S+.*")


# --- metadata ---------------------------------------------------------------------------------


@dataclass
class Metadata:
    source: str  # "nocloud" or "configdrive"
    device: str = ""
    hostname: str | None = None  # as the provider gave it (may be a FQDN)
    ssh_keys: list[str] = field(default_factory=list)


class SeedError(ValueError):
    """A seed whose files cannot be read as what they claim to be."""


def _keys(value: Any) -> list[str]:
    """SSH keys from a metadata value: a string (one key a line), a list, or a mapping name -> key."""
    if isinstance(value, str):
        items: list[Any] = value.splitlines()
    elif isinstance(value, dict):
        items = list(value.values())
    elif isinstance(value, list):
        items = value
    else:
        return []
    out: list[str] = []
    for item in items:
        if isinstance(item, dict):  # ConfigDrive's "keys": [{"type": "ssh", "data": "..."}]
            item = item.get("data")
        if isinstance(item, str) and KEY_RE.fullmatch(item.strip()):
            out.append(item.strip())
    return out


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _yaml(text: str, name: str) -> Any:
    import yaml  # python3-yaml: in every root (builder/stages/rootfs.py BASE_PACKAGES)

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SeedError(f"{name}: not YAML ({e})") from None


def parse_nocloud(meta_text: str, user_text: str | None) -> Metadata:
    """NoCloud's meta-data (YAML: local-hostname, public-keys) and user-data (read only when it
    is ``#cloud-config``: hostname, fqdn, ssh_authorized_keys, users[].ssh_authorized_keys)."""
    meta = _yaml(meta_text, "meta-data") if meta_text.strip() else {}
    if not isinstance(meta, dict):
        raise SeedError("meta-data: expected a mapping")
    md = Metadata("nocloud", hostname=meta.get("local-hostname") or meta.get("hostname"),
                  ssh_keys=_keys(meta.get("public-keys")))
    if user_text and user_text.lstrip().startswith("#cloud-config"):
        user = _yaml(user_text, "user-data") or {}
        if not isinstance(user, dict):
            raise SeedError("user-data: expected a #cloud-config mapping")
        md.hostname = user.get("fqdn") or user.get("hostname") or md.hostname
        md.ssh_keys += _keys(user.get("ssh_authorized_keys"))
        for u in user.get("users") or []:
            if isinstance(u, dict):
                md.ssh_keys += _keys(u.get("ssh_authorized_keys"))
    md.ssh_keys = _unique(md.ssh_keys)
    return md


def parse_configdrive(meta_json: str) -> Metadata:
    """ConfigDrive's openstack/latest/meta_data.json: hostname (or name), public_keys, keys."""
    try:
        meta = json.loads(meta_json)
    except ValueError as e:
        raise SeedError(f"meta_data.json: not JSON ({e})") from None
    if not isinstance(meta, dict):
        raise SeedError("meta_data.json: expected an object")
    keys = _keys(meta.get("public_keys")) + _keys(meta.get("keys"))
    return Metadata("configdrive", hostname=meta.get("hostname") or meta.get("name"), ssh_keys=_unique(keys))


def read_seed_dir(kind: str, root: Path) -> Metadata:
    """The metadata in a mounted (or copied) seed's files."""
    if kind == "nocloud":
        user = root / "user-data"
        return parse_nocloud((root / "meta-data").read_text(errors="replace"),
                             user.read_text(errors="replace") if user.is_file() else None)
    return parse_configdrive((root / "openstack" / "latest" / "meta_data.json").read_text(errors="replace"))


def find_seed(blkid_export: str) -> tuple[str, str, str] | None:
    """(kind, device, fs type) of the first seed in ``blkid -o export`` output, or None.
    Labels compare without case: a FAT label is upper case (CIDATA), an ISO's often not."""
    found: list[tuple[str, str, str]] = []
    for block in blkid_export.strip().split("\n\n"):
        tags = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        label, fstype = tags.get("LABEL", "").lower(), tags.get("TYPE", "")
        if fstype not in SEED_FILESYSTEMS or "DEVNAME" not in tags:
            continue
        if label == NOCLOUD_LABEL:
            found.append(("nocloud", tags["DEVNAME"], fstype))
        elif label == CONFIGDRIVE_LABEL:
            found.append(("configdrive", tags["DEVNAME"], fstype))
    # NoCloud first (a user's own seed), as cloud-init orders them.
    found.sort(key=lambda f: (f[0] != "nocloud", f[1]))
    return found[0] if found else None


def read_seed(kind: str, device: str, fstype: str, mount_base: str = "/run") -> Metadata:
    """Mount the seed read-only for a moment and read it."""
    with tempfile.TemporaryDirectory(prefix="clusterctl-seed-", dir=mount_base) as where:
        run("cloud", ["mount", "-t", fstype, "-o", "ro,nosuid,nodev,noexec", device, where])
        try:
            md = read_seed_dir(kind, Path(where))
        except OSError as e:
            raise SeedError(f"{device}: {e.strerror}: {e.filename}") from None
        finally:
            run("cloud", ["umount", where])
    md.device = device
    return md


# --- applying it --------------------------------------------------------------------------------


def short_hostname(name: str) -> str:
    """The host name of a (fully qualified) name, checked to be one (RFC 1123 label)."""
    short = name.strip().rstrip(".").split(".", 1)[0]
    if not HOSTNAME_RE.fullmatch(short):
        raise SeedError(f"hostname {name!r} is not a host name (letters, digits and '-', up to 63)")
    return short.lower()


def hosts_text(current: str, name: str, fqdn: str | None) -> str:
    """/etc/hosts with its 127.0.1.1 line (Debian's own name line) naming this host."""
    names = f"{fqdn} {name}" if fqdn and fqdn != name else name
    lines = [ln for ln in current.splitlines() if not ln.startswith("127.0.1.1")]
    at = next((i + 1 for i, ln in enumerate(lines) if ln.startswith("127.0.0.1")), 0)
    lines.insert(at, f"127.0.1.1\t{names}")
    return "\n".join(lines) + "\n"


def apply_hostname(given: str, etc: Path = Path("/etc"), set_kernel: bool = True) -> str:
    name = short_hostname(given)
    fqdn = given.strip().rstrip(".").lower() if "." in given.strip().rstrip(".") else None
    (etc / "hostname").write_text(name + "\n")
    hosts = etc / "hosts"
    hosts.write_text(hosts_text(hosts.read_text() if hosts.exists() else "", name, fqdn))
    if set_kernel:
        socket.sethostname(name)
    return name


def key_owner(profile_json: Path) -> str:
    """Who gets the provider's keys: the profile's first user (the cluster's admin), else root,
    as cloud-init gives them to its one default user."""
    try:
        users = json.loads(profile_json.read_text())["cluster"]["users"]
        return str(users[0]["name"]) if users else "root"
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return "root"


def apply_keys(keys: Sequence[str], user: str, home: Path | None = None) -> int:
    """Add the keys the user's authorized_keys (in ``home``, by default theirs) lacks; the number added."""
    pw = pwd.getpwnam(user)
    ssh = (home or Path(pw.pw_dir)) / ".ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)
    os.chown(ssh, pw.pw_uid, pw.pw_gid)
    path = ssh / "authorized_keys"
    have = path.read_text().splitlines() if path.exists() else []
    new = [k for k in keys if k not in have]
    if new or not path.exists():
        path.write_text("".join(f"{line}\n" for line in [*have, *new]))
    os.chown(path, pw.pw_uid, pw.pw_gid)
    path.chmod(0o600)
    return len(new)


# --- growing the root -------------------------------------------------------------------------


@dataclass(frozen=True)
class RootPartition:
    disk: str  # /dev/vda
    node: str  # /dev/vda2
    number: int
    start: int  # sectors of 512 bytes
    size: int
    disk_size: int
    last: bool  # no partition starts after it


def root_partition(mountinfo: Path = Path("/proc/self/mountinfo"),
                   sys_root: Path = Path("/sys")) -> RootPartition | None:
    """The partition mounted at /, from mountinfo and sysfs; None when / is no disk partition."""
    devnum = next((f[2] for f in (ln.split() for ln in mountinfo.read_text().splitlines())
                   if len(f) > 4 and f[4] == "/"), None)
    if devnum is None:
        return None
    part = (sys_root / "dev" / "block" / devnum).resolve()
    if not (part / "partition").is_file():
        return None
    disk = part.parent

    def num(p: Path, name: str) -> int:
        return int((p / name).read_text().strip())

    start = num(part, "start")
    later = [p for p in disk.iterdir() if (p / "partition").is_file() and num(p, "start") > start]
    return RootPartition(disk=f"/dev/{disk.name}", node=f"/dev/{part.name}", number=num(part, "partition"),
                         start=start, size=num(part, "size"), disk_size=num(disk, "size"), last=not later)


def grown_size(root: RootPartition) -> int | None:
    """The root partition's new size in sectors (ending on a MiB boundary before the backup
    GPT), or None when less than a MiB would be gained."""
    end = (root.disk_size - GPT_TAIL_SECTORS - 1) // ALIGN_SECTORS * ALIGN_SECTORS
    size = end - root.start
    return size if size - root.size >= ALIGN_SECTORS else None


def grow_table(disk: str, number: int, start: int, size: int) -> None:
    """Move the backup GPT to the disk's end, then give partition ``number`` its new size (the
    rest of its entry kept). The kernel is told by :func:`grow_root` (the disk is in use)."""
    run("cloud", ["sfdisk", "--relocate", "gpt-bak-std", disk])
    run("cloud", ["sfdisk", "--no-reread", "--no-tell-kernel", "-q", "-N", str(number), disk],
        stdin=f"{start},{size}\n".encode())


def grow_root(root: RootPartition) -> dict[str, int] | None:
    """Grow the root partition and its ext4 to the disk's end; the sizes in bytes, or None."""
    size = grown_size(root)
    if size is None or not root.last:
        return None
    grow_table(root.disk, root.number, root.start, size)
    run("cloud", ["resizepart", root.disk, str(root.number), str(size)])
    run("cloud", ["resize2fs", root.node])
    return {"from": root.size * SECTOR, "to": size * SECTOR}


# --- the service --------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="clusterctl-cloud", description=__doc__.split("\n\n")[0])
    p.add_argument("--etc", type=Path, default=Path("/etc"), help="where hostname, hosts and clusterctl/ are")
    p.add_argument("--no-grow", action="store_true", help="leave the root's size alone")
    args = p.parse_args(argv)
    facts: dict[str, Any] = {"grown": None, "source": None}
    ok = True
    try:
        root = None if args.no_grow else root_partition()
        if root is not None:
            facts["root"] = root.node
            facts["grown"] = grow_root(root)
            if not root.last:
                facts["note"] = f"{root.node} is not the disk's last partition: not grown"
    except InstallError as e:
        ok = False
        emit("error", stage="cloud", message=f"growing the root: {e}")
    try:
        seed = find_seed(run("cloud", ["blkid", "-c", "/dev/null", "-o", "export"], ok=(0, 2)))
        if seed is not None:
            md = read_seed(*seed)
            facts.update(source=md.source, device=md.device)
            if md.hostname:
                facts["hostname"] = apply_hostname(str(md.hostname), args.etc)
            if md.ssh_keys:
                user = key_owner(args.etc / "clusterctl" / "profile.json")
                added = apply_keys(md.ssh_keys, user)
                facts.update(ssh_keys_user=user, ssh_keys=len(md.ssh_keys), ssh_keys_added=added)
    except (InstallError, SeedError, KeyError, OSError) as e:
        ok = False
        emit("error", stage="cloud", message=f"the provider's metadata: {e}")
    emit("cloud", **facts)
    return exitcodes.OK if ok else exitcodes.FAILED


if __name__ == "__main__":
    sys.exit(main())
