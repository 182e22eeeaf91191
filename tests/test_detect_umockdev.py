"""hardware.detect on recorded machines, replayed with umockdev, run by Debian's python3 + python3-pyudev."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.hwfixtures import ROOT, SHAPES, SYSTEM_PYTHON, detect, load_inventory, need_umockdev, run_under_umockdev

SCHEMA = json.loads((ROOT / "hardware" / "inventory.schema.json").read_text())


@pytest.fixture(scope="module")
def inventories(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    need_umockdev()
    return {shape: detect(shape, tmp_path_factory.mktemp(shape)) for shape in SHAPES}


def disk(inv: dict[str, Any], name: str) -> dict[str, Any]:
    return next(d for d in inv["disks"] if d["name"] == name)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_output_validates_and_matches_the_captured_inventory(inventories: dict[str, Any], shape: str) -> None:
    inv = inventories[shape]
    jsonschema.validate(inv, SCHEMA)
    # The JSON fixtures that matching and the wizard are tested on are exactly what detection produces.
    assert inv == load_inventory(shape)


def test_nano_itx_desktop(inventories: dict[str, Any]) -> None:
    inv = inventories["nano-itx-desktop"]
    assert inv["system"]["vendor"] == "Jetway" and inv["system"]["serial"] == "JW-NF9-0001"
    assert inv["system"]["chassis"] == {"type": 3, "smbios": "Desktop", "name": "desktop"}
    assert inv["cpu"] == {"model": "Intel(R) Celeron(R) CPU J1900 @ 1.99GHz", "count": 4}
    assert inv["memory"]["total"] == 4 * 2**30 and inv["memory"]["source"] == "dmi"
    nvme = disk(inv, "nvme0n1")
    assert nvme["type"] == "nvme" and nvme["size"] == 64 * 2**30 and not nvme["rotational"]
    assert nvme["model"] == "Samsung SSD 980 64GB" and nvme["serial"] == "S64ANS0T100001"
    assert nvme["partitions"] == [] and nvme["partition_table"] is None and not nvme["boot_medium"]
    assert "/dev/disk/by-id/nvme-eui.002538d511b00001" in nvme["by_id"]
    stick = disk(inv, "sda")
    assert stick["type"] == "usb" and stick["removable"] and stick["boot_medium"]
    assert stick["model"] == "Cruzer Blade" and stick["vendor"] == "SanDisk"
    assert [p["label"] for p in stick["partitions"]] == ["ESP", "clusterctl-stable", "CLUSTER"]
    assert stick["partitions"][0]["part_label"] == "EFI system"  # \x20 decoded
    assert inv["boot"] == {"medium": "sda", "how": "holds the CLUSTER partition"}
    assert inv["nics"] == [{"name": "enp2s0", "mac": "00:30:18:c1:01:01", "driver": "igb", "link": "up",
                            "speed": 1000, "wireless": False, "bus": "pci"}]
    shown = {d["connector"]: d["connected"] for d in inv["displays"]}
    assert shown == {"HDMI-A-1": True, "DP-1": False}
    assert inv["power"] == {"battery": False, "batteries": [], "ac": None}


def test_storage_box(inventories: dict[str, Any]) -> None:
    inv = inventories["storage-box"]
    internal = [d for d in inv["disks"] if d["type"] != "usb"]
    assert [(d["name"], d["type"], d["rotational"]) for d in internal] == [
        ("sda", "ssd", False), ("sdb", "hdd", True), ("sdc", "ssd", False)]
    assert disk(inv, "sdb")["size"] == 2000398934016 and disk(inv, "sdb")["model"] == "WDC WD20EFRX-68EUZN0"
    assert disk(inv, "sdb")["wwn"] == "0x50014ee2b0000001" and disk(inv, "sdb")["bus"] == "ata"
    data = disk(inv, "sdc")
    assert data["partition_table"] == "gpt" and data["partitions"][0]["filesystem"] == "ext4"
    # The root file system lives on sdd2 (8:50): that names the boot medium.
    assert inv["boot"] == {"medium": "sdd", "how": "holds the root file system"}
    assert [d["name"] for d in inv["disks"] if d["boot_medium"]] == ["sdd"]
    assert [(n["name"], n["link"]) for n in inv["nics"]] == [("enp1s0", "up"), ("enp2s0", "down")]
    assert inv["displays"] and not any(d["connected"] for d in inv["displays"])


def test_laptop(inventories: dict[str, Any]) -> None:
    inv = inventories["laptop"]
    assert inv["system"]["chassis"] == {"type": 10, "smbios": "Notebook", "name": "laptop"}
    assert inv["memory"]["total"] == 16 * 2**30  # two 8 GiB DIMMs from DMI
    # The mouse's battery (scope Device) is not the machine's.
    assert inv["power"]["battery"] and [b["name"] for b in inv["power"]["batteries"]] == ["BAT0"]
    assert inv["power"]["batteries"][0]["capacity"] == 87 and inv["power"]["ac"] is False
    nvme = disk(inv, "nvme0n1")
    assert [p["filesystem"] for p in nvme["partitions"]] == ["vfat", None, "ntfs"]
    assert inv["boot"] == {"medium": "sda", "how": "named by /run/clusterctl/medium"}
    assert inv["nics"][0]["wireless"] and inv["nics"][0]["driver"] == "iwlwifi"
    assert {d["connector"] for d in inv["displays"] if d["connected"]} == {"eDP-1"}


def test_cloud_vm_recorded_on_this_machine(inventories: dict[str, Any]) -> None:
    inv = inventories["cloud-vm"]  # umockdev-record of this build machine's virtio disk and NIC
    assert inv["system"]["vendor"] is None and inv["system"]["chassis"]["name"] == "other"
    vda = disk(inv, "vda")
    assert vda["type"] == "virtio" and vda["bus"] == "virtio" and vda["serial"] == "19966397145360355"
    assert inv["memory"] == {"total": 2 * 2**30, "usable": 2010000 * 1024, "source": "meminfo"}
    assert inv["nics"][0]["driver"] == "virtio_net"


def test_display_unplugged_is_seen(tmp_path: Path) -> None:
    """A umockdev.Testbed in-process: unplug the monitor, collect again."""
    need_umockdev()
    code = f"""
import json, sys
sys.path.insert(0, {str(ROOT)!r})
import gi
gi.require_version("UMockdev", "1.0")
from gi.repository import UMockdev
from hardware.detect import collect
bed = UMockdev.Testbed.new()
bed.add_from_file({str(ROOT / "tests/fixtures/umockdev/nano-itx-desktop.umockdev")!r})
before = collect(proc_root=sys.argv[1], run_root=sys.argv[1])["displays"]
bed.set_attribute("/sys/devices/pci0000:00/0000:00:02.0/drm/card0/card0-HDMI-A-1", "status", "disconnected")
after = collect(proc_root=sys.argv[1], run_root=sys.argv[1])["displays"]
print(json.dumps([any(d["connected"] for d in before), any(d["connected"] for d in after)]))
"""
    done = subprocess.run(["umockdev-wrapper", SYSTEM_PYTHON, "-c", code, str(tmp_path)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [True, False]


def test_collect_on_this_machine_validates() -> None:
    """No umockdev: whatever this Linux box is, the inventory is well-formed."""
    from hardware.detect import collect

    inv = collect()
    jsonschema.validate(inv, SCHEMA)
    assert inv["cpu"]["count"] >= 1


def test_runs_on_debian_python() -> None:
    done = subprocess.run([SYSTEM_PYTHON, "-c", "import sys; sys.path.insert(0, '.'); import json; "
                           "from hardware.detect import collect; json.dumps(collect()); "
                           "import pyudev; print(pyudev.__version__)"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("0.24"), sys.version


def test_inventory_command_on_a_recorded_laptop(tmp_path: Path) -> None:
    """`clusterctl inventory` (summary and --json) on the laptop, replayed by umockdev."""
    code = "import sys; from builder.cli import main; sys.exit(main(sys.argv[1:]))"
    done = run_under_umockdev("laptop", code, "inventory", python=sys.executable)
    assert done.returncode == 0, done.stderr
    assert "LENOVO 20XW0026GE (serial PF2ABCDE)" in done.stdout and "eDP-1 connected" in done.stdout
    assert "present (87%)" in done.stdout
    as_json = run_under_umockdev("laptop", code, "inventory", "--json", python=sys.executable)
    inv = json.loads(as_json.stdout)
    jsonschema.validate(inv, SCHEMA)
    assert inv["system"]["chassis"]["name"] == "laptop" and inv["power"]["battery"]
