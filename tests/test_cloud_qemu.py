"""Issue 13: the hybrid example's cloud image boots as a cloud VM does.

One build of ``images.edge`` (``type: cloud``, host edge-1) from a copy of
profiles/hybrid-cloud.yaml that adds only the serial shell's guest files (testdriver/shell.py),
and one boot of it (module fixture) on the cloud-vm board: virtio disk and NIC, the board's
32 GiB disk an overlay over the 4 GiB image. Its NIC is on a provider network whose only other
member is a dnsmasq this module starts (testdriver/provider.py: a guest-only vde LAN, dnsmasq in
its own network namespace; no route anywhere), and a NoCloud seed (FAT labelled CIDATA, made
with mkfs.vfat and mcopy) is its second disk. Everything is checked from that one boot:
the qcow2's compression, the DHCP lease and address, the provider's hostname and SSH keys, the
root grown to the disk, and the ``ready`` event.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from testdriver.board import load_board
from testdriver.meshlab import build, write_tree
from testdriver.provider import SEED_DISK, ProviderNet, attach_disk, make_nocloud_seed
from testdriver.qemu import Machine
from testdriver.shell import GUEST_FILES, GUEST_MODES
from tests.diskroom import module_workdir

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiles" / "hybrid-cloud.yaml"
BOOT = 600.0  # power-on to ready under TCG (about 60-80 s alone; more beside other guests)
SEED_HOSTNAME = "edge-vm-7.provider.example"  # not the profile's name: the seed's must win
KEY_META = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH1mB0tt9bqDq6lLh4cFQ1m0aX5C1l2yP0Zb2x5t3Qk9 ops@provider"
KEY_USER = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIC9xk2Wq7n3bT0lKpX8f5r2jL4mN6sV1hYcD0eQ7uZa3 deploy@ci"
GiB = 1024**3


@dataclass
class CloudVM:
    machine: Machine
    net: ProviderNet
    image: Path


def write_profile(dest: Path) -> Path:
    """hybrid-cloud with only its cloud image, and the serial shell's files on its OS."""
    dest.mkdir(parents=True, exist_ok=True)
    lab = write_tree(dest / "overlay-lab", GUEST_FILES, {"modes": {p: {"mode": m} for p, m in GUEST_MODES.items()}})
    data = yaml.safe_load(PROFILE.read_text())
    data["include"] = [str(PROFILE.parent / i) for i in data.get("include", [])]
    data["oses"]["stable"]["overlays"] = [str(lab)]
    data["images"] = {"edge": data["images"]["edge"]}
    path = dest / PROFILE.name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudVM]:
    with module_workdir(tmp_path_factory, "cloud") as base:
        profile = write_profile(base / "profile")
        cache = Path(os.environ.get("CLUSTERCTL_TEST_CACHE") or base / "cache")
        image = build(profile, base / "images", cache, base / "ca", ["edge"]) / "edge.qcow2"
        seed = make_nocloud_seed(base / "seed.img", hostname=SEED_HOSTNAME, meta_keys=[KEY_META],
                                 user_keys=[KEY_USER])
        with ProviderNet("provider") as net:
            m = Machine(load_board("cloud-vm"), base / "edge-1", boot_image=image, as_usb=False, lan=net.lan,
                        extra_disks=[SEED_DISK], name="edge-1")
            attach_disk(m, 1, seed)
            try:
                m.start()
                m.wait_for("ready", timeout=BOOT)
                m.wait_for_shell()
                yield CloudVM(m, net, image)
            finally:
                m.close()


def event(vm: CloudVM, name: str) -> dict[str, Any]:
    found = [e for e in vm.machine.events if e.get("event") == name]
    assert len(found) == 1, vm.machine.explain(f"expected one {name!r} event, saw {len(found)}")
    return found[0]


def test_the_image_is_a_compressed_qcow2(vm: CloudVM) -> None:
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(vm.image)], check=True,
                                     capture_output=True, text=True).stdout)
    assert info["format"] == "qcow2" and info["virtual-size"] == 4 * GiB
    check = json.loads(subprocess.run(["qemu-img", "check", "--output=json", str(vm.image)],
                                      capture_output=True, text=True).stdout)
    assert check["check-errors"] == 0
    # Nearly every written cluster compressed (a few stay plain when compressing gains nothing).
    assert check["compressed-clusters"] > 0.8 * check["allocated-clusters"], check
    assert vm.image.stat().st_size < 600 * 2**20


def test_ready_comes_after_the_provider_metadata_without_errors(vm: CloudVM) -> None:
    ready, cloud = event(vm, "ready"), event(vm, "cloud")
    assert (ready["host"], ready["role"], ready["os"], ready["image"]) == ("edge-1", "edge", "stable", "edge")
    names = [e["event"] for e in vm.machine.events]
    assert names.index("cloud") < names.index("ready")
    assert [e for e in vm.machine.events if e.get("event") == "error"] == []
    assert (cloud["source"], cloud["device"]) == ("nocloud", "/dev/vdb")


def test_dhcp_on_the_provider_network(vm: CloudVM) -> None:
    m, net = vm.machine, vm.net
    mac = m.board.nics[0].mac
    leases = [lease for lease in net.leases() if lease.mac == mac]
    assert len(leases) == 1, net.leases()
    lease = leases[0]
    pool = range(int(net.pool[0].rsplit(".", 1)[1]), int(net.pool[1].rsplit(".", 1)[1]) + 1)
    assert lease.address.startswith("10.77.0.") and int(lease.address.rsplit(".", 1)[1]) in pool
    # DHCP ran after the seed was read: the provider saw the provider's hostname.
    assert lease.hostname == "edge-vm-7"
    addresses = m.succeed("ip -4 -o address show scope global").splitlines()
    assert len(addresses) == 1 and f" {lease.address}/24 " in addresses[0], addresses
    assert addresses[0].split()[1].startswith("en") and "dynamic" in addresses[0]
    # No fixed LAN address, no bond: the cluster's LAN addressing does not apply to a cloud host.
    assert "lan0" not in m.succeed("ip -o link")
    assert m.succeed("ip -4 route show default").split()[:3] == ["default", "via", net.server]
    assert "DHCP=yes" in m.succeed("cat /etc/systemd/network/50-clusterctl-lan.network")


def test_hostname_and_ssh_keys_from_nocloud(vm: CloudVM) -> None:
    m = vm.machine
    assert m.succeed("hostname").strip() == "edge-vm-7"
    assert m.succeed("cat /etc/hostname") == "edge-vm-7\n"
    assert "127.0.1.1\tedge-vm-7.provider.example edge-vm-7\n" in m.succeed("cat /etc/hosts")
    cloud = event(vm, "cloud")
    assert (cloud["hostname"], cloud["ssh_keys_user"], cloud["ssh_keys"]) == ("edge-vm-7", "admin", 2)
    keys = m.succeed("cat /home/admin/.ssh/authorized_keys").splitlines()
    # The profile's own key for admin (profiles/common/users.yaml) stays; the provider's two follow.
    (admin,) = yaml.safe_load((PROFILE.parent / "common" / "users.yaml").read_text())["cluster"]["users"]
    assert keys == [*admin["ssh_keys"], KEY_META, KEY_USER], keys
    assert m.succeed("stat -c '%U %G %a' /home/admin/.ssh/authorized_keys /home/admin/.ssh").split("\n")[:2] == [
        "admin admin 600", "admin admin 700"]


def test_the_root_file_system_grew_to_the_disk(vm: CloudVM) -> None:
    m = vm.machine
    disk = m.board.disks[0].size  # the board's 32 GiB disk, over the 4 GiB image
    assert disk == 32 * GiB
    cloud = event(vm, "cloud")
    assert cloud["root"] == "/dev/vda2" and cloud["grown"]["from"] < 4 * GiB
    assert disk - 2 * 2**20 <= cloud["grown"]["to"] + int(m.succeed("cat /sys/block/vda/vda2/start")) * 512 <= disk
    fs_bytes = int(m.succeed("df -B1 --output=size / | tail -1"))
    assert fs_bytes > 30 * GiB, fs_bytes
    assert int(m.succeed("blockdev --getsize64 /dev/vda2")) == cloud["grown"]["to"]
    # The table is whole: the backup GPT moved to the disk's end.
    verify = m.run_shell("sfdisk --verify /dev/vda 2>&1")
    assert verify.status == 0 and "No errors detected" in verify.out and "backup" not in verify.out.lower(), verify
