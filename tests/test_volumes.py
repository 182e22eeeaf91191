"""Volumes (roles.<role>.volumes): which disk each takes, what is formatted, what is refused.

The plan is judged on inventory JSON; formatting runs the real mkfs.ext4 and blkid on files
(mounting needs a kernel mount and is checked in the QEMU mesh lab, tests/test_mesh_qemu.py).
"""

from __future__ import annotations

import copy
import io
import json
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from agent.mesh.config import ConfigError, role_volumes
from agent.volumes import VolumeStep, apply, format_disk, plan_volumes, prepare, still_blank
from builder.profile import ProfileInvalid, load_profile
from core.disk.tools import InstallError
from core.events import parse_line
from tests.test_profile_errors import errors_of

ROOT = Path(__file__).resolve().parents[1]
TB4 = 4 * 10**12


def disk(name: str, size: int = TB4, type_: str = "hdd", **extra: Any) -> dict[str, Any]:
    return {"name": name, "path": f"/dev/{name}", "size": size, "type": type_, "rotational": type_ == "hdd",
            "removable": False, "model": "ST4000VN008", "serial": f"ZDH{name}", "partition_table": None,
            "filesystem": None, "label": None, "partitions": [], "boot_medium": False, **extra}


def box(*disks: dict[str, Any]) -> dict[str, Any]:
    return {"disks": list(disks)}


ROOT_SSD = disk("sda", 240 * 10**9, "ssd", partition_table="gpt", boot_medium=True,
                partitions=[{"name": "sda1", "filesystem": "vfat", "label": "ESP"}])
DRIVE = {"drive": {"path": "/srv/drive", "disk": {"type": "hdd", "largest": True}}}


def test_a_blank_disk_is_formatted_never_the_system_disk() -> None:
    [s] = plan_volumes(DRIVE, box(ROOT_SSD, disk("sdb"), disk("sdc")))
    assert (s.action, s.disk["name"], s.path) == ("format", "sdb", "/srv/drive")  # ties: by name
    assert "blank" in s.why
    [s] = plan_volumes({"v": {"path": "/srv/v", "disk": {"type": "ssd"}}}, box(ROOT_SSD, disk("sdb")))
    assert s.action == "missing" and "booted from" in s.why


def test_the_disk_that_holds_the_volume_wins_whatever_its_name() -> None:
    # SATA names move between boots: the labelled disk is the volume's, even if another blank
    # disk now sorts first.
    [s] = plan_volumes(DRIVE, box(ROOT_SSD, disk("sdb"), disk("sdc", filesystem="ext4", label="drive")))
    assert (s.action, s.disk["name"]) == ("mount", "sdc")


def test_a_disk_holding_anything_else_is_refused_unless_wipe() -> None:
    used = disk("sdb", partition_table="gpt", partitions=[{"name": "sdb1", "filesystem": "ntfs", "label": "Data"}])
    [s] = plan_volumes(DRIVE, box(ROOT_SSD, used))
    assert s.action == "refuse" and "ntfs Data" in s.why and "wipe" in s.why
    wipe = copy.deepcopy(DRIVE)
    wipe["drive"]["disk"]["wipe"] = True
    [s] = plan_volumes(wipe, box(ROOT_SSD, used))
    assert s.action == "format" and "wipe allowed" in s.why
    # An ext4 file system labelled for something else is data too.
    [s] = plan_volumes(DRIVE, box(ROOT_SSD, disk("sdb", filesystem="ext4", label="photos")))
    assert s.action == "refuse"


def test_two_volumes_never_share_a_disk_and_wipe_spares_another_volumes_disk() -> None:
    vols = {
        "backup": {"path": "/srv/backup", "disk": {"type": "hdd", "smallest": True, "wipe": True}},
        "media": {"path": "/srv/media", "disk": {"type": "hdd", "largest": True}},
    }
    # media already lives on sdb (sorted first); backup may wipe, but not media's disk.
    steps = plan_volumes(vols, box(ROOT_SSD, disk("sdb", filesystem="ext4", label="media"), disk("sdc")))
    by = {s.name: s for s in steps}
    assert (by["media"].action, by["media"].disk["name"]) == ("mount", "sdb")
    assert (by["backup"].action, by["backup"].disk["name"]) == ("format", "sdc")
    steps = plan_volumes(vols, box(ROOT_SSD, disk("sdb"), disk("sdc")))
    assert sorted(s.disk["name"] for s in steps) == ["sdb", "sdc"]
    [s, t] = plan_volumes(vols, box(ROOT_SSD, disk("sdb")))
    assert {s.action, t.action} == {"format", "missing"}


def test_a_labelled_disk_the_selector_no_longer_fits_is_left_alone() -> None:
    vols = {"drive": {"path": "/srv/drive", "disk": {"serial": "ZDHsdc"}}}
    [s] = plan_volumes(vols, box(ROOT_SSD, disk("sdb", filesystem="ext4", label="drive"), disk("sdc")))
    assert (s.action, s.disk["name"]) == ("format", "sdc")
    vols = {"drive": {"path": "/srv/drive", "disk": {"type": "hdd", "largest": True}}}
    [s] = plan_volumes(vols, box(ROOT_SSD, disk("sdb", 2 * 10**12, filesystem="ext4", label="drive"), disk("sdc")))
    assert (s.action, s.disk["name"]) == ("mount", "sdb")  # largest picks among blank disks, not over its own


def sparse(path: Path, size: int = 64 << 20) -> str:
    with path.open("wb") as f:
        f.truncate(size)
    return str(path)


def blkid(device: str) -> dict[str, str]:
    out = subprocess.run(["blkid", "-p", "-o", "export", device], capture_output=True, text=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_format_writes_a_labelled_ext4_and_never_formats_twice(tmp_path: Path) -> None:
    dev = sparse(tmp_path / "disk")
    assert still_blank(dev)
    format_disk(dev, "drive", wipe=False)
    seen = blkid(dev)
    assert (seen["TYPE"], seen["LABEL"]) == ("ext4", "drive")
    assert not still_blank(dev)
    with pytest.raises(InstallError, match="no longer blank"):
        format_disk(dev, "other", wipe=False)
    assert blkid(dev)["LABEL"] == "drive"
    format_disk(dev, "other", wipe=True)  # what disk.wipe allows
    assert blkid(dev)["LABEL"] == "other"


def test_a_disk_that_gained_data_since_the_inventory_is_not_formatted(tmp_path: Path) -> None:
    dev = sparse(tmp_path / "disk")
    subprocess.run(["mkfs.vfat", dev], check=True, capture_output=True)  # written after udev looked
    step = VolumeStep("drive", str(tmp_path / "mnt"), "format", disk("sdb", path=dev), "blank")
    out = io.StringIO()
    assert apply([step], out) is False
    events = [parse_line(line) for line in out.getvalue().splitlines()]
    assert events[0]["event"] == "volume" and events[0]["state"] == "failed" and "no longer blank" in events[0]["why"]
    assert events[1]["event"] == "error" and events[1]["stage"] == "volumes"
    assert blkid(dev)["TYPE"] == "vfat"


def test_refused_and_missing_volumes_are_errors_on_the_console() -> None:
    steps = [VolumeStep("a", "/srv/a", "refuse", disk("sdb"), "sdb holds gpt"),
             VolumeStep("b", "/srv/b", "missing", None, "no internal disk fits")]
    out = io.StringIO()
    assert apply(steps, out) is False
    events = [parse_line(line) for line in out.getvalue().splitlines()]
    assert [(e["event"], e.get("state")) for e in events] == [
        ("volume", "refused"), ("error", None), ("volume", "missing"), ("error", None)]


def test_prepare_waits_for_a_late_disk() -> None:
    seen = [box(ROOT_SSD), box(ROOT_SSD), box(ROOT_SSD, disk("sdb", filesystem="ext4", label="drive"))]
    naps: list[float] = []
    out = io.StringIO()

    def collect() -> dict[str, Any]:
        return seen.pop(0)

    # The disk is there on the third look; mounting it then fails here (no /dev/sdb in a test),
    # which shows the plan went on to the disk rather than giving up on a missing one.
    ok = prepare(DRIVE, collect, out, wait=60, sleep=naps.append)
    assert ok is False and len(naps) == 2 and not seen
    [ev, err] = [parse_line(line) for line in out.getvalue().splitlines()]
    assert (ev["state"], ev["disk"]) == ("failed", "sdb") and err["stage"] == "volumes"


def test_role_volumes_reads_the_installed_profile(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(PROFILE % textwrap.indent(
        "drive: {path: /srv/drive, disk: {type: hdd, largest: true}}", "      "))
    resolved = load_profile(tmp_path / "p.yaml").model
    (tmp_path / "host.json").write_text(json.dumps({"host": "vault", "role": "storage"}))
    (tmp_path / "profile.json").write_text(resolved.dumps())  # as the build writes it
    # DRIVE, with what the field table fills: no wipe, no extra mount options.
    assert role_volumes(tmp_path) == ("storage", {"drive": {**DRIVE["drive"], "disk": {**DRIVE["drive"]["disk"],
                                                                                        "wipe": False},
                                                            "options": []}})
    (tmp_path / "host.json").write_text(json.dumps({"host": None, "role": None}))  # an installer stick
    assert role_volumes(tmp_path) == (None, {})
    (tmp_path / "host.json").write_text(json.dumps({"host": "vault", "role": "storage"}))
    broken = resolved.to_json()
    broken["roles"]["storage"]["volumes"] = {"drive": "/srv"}
    (tmp_path / "profile.json").write_text(json.dumps(broken))
    with pytest.raises(ConfigError, match="volumes"):
        role_volumes(tmp_path)


PROFILE = """\
cluster: {name: t, network: {lan: 10.1.0.0/24}}
oses: {stable: {suite: bookworm}}
roles:
  storage:
    os: [stable]
    match: {disks: {count: ">=2"}}
    volumes:
%s
hosts:
  h: {role: storage, board: storage-box}
"""


def volume_errors(tmp_path: Path, volumes: str) -> list[str]:
    return errors_of(tmp_path, PROFILE % textwrap.indent(textwrap.dedent(volumes), "      "))


def test_volumes_validate_and_mistakes_are_located(tmp_path: Path) -> None:
    assert volume_errors(tmp_path, "drive: {path: /srv/drive, disk: {type: hdd, largest: true}}") == []
    errs = volume_errors(tmp_path, """\
        drive: {path: /srv/drive, disk: {type: hdd, smallest: true, largest: true}}
        sys: {path: /usr, disk: {serial: X}}
        again: {path: /srv/drive, disk: {serial: Y}}
        peers: {path: /n/peers, disk: {serial: Z}}
        a-very-long-volume-name: {path: /srv/x, disk: {}}
        nodisk: {path: /srv/y}
        relative: {path: srv/z, disk: {siz: 1TB}}
    """)
    assert errs == [
        "p.yaml:8:67: roles.storage.volumes.drive.disk.largest: smallest and largest exclude each other: keep one",
        "p.yaml:9:13: roles.storage.volumes.sys.path: /usr is a folder of the system itself: mount data under "
        "/srv, /mnt or /home instead",
        'p.yaml:10:15: roles.storage.volumes.again.path: /srv/drive is also the path of volume "drive"',
        "p.yaml:11:15: roles.storage.volumes.peers.path: /n/peers is inside the cluster namespace /n, where peers "
        "are mounted",
        "p.yaml:12:7: roles.storage.volumes: volume name: longer than 16 characters",
        'p.yaml:13:15: roles.storage.volumes.nodisk: missing "disk": which internal disk holds the volume',
        'p.yaml:14:18: roles.storage.volumes.relative.path: "srv/z" is not an absolute path below / such as '
        "/srv/drive",
        'p.yaml:14:38: roles.storage.volumes.relative.disk: unknown key "siz" (did you mean "size"?)',
    ]


def test_the_install_disk_selector_refuses_smallest_and_largest_too(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    text = (ROOT / "profiles" / "vesa-wall.yaml").read_text().replace(
        "install: {disk: {type: ssd}}", "install: {disk: {type: ssd, smallest: true, largest: true}}")
    path.write_text(text)
    (tmp_path / "common").symlink_to(ROOT / "profiles" / "common")
    with pytest.raises(ProfileInvalid) as e:
        load_profile(path)
    assert [d.message for d in e.value.diagnostics] == [
        "hosts.vault.install.disk.largest: smallest and largest exclude each other: keep one"]
