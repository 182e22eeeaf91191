"""A board file (testdriver/boards' shape) for the machine an inventory describes.

``clusterctl inventory --board`` on a user's real box prints it, so CI can boot a twin of that
box in QEMU: the same firmware, DMI identity, CPUs, memory, internal disks (bus, size, model,
serial, spinning or not), NICs (model, MAC), display and battery, i.e. every field the
selectors read. What QEMU can't imitate exactly is said in a comment on the line.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from hardware.firmware import board_firmware, firmware

# Linux NIC drivers → the QEMU NIC model closest to them (the MAC is what matters to selectors).
NIC_MODELS = {"virtio_net": "virtio", "e1000": "e1000", "e1000e": "e1000e", "igb": "e1000e", "igc": "e1000e",
              "ixgbe": "e1000e", "8139too": "rtl8139", "8139cp": "rtl8139"}
DISK_BUSES = {"nvme": "nvme", "virtio": "virtio", "mmc": "mmc"}  # by the inventory's type; others by bus
CHASSIS = ("desktop", "laptop", "mini-pc", "tower", "server", "all-in-one", "tablet", "other")
SERIAL_RE = re.compile(r"[^A-Za-z0-9_.-]")


def _text(value: Any, limit: int = 64) -> str:
    return str(value or "").strip()[:limit]


def _disk(d: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    bus = DISK_BUSES.get(str(d.get("type")))
    if bus is None:
        bus = "usb" if d.get("bus") == "usb" else "sata"
    out: dict[str, Any] = {"bus": bus, "size": int(d.get("size") or 0)}
    if d.get("model"):
        out["model"] = _text(d["model"], 40)
    serial = SERIAL_RE.sub("", str(d.get("serial") or ""))[-20:]
    if serial:
        out["serial"] = serial
    out["rotational"] = bool(d.get("rotational"))
    note = None
    if d.get("bus") not in (None, bus, "ata", "scsi") and bus == "sata":
        note = f"{d.get('name')}: bus {d.get('bus')}, imitated as SATA"
    return out, note


def _natural(text: str) -> tuple[Any, ...]:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))


def _disk_order(d: dict[str, Any]) -> tuple[bool, tuple[Any, ...]]:
    """The system disk first (a twin's image backs its first disk), then the rest by port: kernel
    names (sda, sdb...) follow probe order, which async SCSI scanning does not keep stable."""
    system = bool(d.get("boot_medium")) and d.get("type") != "usb"
    return not system, _natural(str(d.get("by_path") or d.get("name") or ""))


def _nic(n: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    driver = str(n.get("driver") or "")
    model = NIC_MODELS.get(driver, "e1000e")
    note = None
    if n.get("wireless"):
        note = f"{n.get('name')}: wireless ({driver}), imitated as a wired {model} with its MAC"
    elif driver not in NIC_MODELS:
        note = f"{n.get('name')}: driver {driver or 'unknown'}, imitated as {model}"
    return {"model": model, "mac": str(n.get("mac") or "").lower()}, note


def this_firmware(sys_root: str = "/sys") -> str:
    """The firmware this machine booted with: uefi-secure, uefi or bios."""
    return board_firmware(firmware(sys_root))


def board_of(inventory: dict[str, Any], firmware: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """The board (plain data, as a board file holds it) and notes on what is approximated.
    ``firmware``: uefi-secure, uefi or bios (None: what the inventory says; an inventory captured
    before it recorded the firmware: UEFI, with a note)."""
    system = inventory.get("system") or {}
    chassis = (system.get("chassis") or {}).get("name")
    notes: list[str] = []
    dmi: dict[str, Any] = {"vendor": _text(system.get("vendor")) or "Unknown",
                           "product": _text(system.get("product")) or "Unknown"}
    for key in ("version", "serial", "board_vendor", "board_product"):
        if system.get(key):
            dmi[key] = _text(system[key])
    dmi["chassis"] = chassis if chassis in CHASSIS else "other"
    disks = []
    for d in sorted(inventory.get("disks") or [], key=_disk_order):
        if d.get("removable") or (d.get("boot_medium") and d.get("type") == "usb"):
            continue  # the stick it was booted from, and removable media, are not the box's
        disk, note = _disk(d)
        disks.append(disk)
        notes += [note] if note else []
    nics = []
    for n in inventory.get("nics") or []:
        nic, note = _nic(n)
        if nic["mac"]:
            nics.append(nic)
            notes += [note] if note else []
    if firmware is None and inventory.get("firmware"):
        firmware = board_firmware(inventory["firmware"])
    if firmware is None:
        firmware = "uefi"
        notes.append("firmware: not known for a captured inventory, UEFI assumed (--firmware bios to say)")
    battery = bool((inventory.get("power") or {}).get("battery"))
    board = {
        "description": _text(f"{dmi['vendor']} {dmi['product']} (from clusterctl inventory --board)", 200),
        "firmware": firmware,
        "cpus": max(1, min(64, int((inventory.get("cpu") or {}).get("count") or 1))),
        "memory": int((inventory.get("memory") or {}).get("total") or 2 * 1024**3),
        "dmi": dmi,
        "disks": disks,
        "nics": nics,
        "display": any(d.get("connected") for d in inventory.get("displays") or []),
        "battery": battery,
    }
    return board, notes


def board_yaml(inventory: dict[str, Any], firmware: str | None = None) -> str:
    """The board file's text: notes as comments first, then the board."""
    board, notes = board_of(inventory, firmware)
    head = ["# A board for this machine, made by clusterctl inventory --board (see docs/inventory.md)."]
    head += [f"# approximated: {n}" for n in notes]
    return "\n".join(head) + "\n" + yaml.safe_dump(board, sort_keys=False, allow_unicode=True)
