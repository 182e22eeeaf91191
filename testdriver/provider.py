"""A cloud provider's side of a cloud VM, for tests and benches: its network, where dnsmasq is the
DHCP server, and a NoCloud seed disk with the VM's metadata.

    with ProviderNet("provider") as net:
        seed = make_nocloud_seed(tmp / "seed.img", hostname="vm-7.example", ssh_keys=[key])
        m = Machine(load_board("cloud-vm"), work, boot_image=image, as_usb=False, lan=net.lan,
                    extra_disks=[SEED_DISK])
        attach_disk(m, 1, seed)
        m.start()

The network is a guest-only LAN (:class:`testdriver.lan.Lan`, a vde_switch). dnsmasq runs in a
network namespace of its own (``unshare``) on a tap device that ``vde_plug2tap`` plugs into the
switch: dnsmasq and the guests share one Ethernet, and nothing on it has a route out (the
namespace holds only that tap and its loopback). The seed is a FAT file system labelled CIDATA
made from a plain file (``mkfs.vfat -C`` and ``mcopy``: no loop device, no mount).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from testdriver.board import Disk
from testdriver.lan import Lan, LanError
from testdriver.qemu_cmd import QEMU_IMG

if TYPE_CHECKING:
    from testdriver.qemu import Machine

# The seed as a machine's second disk: virtio, as a provider attaches it.
SEED_DISK = Disk(bus="virtio", size=4 * 2**20, serial="cidata-seed")
TOOLS = {"dnsmasq": "dnsmasq-base", "vde_plug2tap": "vde2", "unshare": "util-linux", "ip": "iproute2"}


@dataclass(frozen=True)
class Lease:
    mac: str
    address: str
    hostname: str  # what the client sent ("*" when nothing)


class ProviderNet:
    """A guest-only LAN with a DHCP server (dnsmasq in its own network namespace)."""

    def __init__(self, name: str = "provider", subnet: str = "10.77.0.0/24",
                 static: dict[str, str] | None = None) -> None:
        """``static``: MAC -> address leases (a provider's public address that stays the VM's, as the
        address a profile's seed names must)."""
        self.lan = Lan(name)
        self.subnet = ipaddress.ip_network(subnet)
        self.static = {mac.lower(): address for mac, address in (static or {}).items()}
        hosts = list(self.subnet.hosts())
        self.server = str(hosts[0])  # dnsmasq's own address, also the router it announces
        self.pool = (str(hosts[99]), str(hosts[198]))  # .100 - .199 for guests
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def dir(self) -> Path:
        return self.lan.dir

    @property
    def log(self) -> Path:
        return self.dir / "dnsmasq.log"

    def _script(self) -> str:
        prefix = self.subnet.prefixlen
        argv = ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                "--port=0",  # DHCP only, no DNS service
                "--bind-interfaces", "--interface=tap0", "--except-interface=lo", "--dhcp-authoritative",
                f"--dhcp-range={self.pool[0]},{self.pool[1]},{self.subnet.netmask},1h",
                f"--dhcp-leasefile={self.dir / 'leases'}", f"--pid-file={self.dir / 'dnsmasq.pid'}",
                f"--log-facility={self.log}", "--log-dhcp", "--user=root", "--group=root",
                *(f"--dhcp-host={mac},{address}" for mac, address in sorted(self.static.items()))]
        return "\n".join([
            "set -e",
            "ip link set lo up",
            "ip tuntap add dev tap0 mode tap",
            f"ip address add {self.server}/{prefix} dev tap0",
            "ip link set tap0 up",
            f"vde_plug2tap --sock {self.lan.sock} tap0 &",
            "exec " + " ".join(argv),
        ])

    def start(self, timeout: float = 15.0) -> ProviderNet:
        missing = [f"{tool} (Debian's {pkg})" for tool, pkg in TOOLS.items() if shutil.which(tool) is None]
        if missing:
            raise LanError(f"the provider network needs {', '.join(missing)}")
        self.lan.start()
        # Root makes the namespace directly; anyone else through a user namespace of their own.
        unshare = ["unshare", "--net", "--fork", "--kill-child"]
        if os.geteuid() != 0:
            unshare.insert(1, "--map-root-user")
        # A session (process group) of its own: stop() ends unshare, dnsmasq and vde_plug2tap together.
        self.proc = subprocess.Popen([*unshare, "sh", "-c", self._script()], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=(self.dir / "provider.log").open("wb"),
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while "DHCP, IP range" not in (self.log.read_text(errors="replace") if self.log.exists() else ""):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = (self.dir / "provider.log").read_text(errors="replace")
                self.stop()
                raise LanError(f"dnsmasq did not start on the provider network: {err.strip()[-2000:]}")
            time.sleep(0.1)
        return self

    def leases(self) -> list[Lease]:
        """dnsmasq's leases: ``expiry mac address hostname client-id`` a line."""
        path = self.dir / "leases"
        out = []
        for line in (path.read_text().splitlines() if path.exists() else []):
            f = line.split()
            if len(f) >= 4:
                out.append(Lease(mac=f[1].lower(), address=f[2], hostname=f[3]))
        return out

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
        self.lan.stop()

    def __enter__(self) -> ProviderNet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def make_nocloud_seed(path: Path, *, hostname: str, instance_id: str = "i-0000000001",
                      meta_keys: Sequence[str] = (), user_keys: Sequence[str] = ()) -> Path:
    """A NoCloud seed (FAT labelled CIDATA): ``meta-data`` with the instance id, local-hostname
    and ``public-keys``; ``user-data`` as ``#cloud-config`` with ``ssh_authorized_keys``."""
    meta = {"instance-id": instance_id, "local-hostname": hostname, "public-keys": list(meta_keys)}
    user = "#cloud-config\n" + yaml.safe_dump({"ssh_authorized_keys": list(user_keys)})
    path.unlink(missing_ok=True)
    work = path.with_name(path.name + ".files")
    work.mkdir(parents=True, exist_ok=True)
    (work / "meta-data").write_text(yaml.safe_dump(meta))
    (work / "user-data").write_text(user)
    subprocess.run(["mkfs.vfat", "-n", "CIDATA", "-C", str(path), "2048"], check=True, capture_output=True)
    subprocess.run(["mcopy", "-i", str(path), str(work / "meta-data"), str(work / "user-data"), "::"],
                   check=True, capture_output=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
    shutil.rmtree(work)
    return path


def make_configdrive_json(hostname: str, keys: dict[str, str]) -> str:
    """ConfigDrive's openstack/latest/meta_data.json for a VM (as OpenStack writes it)."""
    return json.dumps({"uuid": "00000000-0000-4000-8000-000000000001", "hostname": hostname, "name": hostname,
                       "public_keys": keys})


def attach_disk(machine: Machine, index: int, raw: Path) -> None:
    """Make a raw image (a seed) the machine's disk ``index`` (one of its extra_disks): its qcow2
    copy in the work dir, which the machine keeps rather than making a blank disk there."""
    target = machine.paths.disk(index)
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([QEMU_IMG, "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(target)], check=True)
