"""Issue 7 end to end: three vesa-wall hosts in QEMU on one virtual LAN (no outside route),
joined by the fused agent into one namespace.

One session build (testdriver/meshlab.py: a copy of profiles/vesa-wall.yaml with a disk image
per host; cache from $CLUSTERCTL_TEST_CACHE when set), then wall-1, wall-2 (vesa-mini-pc,
UEFI, their pinned MACs) and vault (storage-box, BIOS, four 4 TB disks) boot from their
images. Everything is checked from inside the guests, through the serial console: the
kernel's 9p mounts at /n/<host>, a file written to the storage drive from one host and read
back bit-identical from the others, the drive's real capacity, each peer's real facts, a
pulled cable (reads fail within 10 s, timed in the guest; the mount comes back), and a
fourth machine whose identity comes from another cluster's CA.

Tests run in file order on one set of running guests (module fixture); at most three guests
run at once (wall-2 is powered off before the foreign machine boots).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from testdriver.board import load_board
from testdriver.lan import Lan
from testdriver.meshlab import CABLED, FOREIGN_HOST, LAB_HOSTS, build, host_facts, make_machine, write_profile
from testdriver.qemu import Machine
from tests.diskroom import module_workdir

pytestmark = pytest.mark.slow

BOOT = 600.0  # three TCG guests share two cores: a boot to `ready` takes minutes
MESH = 300.0  # from ready until every peer is mounted
FOUR_TB = 4 * 10**12
BLOB = "/n/vault/fs/drive/alice/blob"


def cache_dir(tmp: Path) -> Path:
    env = os.environ.get("CLUSTERCTL_TEST_CACHE")
    return Path(env) if env else tmp / "cache"


@pytest.fixture(scope="module")
def lab_images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with module_workdir(tmp_path_factory, "mesh") as base:
        yield _build_lab(base)


def _build_lab(base: Path) -> dict[str, Any]:
    cache = cache_dir(base)
    profile = write_profile(base / "profile")
    foreign_profile = write_profile(base / "profile", foreign=True)
    images = build(profile, base / "images", cache, base / "ca", list(LAB_HOSTS))
    # Same cluster, same hosts, another CA: a valid-looking identity nobody here trusts.
    foreign = build(foreign_profile, base / "foreign", cache, base / "ca-foreign", [FOREIGN_HOST])
    return {"base": base, "images": images, "foreign": foreign, "facts": host_facts(foreign_profile)}


def wait_until(m: Machine, test: Callable[[list[dict[str, Any]]], bool], what: str, timeout: float) -> None:
    """Until ``test`` holds for the events seen so far (in any order); fails with the console."""
    assert m.console is not None
    if not m.console.wait(lambda: test(m.events), timeout):
        raise AssertionError(m.explain(f"{what} not seen within {timeout:.0f} s"))


def mounted(events: list[dict[str, Any]]) -> set[str]:
    """Peers whose latest peer event says mounted."""
    state: dict[str, str] = {}
    for e in events:
        if e.get("event") == "peer" and e.get("peer"):
            state[e["peer"]] = e.get("state", "")
    return {p for p, s in state.items() if s == "mounted"}


class Lab:
    def __init__(self, images: dict[str, Any], workdir: Path) -> None:
        self.info = images
        self.workdir = workdir
        self.lan = Lan("mesh").start()
        self.machines: dict[str, Machine] = {}

    def boot(self, host: str, images: Path) -> Machine:
        m = make_machine(host, images, self.workdir, self.lan, self.info["facts"])
        self.machines[host] = m
        m.start()
        return m

    def close(self) -> None:
        for m in self.machines.values():
            m.close()
        self.lan.stop()


@pytest.fixture(scope="module")
def lab(lab_images: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with module_workdir(tmp_path_factory, "guests") as guests:
        yield from _booted_lab(Lab(lab_images, guests), lab_images)


def _booted_lab(lab: Lab, lab_images: dict[str, Any]) -> Iterator[Lab]:
    try:
        for h in LAB_HOSTS:
            lab.boot(h, lab_images["images"])
        for h in LAB_HOSTS:
            m = lab.machines[h]
            ready = m.wait_for("ready", timeout=BOOT)
            assert ready["host"] == h, ready
        for h in LAB_HOSTS:
            others = set(LAB_HOSTS) - {h}
            wait_until(lab.machines[h], lambda ev, o=others: o <= mounted(ev), f"peer events for {sorted(others)}",
                       MESH)
            lab.machines[h].wait_for_shell()
        yield lab
    finally:
        lab.close()


def test_each_host_sees_the_others(lab: Lab) -> None:
    for h in LAB_HOSTS:
        errors = [e for e in lab.machines[h].events if e.get("event") == "error"]
        assert not errors, (h, errors)
    # Both of the box's ports are cabled and unpinned: the LAN address is once, on their bond.
    vault = lab.machines["vault"]
    addresses = vault.succeed("ip -4 -o address show scope global").splitlines()
    assert len(addresses) == 1 and lab.info["facts"]["vault"]["address"] in addresses[0], addresses
    assert addresses[0].split()[1] == "lan0", addresses
    assert len(bond_ports(vault)) == 2
    for h in LAB_HOSTS:
        m = lab.machines[h]
        others = sorted(set(LAB_HOSTS) - {h})
        names = m.succeed("ls /n").split()
        assert set(others) <= set(names), (h, names)
        mounts = m.succeed("cat /proc/mounts")
        for o in others:
            line = next((ln for ln in mounts.splitlines() if f" /n/{o} " in ln), "")
            assert " 9p " in line and "trans=fd" in line and "nosuid" in line and "nodev" in line, (h, o, line)
        assert sorted(m.succeed("ls /n/cluster/").split()) == sorted(LAB_HOSTS)
        status = json.loads(m.succeed("clusterctl status --json"))
        online = {e["host"] for e in status["members"] if e.get("online")}
        assert online == set(LAB_HOSTS), status
        for o in others:  # each peer's role's exports
            assert m.succeed(f"ls /n/{o}/fs/").split() == (["drive"] if o == "vault" else ["home"]), (h, o)


AS_ALICE = "runuser -u alice -- "


def test_a_file_on_the_drive_is_the_same_everywhere(lab: Lab) -> None:
    w1, w2, vault = (lab.machines[h] for h in ("wall-1", "wall-2", "vault"))
    # The fresh drive gave each person a private folder (a peer's root is nobody there).
    assert vault.succeed("stat -c '%U %a' /srv/drive/alice").split() == ["alice", "700"]
    made = w1.succeed(f"head -c 12000000 /dev/urandom > /tmp/blob && sha256sum < /tmp/blob && "
                      f"{AS_ALICE} cp /tmp/blob {BLOB} && sync && {AS_ALICE} sha256sum {BLOB}",
                      timeout=180).split()
    digest = made[0]
    assert made[2] == digest  # written through, read back on the writer
    assert w2.succeed(f"{AS_ALICE} sha256sum {BLOB}", timeout=180).split()[0] == digest
    assert vault.succeed("sha256sum < /srv/drive/alice/blob", timeout=60).split()[0] == digest
    assert vault.succeed("stat -c %s /srv/drive/alice/blob").strip() == "12000000"


def test_each_person_acts_as_themselves_on_the_drive(lab: Lab) -> None:
    """Per-person 9P (access=user; the agent switches to the attaching person's uid, groups):
    permissions on vault apply as if the person were logged in there."""
    w1, vault = lab.machines["wall-1"], lab.machines["vault"]
    vault.succeed("printf 'only bob\\n' > /srv/drive/bob-only && chown bob:bob /srv/drive/bob-only && "
                  "chmod 600 /srv/drive/bob-only && printf 'only root\\n' > /srv/drive/root-only && "
                  "chmod 600 /srv/drive/root-only")
    # alice writes and reads her own files; what she makes is hers on vault.
    w1.succeed(f"{AS_ALICE} sh -c 'echo from wall-1 > /n/vault/fs/drive/alice/note && mkdir /n/vault/fs/drive/alice/d'")
    assert w1.succeed(f"{AS_ALICE} cat /n/vault/fs/drive/alice/note").strip() == "from wall-1"
    owners = vault.succeed("stat -c '%U:%G' /srv/drive/alice/note /srv/drive/alice/d").split()
    assert owners == ["alice:alice", "alice:alice"], owners
    # bob's 0600 file: EACCES for alice; bob reads it from wall-1.
    denied = w1.run_shell(f"{AS_ALICE} cat /n/vault/fs/drive/bob-only", timeout=60)
    assert denied.status != 0 and "Permission denied" in denied.err, denied
    assert w1.succeed("runuser -u bob -- cat /n/vault/fs/drive/bob-only").strip() == "only bob"
    # bob may not look into alice's private folder.
    assert w1.run_shell("runuser -u bob -- ls /n/vault/fs/drive/alice", timeout=60).status != 0
    # root on wall-1 is nobody in vault's drive: no root-only file, no writing into alice's.
    root_read = w1.run_shell("cat /n/vault/fs/drive/root-only", timeout=60)
    assert root_read.status != 0 and "Permission denied" in root_read.err, root_read
    assert w1.run_shell("touch /n/vault/fs/drive/alice/from-root", timeout=60).status != 0
    assert vault.succeed("ls /srv/drive/alice").split() == ["blob", "d", "note"]


def test_each_person_has_one_uid_on_every_host(lab: Lab) -> None:
    """The build's uid ledger (builder/ids.py) reaches every host's accounts and profile.json."""
    ledger = json.loads((lab.info["images"] / "ids.json").read_text())["users"]
    assert ledger["bob"] == 2001 and len(set(ledger.values())) == len(ledger)
    for h in LAB_HOSTS:
        m = lab.machines[h]
        seen = {u: int(m.succeed(f"id -u {u}").strip()) for u in ("admin", "alice", "bob")}
        assert seen == {u: ledger[u] for u in seen}, (h, seen)
        assert int(m.succeed("stat -c %u /home/alice").strip()) == ledger["alice"]
        users = json.loads(m.succeed("cat /etc/clusterctl/profile.json"))["cluster"]["users"]
        assert {u["name"]: u["uid"] for u in users} == {u: ledger[u] for u in seen}


def test_df_shows_the_storage_disks_capacity(lab: Lab) -> None:
    # The profile's volume: a blank 4 TB disk of the box, formatted at first boot and mounted.
    [vol] = [e for e in lab.machines["vault"].events if e.get("event") == "volume"]
    assert (vol["name"], vol["path"], vol["state"], vol["formatted"]) == ("drive", "/srv/drive", "mounted", True), vol
    assert vol["serial"].startswith("ZDH1") and vol["size"] == FOUR_TB, vol
    vault = lab.machines["vault"]
    assert vault.succeed("findmnt -n -o SOURCE,FSTYPE,LABEL /srv/drive").split()[1:] == ["ext4", "drive"]
    local = int(vault.succeed("df -B1 --output=size /srv/drive | tail -n1"))
    assert 0.95 * FOUR_TB < local <= FOUR_TB  # the real 4 TB disk, less ext4's metadata
    for h in ("wall-1", "wall-2"):
        seen = int(lab.machines[h].succeed("df -B1 --output=size /n/vault/fs/drive | tail -n1"))
        assert seen == local, (h, seen, local)


def test_peer_state_is_the_peers_real_state(lab: Lab) -> None:
    w1, vault = lab.machines["wall-1"], lab.machines["vault"]
    assert w1.succeed("cat /n/vault/os/hostname").strip() == "vault"
    assert w1.succeed("cat /n/vault/os/kernel/release").strip() == vault.succeed("uname -r").strip()
    assert w1.succeed("cat /n/vault/os/release/VERSION_CODENAME").strip() == "bookworm"
    box, mini = load_board("storage-box"), load_board("vesa-mini-pc")
    assert w1.succeed("cat /n/vault/hw/system/product").strip() == box.dmi.product
    assert w1.succeed("cat /n/vault/hw/system/serial").strip() == box.dmi.serial
    assert vault.succeed("cat /n/wall-1/hw/system/product").strip() == mini.dmi.product
    assert sorted(w1.succeed("ls /n/vault/hw/disks/").split()) == ["json", "sda", "sdb", "sdc", "sdd", "sde"]
    # Each peer's own NIC (the pinned MAC), not the reader's.
    macs = vault.succeed("cat /n/wall-2/hw/nics/json")
    assert "52:54:00:a1:00:02" in macs and "52:54:00:a1:00:01" not in macs
    # Live state: uptime moves.
    first = float(w1.succeed("cat /n/vault/os/uptime"))
    time.sleep(2)
    assert float(w1.succeed("cat /n/vault/os/uptime")) > first


def bond_ports(m: Machine) -> list[str]:
    return m.succeed("cat /sys/class/net/lan0/bonding/slaves").split()


def active_port(m: Machine) -> str:
    return m.succeed("cat /sys/class/net/lan0/bonding/active_slave").strip()


def test_pulling_the_active_ports_cable_moves_the_traffic_to_the_other(lab: Lab) -> None:
    w1, vault = lab.machines["wall-1"], lab.machines["vault"]
    vault_m, w1m = lab.machines["vault"], lab.machines["wall-1"]
    first = active_port(vault)
    # The ports keep their own MACs (FailOverMACPolicy=active): that says which NIC is active.
    mac = vault.succeed(f"cat /sys/class/net/{first}/address").strip()
    nic = [n.mac for n in load_board("storage-box").nics].index(mac)
    seen = len(w1m.events)
    vault_m.set_link(nic, up=False)
    try:
        # Reads go on: each finishes (no hang past t's limit) and the mount is never lost.
        r = w1.run_shell(f"for i in $(seq 20); do {AS_ALICE} head -c 65536 {BLOB} > /dev/null || exit 1; "
                         "sleep 0.5; done", timeout=120, limit=110)
        assert r.status == 0, r
        now = active_port(vault)
        assert now not in ("", first) and len(bond_ports(vault)) == 2
        assert not [e for e in w1m.events[seen:] if e.get("event") == "peer" and e.get("peer") == "vault"]
        # The address moved with the active port's MAC: a gratuitous ARP told wall-1.
        mac = vault.succeed(f"cat /sys/class/net/{now}/address").strip()
        assert mac == vault.succeed("cat /sys/class/net/lan0/address").strip()
        assert mac in w1.succeed(f"ip neigh show {lab.info['facts']['vault']['address']}"), mac
    finally:
        vault_m.set_link(nic, up=True)


def test_a_pulled_cable_fails_reads_fast_and_the_mount_comes_back(lab: Lab) -> None:
    w1 = lab.machines["wall-1"]
    w1.succeed(f"{AS_ALICE} head -c 4096 {BLOB} > /dev/null")
    vault_m, w1m = lab.machines["vault"], lab.machines["wall-1"]
    ports = range(CABLED["vault"])  # the box is off the LAN only when both its cables are out
    seen = len(w1m.events)
    for nic in ports:
        vault_m.set_link(nic, up=False)
    # Read until a read fails; the guest times it (ms). A hang would end at t's own limit.
    r = w1.run_shell(f"s=$(date +%s%N); while {AS_ALICE} head -c 4096 {BLOB} >/dev/null 2>&1; do sleep 0.2; "
                     f"done; e=$(date +%s%N); echo $(( (e - s) / 1000000 )); "
                     f"timeout 15 {AS_ALICE} cat {BLOB} >/dev/null; echo rc=$?", timeout=90, limit=60)
    assert r.status == 0, r
    lines = r.out.split()
    failed_after_ms, last = int(lines[0]), lines[1]
    assert failed_after_ms < 10_000, r
    assert last != "rc=0" and last != "rc=124", r  # fails with an error, not a hang (124 = timeout)
    wait_until(w1m, lambda ev: any(e.get("event") == "peer" and e.get("peer") == "vault" and e.get("state") == "lost"
                                   for e in ev[seen:]), "vault lost", 30)
    seen = len(w1m.events)
    for nic in ports:
        vault_m.set_link(nic, up=True)
    wait_until(w1m, lambda ev: "vault" in mounted(ev[seen:]), "vault mounted again", 120)
    digest = lab.machines["vault"].succeed("sha256sum < /srv/drive/alice/blob").split()[0]
    assert w1.succeed(f"{AS_ALICE} sha256sum {BLOB}", timeout=120).split()[0] == digest


def test_the_manager_shows_every_host_and_a_role_that_may_not_control_is_refused(lab: Lab) -> None:
    """``clusterctl manage --json`` on wall-1: every host with its real state; vault (storage:
    control lists nothing) asking wall-1 to reboot gets EPERM, and wall-1's event names it."""
    w1, vault = lab.machines["wall-1"], lab.machines["vault"]
    hosts = {h["host"]: h for h in json.loads(w1.succeed("clusterctl manage --json"))["hosts"]}
    assert set(hosts) == set(LAB_HOSTS) and all(h["online"] for h in hosts.values())
    v = hosts["vault"]
    assert (v["role"], v["board"], v["os"], v["default_os"]) == ("storage", "storage-box", "stable", "stable")
    assert v["space"]["drive"]["size"] > 0.9 * FOUR_TB and v["memory"]["total"] > 0 and v["uptime"] > 0
    assert hosts["wall-2"]["board"] == "vesa-mini-pc" and hosts["wall-1"]["self"]
    mark = len(w1.events)
    status, _ = vault.execute("clusterctl manage wall-1 reboot 2>/tmp/refused")
    assert status == 1
    assert "wall-1 refused 'reboot'" in vault.succeed("cat /tmp/refused")
    wait_until(w1, lambda ev: any(e.get("event") == "refused" and e.get("by") == "vault/root" for e in ev[mark:]),
               "wall-1's refused event", 30)
    assert not [e for e in w1.events[mark:] if e.get("event") == "ctl"]
    assert float(w1.succeed("cat /proc/uptime").split()[0]) > 60  # still up


def test_a_kiosks_monitor_shows_the_manager_which_may_look_but_not_act(lab: Lab) -> None:
    """The screens are kiosks in the lab: wall-1's monitor (read back by OCR) shows every host;
    the viewer runs unprivileged, and its reboot key is refused on the screen."""
    w1 = lab.machines["wall-1"]
    shown = w1.wait_for_screen("3 of 3 hosts online", "vault", "storage", timeout=120)
    assert "wall-2" in shown.replace(" ", "")
    pid = w1.succeed("systemctl show -p MainPID --value getty@tty1.service").strip()
    assert w1.succeed(f"ps -o user= -p {pid}").strip() == "clusterctl-kiosk"
    assert "--viewer" in w1.succeed(f"cat /proc/{pid}/cmdline | tr '\\0' ' '")
    mark = len(w1.events)
    w1.send_chars("r")
    w1.wait_for_screen("may look, not act", timeout=60)
    time.sleep(2)
    assert not [e for e in w1.events[mark:] if e.get("event") in ("ctl", "refused")]


def test_a_screen_reboots_another_and_the_manager_sees_it_go_and_come_back(lab: Lab) -> None:
    """``clusterctl manage wall-2 reboot`` on wall-1 (a screen may control screens): wall-2's
    event names wall-1's root, and wall-1's ``manage --json`` shows wall-2 offline, then online."""
    w1, w2 = lab.machines["wall-1"], lab.machines["wall-2"]
    # The next boot only: the lab's hosts boot one OS, so 'stable' is what it can name; GRUB
    # takes it from grubenv at the reboot below and clears it (tests/test_build_image.py boots
    # the rescue system that way on both firmwares).
    status, _ = w1.execute("clusterctl manage wall-2 boot rescue 2>/tmp/usage")
    assert status == 2 and "wall-2 boots stable" in w1.succeed("cat /tmp/usage")
    mark = len(w2.events)
    assert "wall-2: boot stable sent" in w1.succeed("clusterctl manage wall-2 boot stable")
    wait_until(w2, lambda ev: any(e.get("event") == "ctl" and e.get("command") == "boot" and e.get("os") == "stable"
                                  and e.get("by") == "wall-1/root" for e in ev[mark:]), "wall-2's boot event", 30)
    assert grub_next(w2) == "stable"
    mark = len(w2.events)
    assert "wall-2: reboot sent" in w1.succeed("clusterctl manage wall-2 reboot")
    wait_until(w2, lambda ev: any(e.get("event") == "ctl" and e.get("by") == "wall-1/root" for e in ev[mark:]),
               "wall-2's ctl event", 30)

    def wall2_online() -> bool:
        snap = json.loads(w1.succeed("clusterctl manage --json wall-2"))
        return bool(snap["hosts"][0]["online"])

    went = back = None
    start = time.monotonic()
    while time.monotonic() - start < BOOT and back is None:
        online = wall2_online()
        if not online and went is None:
            went = time.monotonic() - start
        elif online and went is not None:
            back = time.monotonic() - start
        time.sleep(2)
    assert went is not None, "wall-1 never saw wall-2 offline"
    assert back is not None, "wall-1 never saw wall-2 back"
    print(f"\nwall-2 offline in wall-1's manager after {went:.0f} s, back after {back:.0f} s")
    wait_until(w2, lambda ev: any(e.get("event") == "ready" for e in ev[mark:]), "wall-2's ready again", BOOT)
    ready = [e for e in w2.events[mark:] if e.get("event") == "ready"]
    assert ready[-1]["host"] == "wall-2" and ready[-1]["os"] == "stable"
    w2.wait_for_shell()
    assert grub_next(w2) is None  # GRUB cleared it when it booted


def grub_next(m: Machine) -> str | None:
    """The next_entry in the GRUB environment on the host's own ESP, as GRUB reads it."""
    out = m.succeed("PYTHONPATH=/usr/lib/clusterctl python3 -c 'from agent.bootctl import root_disk; "
                    "from core.disk.bootonce import grub_next; print(grub_next(root_disk()))'").strip()
    return None if out == "None" else out


def test_a_foreign_identity_mounts_nothing_and_is_no_member(lab: Lab) -> None:
    # Three guests at most: wall-2 goes before the stranger comes.
    assert lab.machines["wall-2"].power_off(timeout=120)
    stranger = lab.boot(FOREIGN_HOST, lab.info["foreign"])
    ready = stranger.wait_for("ready", timeout=BOOT)
    assert ready["host"] == FOREIGN_HOST
    stranger.wait_for({"event": "mesh", "state": "up"}, timeout=MESH)
    stranger.wait_for_shell()
    # It advertises itself and tries the members it was built to know; give it time to try
    # (a refusal shows on either side), then look.
    w1 = lab.machines["wall-1"]
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if any(e.get("event") == "peer" and e.get("state") == "refused" for e in [*stranger.events, *w1.events,
                                                                                   *lab.machines["vault"].events]):
            break
        time.sleep(3)
    time.sleep(10)
    assert not [e for e in stranger.events if e.get("event") == "peer" and e.get("state") == "mounted"]
    mounts = stranger.succeed("cat /proc/mounts")
    assert not [ln for ln in mounts.splitlines() if " /n/" in ln], mounts
    stranger.fail(f"cat {BLOB} > /dev/null", timeout=60)
    for h in ("wall-1", "vault"):
        other = lab.machines[h]
        assert FOREIGN_HOST not in other.succeed("ls /n/cluster/").split()
        status = json.loads(other.succeed("clusterctl status --json"))
        assert FOREIGN_HOST not in {e["host"] for e in status["members"]}, status
        assert FOREIGN_HOST not in other.succeed("clusterctl status")
        assert f" /n/{FOREIGN_HOST} " not in other.succeed("cat /proc/mounts")
    # The members still see each other.
    assert "blob" in lab.machines["wall-1"].succeed(f"{AS_ALICE} ls /n/vault/fs/drive/alice/")


def selector_view(inv: dict[str, Any]) -> dict[str, Any]:
    """Every field of an inventory the selectors and pins read (docs/selectors.md)."""
    system = inv["system"]
    return {
        "vendor": system.get("vendor"), "product": system.get("product"), "serial": system.get("serial"),
        "chassis": (system.get("chassis") or {}).get("name"), "cpus": inv["cpu"]["count"],
        "memory": inv["memory"]["total"],
        "disks": sorted((d["type"], d["size"], d["rotational"], d.get("model"), d.get("serial"))
                        for d in inv["disks"] if not d.get("boot_medium") and not d.get("removable")),
        "macs": sorted(n["mac"] for n in inv["nics"]),
        "display": any(d.get("connected") for d in inv["displays"]),
        "battery": bool(inv["power"].get("battery")),
    }


def test_a_board_made_from_a_hosts_inventory_boots_a_twin_with_the_same_inventory(lab: Lab, tmp_path: Path) -> None:
    """The round trip a user makes for CI: ``clusterctl inventory --board`` on their box, then a
    QEMU twin of that box. Here the box is vault (two ports, three disks): its board, checked
    against the board table, boots vault's own image, and the twin's inventory equals vault's on
    every field the selectors read."""
    vault = lab.machines["vault"]
    first = json.loads(vault.succeed("clusterctl inventory --json", timeout=120))
    board_file = tmp_path / "vault-twin.yaml"
    board_file.write_text(vault.succeed("clusterctl inventory --board", timeout=120))
    twin_board = load_board(str(board_file))  # the board table's checks, as for a shipped board
    assert twin_board.firmware == lab.machines["vault"].board.firmware
    # Three guests at most: the stranger and vault itself go first (the twin boots vault's image).
    for h in (FOREIGN_HOST, "vault"):
        if h in lab.machines:
            lab.machines[h].power_off(timeout=120)
    with Machine(twin_board, tmp_path / "twin", boot_image=lab.info["images"] / "vault.img", as_usb=False,
                 name="vault-twin") as twin:
        twin.start()
        assert twin.wait_for("ready", timeout=BOOT)["host"] == "vault"
        twin.wait_for_shell()
        second = json.loads(twin.succeed("clusterctl inventory --json", timeout=120))
    assert selector_view(second) == selector_view(first)


def test_the_screens_keyboard_has_the_profiles_layout(lab: Lab) -> None:
    """The lab's profile says keymap: de: on the console, the key right of T is z (y on a US keyboard)."""
    w1 = lab.machines["wall-1"]
    assert "clusterctl-keymap.service" not in w1.succeed("systemctl --failed --no-legend --plain")
    line = w1.succeed("dumpkeys | grep '^keycode  21 = '").strip()
    assert line.split()[3] in ("+z", "z"), line
