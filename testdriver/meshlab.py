"""A lab of vesa-wall hosts in QEMU, for tests/test_mesh_qemu.py and bench/mesh_bench.py: the
profile copy, its build, and the guests on one virtual LAN. Commands run in the guests through
the machines' serial shell (Machine.execute, succeed, ...: testdriver/shell.py).

The profile copy (profiles/vesa-wall.yaml, changed only where a lab needs it):
- one disk image per host (``type: disk``), booted as the board's first internal disk;
- no rescue OS (it would be one more initramfs per image, and the lab never boots it);
- the roles' packages join the OS's, so every image shares one root (and the stick's root
  of tests/test_build_image.py, when the caches are shared);
- a lab overlay on every host with the serial shell's guest files (testdriver.shell.GUEST_FILES:
  root logs in on the serial console, ``t`` runs a command and prints its result as one
  ``CLUSTERCTL {"event": "t", ...}`` line, kernel messages stay off the console);
- the screens are kiosks (roles.screen.kiosk: manage): the manager on their monitors;
- on vault, the storage role's drive is the profile's own volume (roles.storage.volumes: a
  4 TB disk formatted when blank and mounted at /srv/drive before the agent starts), mounted
  without background inode-table zeroing. Its second port has no cable (no carrier), so the
  base overlay's network file, which matches every Ethernet port, configures the first only.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from builder.profile import load_profile
from testdriver.board import load_board
from testdriver.lan import Lan
from testdriver.qemu import Machine
from testdriver.shell import GUEST_FILES, GUEST_MODES

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiles" / "vesa-wall.yaml"
LAB_HOSTS = ("wall-1", "wall-2", "vault")
FOREIGN_HOST = "wall-3"  # built with another cluster's CA
BOARDS = {"wall-1": "vesa-mini-pc", "wall-2": "vesa-mini-pc", "wall-3": "vesa-mini-pc", "vault": "storage-box"}
# Ports with a cable in them (the first N of the board's NICs; else only the first). The storage
# box has two, both cabled, and no MAC pin: its ports are one active-backup bond.
CABLED = {"vault": 2}

# Bench tools (bench/mesh_bench.py). tcpbench: bytes over one TCP connection, the floor any
# file protocol sits on. fdmount: the kernel's 9p client on a plain TCP socket handed over as
# trans=fd, exactly as the agent hands over its authenticated one (v9fs's own trans=tcp is
# IPv4 only, and the mesh is IPv6).
TCPBENCH = r'''#!/usr/bin/python3
import os, socket, sys, time
BUF = 1 << 20
def serve(port):
    srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("::", port)); srv.listen(4)
    while True:
        c, _ = srv.accept()
        with c:
            head = c.recv(9, socket.MSG_WAITALL)
            n = int.from_bytes(head[1:], "big")
            if head[:1] == b"w":
                left = n
                while left:
                    got = c.recv_into(memoryview(bytearray(min(BUF, left))))
                    if not got: break
                    left -= got
                c.sendall(b"k")
            else:
                block = bytes(BUF)
                left = n
                while left:
                    c.sendall(block[:min(BUF, left)]); left -= min(BUF, left)
def client(mode, host, port, mb):
    n = mb << 20
    c = socket.create_connection((host, port))
    t0 = time.monotonic()
    c.sendall(mode.encode() + n.to_bytes(8, "big"))
    if mode == "w":
        block = bytes(BUF); left = n
        while left:
            c.sendall(block[:min(BUF, left)]); left -= min(BUF, left)
        c.recv(1)
    else:
        buf = bytearray(BUF); left = n
        while left:
            got = c.recv_into(buf, min(BUF, left))
            if not got: raise SystemExit("short read")
            left -= got
    print(f"{time.monotonic() - t0:.4f}")
if sys.argv[1] == "serve": serve(int(sys.argv[2]))
else: client(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
'''

FDMOUNT = r'''#!/usr/bin/python3
import socket, subprocess, sys
host, port, aname, msize, where = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
s = socket.create_connection((host, port))
fd = s.fileno()
opts = f"trans=fd,rfdno={fd},wfdno={fd},version=9p2000.L,msize={msize},aname={aname},nosuid,nodev"
sys.exit(subprocess.run(["mount", "-t", "9p", "-o", opts, "none", where], pass_fds=[fd]).returncode)
'''

def write_tree(root: Path, files: dict[str, str], meta: dict[str, Any]) -> Path:
    """An overlay folder: its files (path in the root -> text) and its overlay.yaml."""
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    (root / "overlay.yaml").write_text(yaml.safe_dump(meta))
    return root


def write_profile(dest: Path, *, foreign: bool = False, bench: bool = False) -> Path:
    """The lab's copy of vesa-wall in ``dest``; returns its path. With ``foreign``, the same
    cluster and hosts with one more image, of wall-3: built with another CA, it is a machine
    whose identity looks valid (name, cluster, mesh prefix) but that no member trusts. With
    ``bench``, diod joins the roles' packages and the bench tools the lab overlay."""
    dest.mkdir(parents=True, exist_ok=True)
    tools = {"usr/local/bin/tcpbench": TCPBENCH, "usr/local/bin/fdmount": FDMOUNT} if bench else {}
    modes = {**GUEST_MODES, **dict.fromkeys(tools, "0755")}
    lab = write_tree(dest / "overlay-lab", {**GUEST_FILES, **tools},
                      {"modes": {path: {"mode": mode} for path, mode in modes.items()}})
    data = yaml.safe_load(PROFILE.read_text())
    data["include"] = [str(PROFILE.parent / i) for i in data.get("include", [])]
    pkgs = set(data["oses"]["stable"].get("packages") or [])
    for role in data["roles"].values():
        role["os"] = ["stable"]
        pkgs |= set(role.pop("packages", None) or [])
        if bench:
            pkgs.add("diod")
    data["oses"] = {"stable": {**data["oses"]["stable"], "packages": sorted(pkgs), "overlays": [str(lab)]}}
    # The drive is the profile's own volume. A TCG guest would spend minutes of CPU zeroing a
    # 4 TB disk's inode tables in the background: the lab mounts without that (ext4 is fine
    # without it; e2fsck would be slower).
    data["roles"]["storage"]["volumes"]["drive"]["options"] = ["noinit_itable"]
    # People besides the examples' admin: alice's uid assigned by the build, bob's given.
    data["cluster"]["users"] = [{"name": "alice", "groups": []}, {"name": "bob", "uid": 2001, "groups": []}]
    # A German keyboard on the lab's screens: the test sees cluster.keymap reach the console.
    data["cluster"]["keymap"] = "de"
    # The screens show the cluster manager on their monitors (roles.<role>.kiosk).
    data["roles"]["screen"]["kiosk"] = "manage"
    hosts = (*LAB_HOSTS, FOREIGN_HOST) if foreign else LAB_HOSTS
    data["images"] = {h: {"type": "disk", "host": h, "size": "4GiB"} for h in hosts}
    path = dest / ("vesa-wall-foreign.yaml" if foreign else "vesa-wall-lab.yaml")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def build(profile: Path, out: Path, cache: Path, ca_dir: Path, images: list[str], timeout: float = 1500) -> Path:
    """``clusterctl build`` of some images of a lab profile; returns the cluster's output folder."""
    argv = [sys.executable, "-m", "builder", "build", str(profile), "--out", str(out), "--cache-dir", str(cache),
            "--ca-dir", str(ca_dir), "-q", *itertools.chain.from_iterable(("--image", i) for i in images)]
    r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise AssertionError(f"build failed ({r.returncode}): {r.stderr[-4000:]}")
    return out / str(yaml.safe_load(profile.read_text())["cluster"]["name"])


def host_facts(profile: Path) -> dict[str, dict[str, Any]]:
    """Resolved host entries (MAC pins, LAN addresses) of the lab profile."""
    return load_profile(profile).data["hosts"]  # type: ignore[no-any-return]


def make_machine(host: str, images: Path, workdir: Path, lan: Lan, facts: dict[str, dict[str, Any]]) -> Machine:
    board = load_board(BOARDS[host])
    mac = (facts[host].get("pin") or {}).get("mac")
    if isinstance(mac, list):  # a pin may list several MACs; the first is the board's first NIC
        mac = mac[0] if mac else None
    macs = [mac, *[n.mac for n in board.nics[1:]]] if mac else None
    cabled = CABLED.get(host, 1)
    lans: list[Lan | None] = [lan] * cabled + [None] * (len(board.nics) - cabled)
    return Machine(board, workdir / host, boot_image=images / f"{host}.img", as_usb=False, macs=macs, lan=lans,
                   name=host)


class Shell:
    """The bench's older form of the serial shell (bench/mesh_bench.py): ``run`` gives the ``t``
    event's fields as a dict (rc, out, err, seconds); the rest is Machine's execute/succeed."""

    def __init__(self, machine: Machine) -> None:
        self.m = machine

    def wait_prompt(self, timeout: float = 120) -> None:
        self.m.wait_for_shell(timeout)

    def run(self, cmd: str, timeout: float = 60, limit: float | None = None) -> dict[str, Any]:
        r = self.m.run_shell(cmd, timeout, limit)
        return {"rc": r.status, "out": r.out, "err": r.err, "seconds": r.seconds}

    def ok(self, cmd: str, timeout: float = 60) -> str:
        return self.m.succeed(cmd, timeout=timeout)

    def json(self, cmd: str, timeout: float = 60) -> Any:
        return json.loads(self.ok(cmd, timeout))
