"""The installer on files: a stick image with the builder's layout, target disks as sparse files.

Checks the end state with the tools a person would use: sfdisk --json, e2fsck, debugfs, mtools.
Power cuts are real: the installer's process group is killed (SIGKILL) as a step starts or
in the middle of one, and the next run must end installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.firstboot import journal
from agent.firstboot.installer import Request, _rename_host, install, plan_install
from agent.stickseal import StickKey, key_for, unseal
from core.disk.bootmenu import parse_entry, with_root
from core.disk.tools import InstallError
from core.events import parse_line
from tests.test_installer_stick import HOSTS, ROLE_OSES, host_secret_files, make_stick

ROOT = Path(__file__).resolve().parents[1]
GiB = 1024**3
MiB = 1024**2
ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "LC_ALL": "C"}

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="debugfs keeps owners only as root")


@pytest.fixture(scope="session")
def stick(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_stick(tmp_path_factory.mktemp("stick"))


def blank(path: Path, size: int = GiB) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def request(stick: Path, target: Path, host: str = "left", **kw: Any) -> Request:
    role = HOSTS[host]
    return Request(str(stick), str(target), host, role, ROLE_OSES[role], **kw)


def table(disk: Path) -> dict[str, Any]:
    out = subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, text=True, check=True).stdout
    return json.loads(out)["partitiontable"]


def part(disk: Path, name: str) -> dict[str, Any]:
    return next(p for p in table(disk)["partitions"] if p.get("name") == name)


def cat(disk: Path, partition: dict[str, Any], path: str) -> str:
    return subprocess.run(["debugfs", "-R", f"cat {path}", f"{disk}?offset={partition['start'] * 512}"],
                          capture_output=True, text=True, env=ENV).stdout


def ls(disk: Path, partition: dict[str, Any], path: str) -> list[str]:
    out = subprocess.run(["debugfs", "-R", f"ls -p {path}", f"{disk}?offset={partition['start'] * 512}"],
                         capture_output=True, text=True, env=ENV).stdout
    return [f.split("/")[5] for f in out.splitlines() if f.count("/") >= 6 and f.split("/")[5] not in (".", "..")]


def mode(disk: Path, partition: dict[str, Any], path: str) -> int:
    out = subprocess.run(["debugfs", "-R", f"stat {path}", f"{disk}?offset={partition['start'] * 512}"],
                         capture_output=True, text=True, env=ENV).stdout
    return int(out.split("Mode:")[1].split()[0], 8)


def fsck_clean(disk: Path, partition: dict[str, Any]) -> bool:
    r = subprocess.run(["e2fsck", "-fn", f"{disk}?offset={partition['start'] * 512}"], capture_output=True)
    return r.returncode == 0


def fat(disk: Path, *args: str) -> str:
    esp = part(disk, "ESP")
    return subprocess.run([args[0], "-i", f"{disk}@@{esp['start'] * 512}", *args[1:]], capture_output=True,
                          text=True, env=ENV, check=True).stdout


def sha(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def run_cli(stick: Path, target: Path, host: str = "left", *extra: str) -> tuple[int, list[dict[str, Any]]]:
    role = HOSTS[host]
    proc = subprocess.run(
        [sys.executable, "-m", "agent.firstboot", "install", "--stick", str(stick), "--target", str(target),
         "--host", host, "--role", role, "--oses", ",".join(ROLE_OSES[role]), *extra],
        cwd=ROOT, capture_output=True, text=True, start_new_session=True, timeout=300)
    events = [e for e in map(parse_line, proc.stdout.splitlines()) if e]
    return proc.returncode, events


def assert_installed(stick: Path, disk: Path, host: str = "left", identity_key: bytes | None = None) -> None:
    """The whole end state of an install of ``host``: layout, boot, file systems, identity
    (``identity_key``: its host.key, when the stick holds another than the test stick's own)."""
    role = HOSTS[host]
    systems = [o for o in ROLE_OSES[role] if o != "rescue"]
    pt = table(disk)
    assert pt["label"] == "gpt"
    names = [p["name"] for p in pt["partitions"]]
    # ESP first, the default OS's root last and to the end of the disk.
    assert names == ["ESP", *[f"root-{o}" for o in systems[1:]], f"root-{systems[0]}"]
    esp = part(disk, "ESP")
    assert esp["start"] == 2048 and "LegacyBIOSBootable" in esp.get("attrs", "")
    last = pt["partitions"][-1]
    assert (last["start"] + last["size"]) * 512 > disk.stat().st_size - 2 * MiB
    with open(stick, "rb") as s, open(disk, "rb") as d:
        assert s.read(440) == d.read(440)  # syslinux's GPT boot code
    assert journal.read(str(disk)) is not None and journal.read(str(disk))["state"] == "complete"  # type: ignore[index]
    # Boot menus: the role's OSes only, roots by this disk's PARTUUIDs, the default first.
    assert sorted(fat(disk, "mdir", "-b", "::/").split()) == sorted(
        ["::/EFI/", "::/loader/", "::/syslinux/", *[f"::/{o}/" for o in ROLE_OSES[role]]])
    # The signed chain came along with the ESP; GRUB's menu boots the default first.
    assert sorted(fat(disk, "mdir", "-b", "::/EFI/BOOT").split()) == [
        "::/EFI/BOOT/BOOTX64.EFI", "::/EFI/BOOT/grubx64.efi", "::/EFI/BOOT/mmx64.efi"]
    grub = fat(disk, "mtype", "::/EFI/debian/grub.cfg")
    titles = re.findall(r"^menuentry '[^']*' --id '([^']*)'", grub, re.MULTILINE)
    assert titles == ROLE_OSES[role] and "isoboot" not in grub
    cfg = fat(disk, "mtype", "::/syslinux/syslinux.cfg")
    assert f"DEFAULT {systems[0]}" in cfg
    for o in systems:
        uuid = part(disk, f"root-{o}")["uuid"].lower()
        entry = next(e for e in fat(disk, "mdir", "-b", "::/loader/entries").split() if e.endswith(f"-{o}.conf"))
        assert f"root=PARTUUID={uuid} " in fat(disk, "mtype", entry)
        assert f"root=PARTUUID={uuid} " in cfg
        assert f"linux /{o}/vmlinuz root=PARTUUID={uuid} " in grub
    for o in systems:
        p = part(disk, f"root-{o}")
        assert fsck_clean(disk, p)
        assert cat(disk, p, "/etc/hostname") == f"{host}\n"
        assert f"127.0.1.1\t{host}.home.arpa {host}\n" in cat(disk, p, "/etc/hosts")
        facts = json.loads(cat(disk, p, "/etc/clusterctl/host.json"))
        assert (facts["host"], facts["role"], facts["os"]) == (host, role, o)
        assert json.loads(cat(disk, p, "/etc/clusterctl/installed.json"))["host"] == host
        assert cat(disk, p, "/etc/motd") == f"this is {host}\n"  # the host's own overlay
        assert cat(disk, p, "/etc/ssh/ssh_host_ed25519_key") == f"PRIVATE KEY OF {host}\n"
        assert mode(disk, p, "/etc/ssh/ssh_host_ed25519_key") == 0o600
        assert mode(disk, p, "/etc/ssh/ssh_host_ed25519_key.pub") == 0o644
        key = identity_key if identity_key is not None else f"IDENTITY KEY OF {host}\n".encode()
        assert cat(disk, p, "/etc/clusterctl/identity/host.key") == key.decode()
        assert mode(disk, p, "/etc/clusterctl/identity/host.key") == 0o600
        assert mode(disk, p, "/etc/clusterctl/identity") & 0o7777 == 0o700
        assert cat(disk, p, "/etc/machine-id") == ""
        # No other host's files or secrets, and first boot is off.
        assert ls(disk, p, "/usr/lib/clusterctl") == [] and ls(disk, p, "/var/lib/clusterctl") == []
        assert "clusterctl-firstboot.service" not in ls(disk, p, "/etc/systemd/system/multi-user.target.wants")
    # The default root fills its partition.
    p = part(disk, f"root-{systems[0]}")
    info = subprocess.run(["dumpe2fs", "-h", f"{disk}?offset={p['start'] * 512}"], capture_output=True,
                          text=True).stdout
    blocks = int(info.split("Block count:")[1].split()[0])
    assert blocks * 4096 == p["size"] * 512


def test_installs_the_desktop_onto_a_blank_disk(stick: Path, tmp_path: Path) -> None:
    disk = blank(tmp_path / "nvme.img")
    result = install(request(stick, disk), disk_name="/dev/nvme0n1")
    assert result["host"] == "left" and result["disk"] == "/dev/nvme0n1" and result["seconds"] > 0
    assert_installed(stick, disk, "left")
    # The stick's ISO entry and its GRUB stay on the stick (assert_installed: not on the disk).
    assert "::/isoboot/" in fat(stick, "mdir", "-b", "::/").split()
    assert "menuentry 'live (ISO live.iso)' --id 'live' --hotkey=4 {\n  configfile /isoboot/live.cfg\n}" in fat(
        stick, "mtype", "::/EFI/debian/grub.cfg")


def test_storage_host_gets_only_its_oses(stick: Path, tmp_path: Path) -> None:
    disk = blank(tmp_path / "sda.img", 2 * GiB)
    rc, events = run_cli(stick, disk, "right")
    assert rc == 0, events
    assert events[-1]["event"] == "installed" and events[-1]["host"] == "right"
    assert_installed(stick, disk, "right")


def data_disk(path: Path) -> Path:
    """A disk with a partition table and an ext4 file system holding a file."""
    blank(path)
    subprocess.run(["sfdisk", "-q", str(path)], input="label: gpt\nstart=2048, size=409600, name=\"data\"\n",
                   text=True, check=True)
    tree = path.parent / "data-tree"
    tree.mkdir(exist_ok=True)
    (tree / "photos.txt").write_text("precious\n" * 1000)
    fs = path.parent / "data-fs"
    blank(fs, 200 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(fs)], check=True)
    with open(fs, "rb") as src, open(path, "r+b") as dst:
        dst.seek(MiB)
        dst.write(src.read())
    fs.unlink()
    return path


def test_a_disk_holding_data_is_not_touched(stick: Path, tmp_path: Path) -> None:
    disk = data_disk(tmp_path / "data.img")
    before = sha(disk)
    rc, events = run_cli(stick, disk)
    assert rc == 1
    assert events[-1]["event"] == "error" and events[-1]["stage"] == "check"
    assert "holds a gpt partition table (data)" in events[-1]["message"]
    assert sha(disk) == before


def test_wiping_allowed_installs_over_old_data(stick: Path, tmp_path: Path) -> None:
    disk = data_disk(tmp_path / "data.img")
    # Old bytes everywhere the roots go: the installer must not leave any inside a file system.
    with open(disk, "r+b") as f:
        for at in range(129 * MiB, 400 * MiB, 4 * MiB):
            f.seek(at)
            f.write(os.urandom(4 * MiB))
    rc, events = run_cli(stick, disk, "left", "--allow-wipe")
    assert rc == 0, events
    assert_installed(stick, disk, "left")


def test_never_the_boot_medium(stick: Path) -> None:
    with pytest.raises(InstallError, match="booted from"):
        plan_install(request(stick, stick))


def test_a_disk_too_small_is_refused_before_writing(stick: Path, tmp_path: Path) -> None:
    disk = blank(tmp_path / "tiny.img", 200 * MiB)
    with pytest.raises(InstallError, match="too small"):
        install(request(stick, disk))
    assert journal.read(str(disk)) is None


def test_a_finished_install_counts_as_data(stick: Path, tmp_path: Path) -> None:
    disk = blank(tmp_path / "nvme.img")
    install(request(stick, disk))
    with pytest.raises(InstallError, match="holds a gpt partition table"):
        install(request(stick, disk, host="left"))


STEPS_LEFT = ["esp", "copy:next", "copy:stable", "grow:stable", "identity:next", "identity:stable", "partition",
              "boot"]


def test_the_steps_are_the_planned_ones(stick: Path, tmp_path: Path) -> None:
    plan = plan_install(request(stick, blank(tmp_path / "d.img")))
    assert plan.steps == [*STEPS_LEFT, "done"]


@pytest.mark.parametrize("cut", [*STEPS_LEFT, "copy:stable+0.05", "esp+0.05"])
def test_a_power_cut_is_recovered_by_the_next_run(stick: Path, tmp_path: Path, cut: str) -> None:
    disk = blank(tmp_path / "nvme.img")
    rc, events = run_cli(stick, disk, "left", "--kill-at", cut)
    assert rc == -signal.SIGKILL
    assert not any(e["event"] == "installed" for e in events)
    rec = journal.read(str(disk))
    step, _, delay = cut.partition("+")
    assert rec is not None and rec["state"] == "incomplete"
    # A cut at a step's start stops in that step; one a few ms into it may land a step later.
    assert rec["step"] == step if not delay else rec["step"] in STEPS_LEFT[STEPS_LEFT.index(step):]
    # The next run recognises its own unfinished install: no wipe permission needed.
    rc, events = run_cli(stick, disk, "left")
    assert rc == 0, events
    assert events[-1]["event"] == "installed"
    assert_installed(stick, disk, "left")


def test_boot_entries_and_host_names() -> None:
    e = parse_entry("title stable\nsort-key 10\nlinux /stable/vmlinuz\ninitrd /stable/initrd.img\n"
                    "options root=PARTUUID=AAAA-1 console=ttyS0 rw\n")
    assert e is not None and (e.os, e.initrd) == ("stable", "/stable/initrd.img")
    assert with_root(e.options, "bbbb-2") == "root=PARTUUID=bbbb-2 console=ttyS0 rw"
    assert with_root("rdinit=/sbin/init console=ttyS0", "bbbb-2") == "rdinit=/sbin/init console=ttyS0"
    assert parse_entry("title x\noptions quiet\n") is None
    text = "127.0.1.1\tdualnano-installer.home.arpa dualnano-installer\n10.0.0.2\tdualnano-installer2\n"
    assert _rename_host(text, "dualnano-installer", "left") == \
        "127.0.1.1\tleft.home.arpa left\n10.0.0.2\tdualnano-installer2\n"


def test_laying_a_tree_twice_keeps_the_file_system_clean(tmp_path: Path) -> None:
    """debugfs 1.47.0 leaves a half-made folder when told to make one that exists; place_tree
    must only make missing folders (found on a real stick: e2fsck "unconnected directory")."""
    from core.disk.ext4 import Ext4, place_tree

    img = blank(tmp_path / "fs.img", 64 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
    tree = tmp_path / "tree"
    (tree / "usr/lib/clusterctl/agent/firstboot").mkdir(parents=True)
    (tree / "root/.ssh").mkdir(parents=True)
    (tree / "root/.ssh/authorized_keys").write_text("ssh-ed25519 AAAA x\n")
    for n in range(5):
        (tree / f"usr/lib/clusterctl/agent/firstboot/m{n}.py").write_text(f"# {n}\n" * 500)
    fs = Ext4(str(img), 0)
    for _ in range(2):
        place_tree(fs, tree, "/")
        assert subprocess.run(["e2fsck", "-fn", str(img)], capture_output=True).returncode == 0
    assert fs.read("/usr/lib/clusterctl/agent/firstboot/m4.py") == b"# 4\n" * 500
    assert fs.read("/root/.ssh/authorized_keys") == b"ssh-ed25519 AAAA x\n"


# --- a sealed stick (cluster.stick_secrets: passphrase) ---------------------------------------

PASSPHRASE = "lost sticks tell nothing"


@pytest.fixture(scope="session")
def sealed_stick(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_stick(tmp_path_factory.mktemp("sealed-stick"), sealed=StickKey.derive(PASSPHRASE, b"s" * 16))


def test_a_sealed_stick_shows_no_host_key_and_installs_with_the_opened_keys(sealed_stick: Path,
                                                                          tmp_path: Path) -> None:
    raw = sealed_stick.read_bytes()
    for host in HOSTS:
        for f in host_secret_files(host):
            if not f.path.endswith(".pub"):
                assert f.data.strip() not in raw, f"{host}'s {f.path} is readable on the sealed stick"
    blobs = {h: cat(sealed_stick, part(sealed_stick, "root-stable"), f"/var/lib/clusterctl/hosts/{h}/sealed").encode()
             for h in HOSTS}
    key = key_for(blobs["left"], PASSPHRASE)
    disk = blank(tmp_path / "nvme.img")
    install(request(sealed_stick, disk, secrets=unseal(key, blobs["left"], "left")), disk_name="/dev/nvme0n1")
    assert_installed(sealed_stick, disk, "left")  # the keys in place; no host's sealed blob left


def test_a_sealed_stick_without_its_keys_opened_stops_before_the_disk_is_made_a_host(sealed_stick: Path,
                                                                                    tmp_path: Path) -> None:
    disk = blank(tmp_path / "nvme.img")
    with pytest.raises(InstallError, match="sealed: the passphrase is needed"):
        install(request(sealed_stick, disk))
    assert journal.read(str(disk))["state"] == "incomplete"  # type: ignore[index]  # the next boot starts over
