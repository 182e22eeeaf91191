"""Issue 13: the hybrid example end to end. Its cloud image boots as a cloud VM does, and a host
installed at home from the stick joins it through the seed, across a home router's NAT.

One build, from a copy of profiles/hybrid-cloud.yaml that adds only the serial shell's guest
files (testdriver/shell.py) and ``cluster.unattended`` (the wizard is tested elsewhere), of
``images.edge`` (``type: cloud``, host edge-1) and ``images.stick`` (den and closet), and one lab
(module fixture) in which two guests boot at once:

- edge-1 on the cloud-vm board: virtio disk and NIC, the board's 32 GiB disk an overlay over
  the 4 GiB image, a NoCloud seed (FAT labelled CIDATA, made with mkfs.vfat and mcopy) as its
  second disk. Its NIC is on a provider network whose DHCP server is a dnsmasq this module
  starts (testdriver/provider.py: a guest-only vde LAN, dnsmasq in its own network namespace),
  which gives it the profile's seed address, 203.0.113.10, as a provider's fixed public address.
- den on the vesa-mini-pc board (UEFI with Secure Boot), from the stick, on the home LAN
  10.45.0.0/24. The stick installs it, its restart powers the machine off, the stick is pulled
  and den boots from its disk.

The two networks are joined only by a home router (testdriver/router.py: a network namespace
with a tap on each switch, NAT from home to the provider side, nothing started on the provider
side let in). No network here has a route anywhere else.

Checked on the cloud VM: the qcow2's compression, the DHCP lease and address, the provider's
hostname and SSH keys, the root grown to the disk, ``ready``. Checked across the NAT: den
finds edge-1 through the seed alone, WireGuard's handshake passes the router (edge-1 sees den
at the router's WAN address), den mounts /n/edge-1 and reads a file written on edge-1's
export, edge-1 mounts den through the tunnel den opened and lists it in /n/cluster, and a
connection edge-1 starts towards den's LAN address is refused by the router.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.mesh.discovery import parse_seed
from testdriver.board import load_board
from testdriver.lan import Lan
from testdriver.meshlab import build, host_facts, write_tree
from testdriver.provider import SEED_DISK, ProviderNet, attach_disk, make_nocloud_seed
from testdriver.qemu import Machine
from testdriver.router import HomeRouter
from testdriver.shell import GUEST_FILES, GUEST_MODES
from tests.diskroom import module_workdir

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiles" / "hybrid-cloud.yaml"
BOOT = 600.0  # power-on to ready under TCG (about 60-80 s alone; more beside other guests)
INSTALL = 1500.0  # den: the stick's power-on to installed, beside edge-1 on a shared 2-core machine
MESH = 300.0  # den's ready until both sides are mounted (seeds are tried every 30 s)
SEED_HOSTNAME = "edge-vm-7.provider.example"  # not the profile's name: the seed's must win
KEY_META = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH1mB0tt9bqDq6lLh4cFQ1m0aX5C1l2yP0Zb2x5t3Qk9 ops@provider"
KEY_USER = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIC9xk2Wq7n3bT0lKpX8f5r2jL4mN6sV1hYcD0eQ7uZa3 deploy@ci"
GiB = 1024**3

# The example's own addresses: the seed is edge-1's public address, the gateway the home router.
_CLUSTER = yaml.safe_load(PROFILE.read_text())["cluster"]
SEED = parse_seed(_CLUSTER["fusion"]["seeds"][0])
EDGE_ADDRESS = SEED.host
HOME = ipaddress.ip_network(_CLUSTER["network"]["lan"])
GATEWAY = _CLUSTER["network"]["gateway"]
PROVIDER = ipaddress.ip_network(f"{EDGE_ADDRESS}/24", strict=False)  # the provider's network (documentation range)
ROUTER_WAN = str(PROVIDER.network_address + 2)  # the home router's public address (dnsmasq is .1)


@dataclass
class CloudVM:
    machine: Machine
    net: ProviderNet
    image: Path


@dataclass
class Lab:
    edge: CloudVM
    den: Machine
    stick: Path
    home: Lan
    router: HomeRouter
    den_address: str  # den's fixed address on the home LAN (the profile's)


def write_profile(dest: Path) -> Path:
    """hybrid-cloud with the serial shell's files on its OS, unattended (no wizard)."""
    dest.mkdir(parents=True, exist_ok=True)
    lab = write_tree(dest / "overlay-lab", GUEST_FILES, {"modes": {p: {"mode": m} for p, m in GUEST_MODES.items()}})
    data = yaml.safe_load(PROFILE.read_text())
    data["include"] = [str(PROFILE.parent / i) for i in data.get("include", [])]
    data["oses"]["stable"]["overlays"] = [str(lab)]
    data["cluster"]["unattended"] = True
    path = dest / PROFILE.name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with module_workdir(tmp_path_factory, "cloud") as base:
        profile = write_profile(base / "profile")
        cache = Path(os.environ.get("CLUSTERCTL_TEST_CACHE") or base / "cache")
        out = build(profile, base / "images", cache, base / "ca", ["edge", "stick"], timeout=2400)
        image, stick = out / "edge.qcow2", out / "stick.img"
        seed = make_nocloud_seed(base / "seed.img", hostname=SEED_HOSTNAME, meta_keys=[KEY_META],
                                 user_keys=[KEY_USER])
        cloud_board = load_board("cloud-vm")
        with ProviderNet("provider", subnet=str(PROVIDER), static={cloud_board.nics[0].mac: EDGE_ADDRESS}) as net, \
                Lan("home") as home, \
                HomeRouter(home, net.lan, lan=f"{GATEWAY}/{HOME.prefixlen}", wan=f"{ROUTER_WAN}/{PROVIDER.prefixlen}"
                           ) as router:
            edge = Machine(cloud_board, base / "edge-1", boot_image=image, as_usb=False, lan=net.lan,
                           extra_disks=[SEED_DISK], name="edge-1")
            attach_disk(edge, 1, seed)
            den = Machine(load_board("vesa-mini-pc"), base / "den", boot_image=stick, lan=home, name="den")
            try:
                # Both at once: den's install (minutes) runs while edge-1's checks do. Any restart
                # of den powers it off (QMP set-action): the install's restart is where the
                # stick is pulled (the den fixture).
                den.start()
                den.qmp("set-action", reboot="shutdown")
                edge.start()
                edge.wait_for("ready", timeout=BOOT)
                edge.wait_for_shell()
                yield Lab(CloudVM(edge, net, image), den, stick, home, router,
                          host_facts(profile)["den"]["address"])
            finally:
                den.close()
                edge.close()


@pytest.fixture(scope="module")
def vm(lab: Lab) -> CloudVM:
    return lab.edge


@pytest.fixture(scope="module")
def den(lab: Lab) -> Machine:
    """den installed from the stick, then booted from its disk to ``ready``, its serial shell up."""
    m = lab.den
    ended = m.wait_for(lambda e: e["event"] in ("installed", "asking", "error"), timeout=INSTALL)
    assert ended["event"] == "installed" and ended["host"] == "den", m.explain(f"den's install: {ended}")
    m.wait_exit(300)  # its restart powered it off
    m.config.boot_image = None  # the stick is pulled; power on from the disk
    m.start()
    ready = m.wait_for(lambda e: e["event"] in ("ready", "error"), timeout=BOOT)
    assert (ready["event"], ready.get("host"), ready.get("role")) == ("ready", "den", "desktop"), m.explain(str(ready))
    m.wait_for_shell()
    return m


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
    # The provider's fixed public address for this VM: the address the profile's seed names.
    assert lease.address == EDGE_ADDRESS
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


# -- the hybrid cluster: den at home, behind the router's NAT, and edge-1 at the provider ------------

def peer_state(m: Machine, peer: str) -> dict[str, Any] | None:
    """The latest ``peer`` event about ``peer`` on this machine's console."""
    found = [e for e in m.events if e.get("event") == "peer" and e.get("peer") == peer]
    return found[-1] if found else None


def wait_mounted(m: Machine, peer: str) -> dict[str, Any]:
    assert m.console is not None
    if not m.console.wait(lambda: (peer_state(m, peer) or {}).get("state") == "mounted", MESH):
        raise AssertionError(m.explain(f"no mounted event for {peer} within {MESH:.0f} s"))
    state = peer_state(m, peer)
    assert state is not None
    return state


def test_den_is_at_home_behind_the_router(lab: Lab, den: Machine) -> None:
    assert SEED.port == 51820  # the seed's port is WireGuard's
    addresses = den.succeed("ip -4 -o address show scope global").splitlines()
    assert len(addresses) == 1 and f" {lab.den_address}/{HOME.prefixlen} " in addresses[0], addresses
    assert den.succeed("ip -4 route show default").split()[:3] == ["default", "via", GATEWAY]
    assert [e for e in den.events if e.get("event") == "error"] == []


def test_den_mounts_edge_1_through_the_seed_and_reads_its_export(lab: Lab, den: Machine) -> None:
    edge = lab.edge.machine
    mounted = wait_mounted(den, "edge-1")
    # mDNS does not cross the router: the only way den knew where edge-1 is was the seed.
    assert mounted["endpoint"] == f"{EDGE_ADDRESS}:{SEED.port}", mounted
    text = os.urandom(16).hex()
    edge.succeed(f"mkdir -p /srv/www/hello && printf %s {text} > /srv/www/hello/index.html")
    assert den.succeed("cat /n/edge-1/fs/www/hello/index.html") == text
    line = next(ln for ln in den.succeed("cat /proc/mounts").splitlines() if " /n/edge-1 " in ln)
    assert " 9p " in line and "trans=fd" in line, line


def test_edge_1_sees_den_at_the_routers_address_and_lists_it_in_n_cluster(lab: Lab, den: Machine) -> None:
    edge = lab.edge.machine
    # Through the tunnel den opened: edge-1 could not have reached den first. Its seed is its own
    # address, which is no candidate (it would point den's endpoint back at edge-1 itself).
    mounted = wait_mounted(edge, "den")
    den_key = den.succeed("wg show wg0 public-key").strip()
    endpoints = dict(line.split("\t") for line in edge.succeed("wg show wg0 endpoints").splitlines())
    # Masqueraded: edge-1 knows den only as the router's WAN address, never its LAN address.
    assert endpoints[den_key].rsplit(":", 1)[0] == ROUTER_WAN, endpoints
    assert mounted["endpoint"] == endpoints[den_key], mounted  # what WireGuard learned, as it was
    assert sorted(edge.succeed("ls /n/cluster/").split()) == ["den", "edge-1"]  # closet is not up
    entry = json.loads(edge.succeed("cat /n/cluster/den"))
    assert (entry["host"], entry["online"], entry["state"]) == ("den", True, "mounted"), entry
    assert entry["endpoint"].rsplit(":", 1)[0] == ROUTER_WAN, entry
    assert edge.succeed("ls /n/den/fs/").split() == ["home"]
    assert sorted(den.succeed("ls /n/cluster/").split()) == ["den", "edge-1"]


def test_the_router_lets_nothing_in_from_the_provider_side(lab: Lab, den: Machine) -> None:
    """The NAT is the only path: a connection edge-1 starts towards den's LAN address (routed to
    the router's WAN side, as anyone on the internet could try) is dropped by the router, while
    den's own connection to edge-1 goes out."""
    edge = lab.edge.machine
    connect = ("python3 -c 'import socket,sys; socket.create_connection((sys.argv[1], 22), timeout=5).close()' {}")
    assert den.execute(connect.format(EDGE_ADDRESS))[0] == 0  # sshd on edge-1, through the NAT
    before = lab.router.dropped()
    edge.succeed(f"ip route add {HOME} via {ROUTER_WAN}")
    try:
        status, _ = edge.execute(connect.format(lab.den_address))
        assert status != 0, "edge-1 opened a connection to den's LAN address"
    finally:
        edge.succeed(f"ip route del {HOME} via {ROUTER_WAN}")
    assert lab.router.dropped() > before  # it reached the router, which refused it
