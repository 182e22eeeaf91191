"""``clusterctl inventory --board``: a board file for a captured box, checked by the board table
and turned into a QEMU command line (the QEMU round trip is in tests/test_mesh_qemu.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hardware.boardgen import board_of, board_yaml
from testdriver.board import load_board
from testdriver.qemu_cmd import MachineConfig, MachinePaths, build_command
from tests.hwfixtures import INVENTORIES, ROOT, load_inventory

FIXTURES = sorted(p.stem for p in INVENTORIES.glob("*.json"))


@pytest.mark.parametrize("shape", FIXTURES)
def test_a_board_from_each_captured_box_is_a_valid_board(shape: str, tmp_path: Path) -> None:
    inv = load_inventory(shape)
    path = tmp_path / f"{shape}.yaml"
    path.write_text(board_yaml(inv, "bios"))
    board = load_board(str(path))  # the board table's checks (a located error otherwise)
    system = inv["system"]
    # A box whose firmware names no vendor or product (the cloud VM's) gets "Unknown": the board needs both.
    assert (board.dmi.vendor, board.dmi.product) == (system["vendor"] or "Unknown", system["product"] or "Unknown")
    assert board.dmi.serial == (system.get("serial") or "") and board.dmi.chassis == system["chassis"]["name"]
    assert board.firmware == "bios" and board.cpus == inv["cpu"]["count"]
    assert board.memory == inv["memory"]["total"]
    internal = [d for d in inv["disks"] if not d.get("removable") and not (d.get("boot_medium") and d["type"] == "usb")]
    assert [(d.size, d.rotational) for d in board.disks] == [(d["size"], d["rotational"]) for d in internal]
    assert [n.mac for n in board.nics] == [n["mac"] for n in inv["nics"]]
    assert board.display == any(d.get("connected") for d in inv["displays"])
    assert board.battery == bool(inv["power"].get("battery"))
    argv = build_command(MachineConfig(board), MachinePaths(tmp_path, tmp_path))
    assert "-smbios" in " ".join(argv) or any("smbios" in a for a in argv)


def test_what_qemu_cannot_imitate_is_said() -> None:
    laptop = load_inventory("laptop")
    _board, notes = board_of(laptop)
    assert any("wireless (iwlwifi), imitated as a wired e1000e" in n for n in notes)
    assert _board["firmware"] == "uefi-secure" and not any("UEFI assumed" in n for n in notes)  # it says so now
    older = {k: v for k, v in laptop.items() if k != "firmware"}  # captured before the firmware was recorded
    assert board_of(older)[0]["firmware"] == "uefi" and any("UEFI assumed" in n for n in board_of(older)[1])
    text = board_yaml(laptop)
    assert text.startswith("# A board for this machine") and "# approximated: wlp0s20f3: wireless" in text
    assert yaml.safe_load(text)["battery"] is True


def test_clusterctl_inventory_board_from_a_captured_box(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "builder", "inventory", "--from",
                           str(INVENTORIES / "storage-box.json"), "--board", "--firmware", "bios"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    board = yaml.safe_load(proc.stdout)
    assert board["firmware"] == "bios" and len(board["disks"]) == 3
    assert "UEFI assumed" not in proc.stdout


def test_an_installed_hosts_own_system_disk_stays_in_its_board() -> None:
    """On an installed host the boot medium is its system disk, part of the box (a stick is not)."""
    inv = load_inventory("storage-box")
    system = next(d for d in inv["disks"] if not d.get("rotational") and d["type"] != "usb")
    for d in inv["disks"]:
        d["boot_medium"] = d is system
    board, _ = board_of(inv, "bios")
    assert system["serial"] in [d.get("serial") for d in board["disks"]]
    assert len(board["disks"]) == len([d for d in inv["disks"] if not d.get("removable")])


def test_the_system_disk_comes_first_and_the_rest_in_port_order() -> None:
    """A twin's image backs its board's first disk, so that must be the box's system disk; kernel
    names follow probe order (async SCSI scanning shuffles them), the ports don't."""
    inv = load_inventory("storage-box")
    by_port = sorted((d for d in inv["disks"] if d["type"] != "usb"), key=lambda d: d["by_path"])
    system = by_port[2]  # the system disk on the last port, and the kernel's names reversed
    for d, name in zip(by_port, ("sdc", "sdb", "sda"), strict=True):
        d["name"], d["boot_medium"] = name, d is system
    inv["disks"].sort(key=lambda d: d["name"])
    board, _ = board_of(inv, "bios")
    expected = [system["serial"]] + [d["serial"] for d in by_port if d is not system]
    assert [d["serial"] for d in board["disks"]] == expected
