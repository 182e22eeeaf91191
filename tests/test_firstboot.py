"""The first-boot service entry (agent/firstboot/flow.py) on a captured inventory and image files.

The nano-ITX desktop's recorded inventory is pointed at a stick image and a sparse target file;
the real wizard decides (unattended), the real installer writes, events come on stdout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.firstboot import cmdline, journal
from agent.firstboot.flow import show_unfinished_as_blank
from core.events import parse_line
from tests.test_installer import assert_installed, blank, data_disk, run_cli, sha
from tests.test_installer_stick import make_stick

ROOT = Path(__file__).resolve().parents[1]
GiB = 1024**3

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="debugfs keeps owners only as root")


@pytest.fixture(scope="module")
def stick(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_stick(tmp_path_factory.mktemp("stick"))


@pytest.fixture(scope="module")
def profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from builder.profile import load_profile

    out = tmp_path_factory.mktemp("profile") / "profile.json"
    out.write_text(json.dumps(load_profile(ROOT / "profiles" / "dual-nano-itx.yaml").data))
    return out


def machine(tmp_path: Path, stick: Path, target: Path, **nvme: Any) -> Path:
    inv = json.loads((ROOT / "tests" / "fixtures" / "inventory" / "nano-itx-desktop.json").read_text())
    disks = {d["name"]: d for d in inv["disks"]}
    disks["sda"]["path"] = str(stick)
    disks["nvme0n1"].update(path=str(target), **nvme)
    out = tmp_path / "inventory.json"
    out.write_text(json.dumps(inv))
    return out


def firstboot(tmp_path: Path, profile: Path, inventory: Path, line: str) -> tuple[int, list[dict[str, Any]]]:
    (tmp_path / "cmdline").write_text(line + "\n")
    (tmp_path / "host.json").write_text(json.dumps({"host": None, "candidates": ["left", "right"]}))
    proc = subprocess.run(
        [sys.executable, "-m", "agent.firstboot", "run", "--cmdline", str(tmp_path / "cmdline"), "--profile",
         str(profile), "--facts", str(tmp_path / "host.json"), "--inventory", str(inventory), "--work",
         str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300,
        env={**os.environ, "COLUMNS": "120"})
    return proc.returncode, [e for e in map(parse_line, proc.stdout.splitlines()) if e]


def test_unattended_first_boot_recognises_left_and_installs(tmp_path: Path, stick: Path, profile: Path) -> None:
    disk = blank(tmp_path / "nvme.img")
    rc, events = firstboot(tmp_path, profile, machine(tmp_path, stick, disk),
                           "console=ttyS0 clusterctl.unattended=1 clusterctl.after=none")
    assert rc == 0, events
    steps = [e["step"] for e in events if e["event"] == "installing"]
    assert steps[0] == "esp" and steps[-1] == "boot"
    events = [e for e in events if e["event"] != "installing"]
    assert [e["event"] for e in events] == ["inventory", "matched", "claim", "installed"]
    assert events[1]["host"] == "left" and events[1]["chosen_by"] == "unattended"
    # This stick image has no CLUSTER partition: the claim is not recorded, and the install goes on.
    assert events[2] == {"event": "claim", "host": "left", "recorded": False,
                         "message": "the stick has no CLUSTER partition"}
    assert events[3]["host"] == "left" and events[3]["disk"] == str(disk)
    decision = json.loads((tmp_path / "run" / "decision.json").read_text())
    assert decision["host"] == "left" and decision["oses"] == ["stable", "next", "rescue"]
    assert_installed(stick, disk, "left")


def test_the_kernel_command_line_forces_a_host(tmp_path: Path, stick: Path, profile: Path) -> None:
    disk = blank(tmp_path / "nvme.img")
    rc, events = firstboot(tmp_path, profile, machine(tmp_path, stick, disk),
                           "clusterctl.host=right clusterctl.after=none")
    assert rc == 0, events
    assert [e["event"] for e in events if e["event"] != "installing"] == ["matched", "installed"]
    assert events[0]["host"] == "right" and events[0]["chosen_by"] == "cmdline"
    assert_installed(stick, disk, "right")


def test_a_disk_with_data_is_asked_about_and_left_alone(tmp_path: Path, stick: Path, profile: Path) -> None:
    disk = data_disk(tmp_path / "nvme.img")
    before = sha(disk)
    inv = machine(tmp_path, stick, disk, partition_table="gpt",
                  partitions=[{"name": "nvme0n1p1", "number": 1, "size": 209715200, "filesystem": "ext4",
                               "label": None, "uuid": None, "part_label": "data"}])
    rc, events = firstboot(tmp_path, profile, inv, "clusterctl.unattended=1 clusterctl.after=none")
    # Unattended, but the disk holds data: the wizard asks; nobody answers (stdin is closed).
    assert rc == 1
    assert [e["event"] for e in events] == ["inventory", "asking", "error"]
    assert events[-1]["stage"] == "match"
    assert sha(disk) == before


def test_our_unfinished_install_is_taken_up_unattended(tmp_path: Path, stick: Path, profile: Path) -> None:
    disk = blank(tmp_path / "nvme.img")
    rc, _ = run_cli(stick, disk, "left", "--kill-at", "boot")
    assert rc < 0 and journal.is_incomplete(journal.read(str(disk)))
    # What detect reports for it: a GPT with our partitions, i.e. "data" to the disk selector.
    inv = machine(tmp_path, stick, disk, partition_table="gpt",
                  partitions=[{"name": "nvme0n1p1", "number": 1, "size": 134217728, "filesystem": "vfat",
                               "label": "ESP", "uuid": None, "part_label": "ESP"}])
    rc, events = firstboot(tmp_path, profile, inv, "clusterctl.unattended=1 clusterctl.after=none")
    assert rc == 0, events
    assert [e["event"] for e in events if e["event"] != "installing"] == ["inventory", "matched", "claim",
                                                                          "installed"]
    assert_installed(stick, disk, "left")


def test_unfinished_disks_are_shown_blank_and_others_kept(tmp_path: Path, stick: Path) -> None:
    unfinished, other = blank(tmp_path / "a.img"), blank(tmp_path / "b.img")
    journal.write(str(unfinished), {"state": "incomplete", "host": "left", "step": "esp"})
    journal.write(str(other), {"state": "complete", "host": "left"})
    inv = {"disks": [{"name": "a", "path": str(unfinished), "partition_table": "gpt", "partitions": [{"n": 1}]},
                     {"name": "b", "path": str(other), "partition_table": "gpt", "partitions": [{"n": 1}]}]}
    assert show_unfinished_as_blank(inv) == ["a"]
    assert inv["disks"][0]["partitions"] == [] and inv["disks"][0]["unfinished_install"]
    assert inv["disks"][1]["partition_table"] == "gpt"


def test_kernel_command_line_options() -> None:
    o = cmdline.parse("root=PARTUUID=x clusterctl.unattended=1 clusterctl.host=left clusterctl.after=poweroff")
    assert (o.unattended, o.host, o.after, o.install) == (True, "left", "poweroff", True)
    o = cmdline.parse("quiet clusterctl.install=0")
    assert (o.unattended, o.host, o.after, o.install) == (None, None, "reboot", False)
    with pytest.raises(cmdline.CmdlineError, match=r"clusterctl\.after=halt"):
        cmdline.parse("clusterctl.after=halt")


def test_a_bad_command_line_is_an_error_event(tmp_path: Path, profile: Path, stick: Path) -> None:
    rc, events = firstboot(tmp_path, profile, machine(tmp_path, stick, blank(tmp_path / "n.img")),
                           "clusterctl.after=halt")
    assert rc == 2 and events == [{"event": "error", "stage": "firstboot",
                                   "message": "clusterctl.after=halt: use one of reboot, poweroff, none"}]
