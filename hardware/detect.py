"""The hardware inventory: what first boot (and ``clusterctl inventory``) sees on this machine.

pyudev gives the devices with udev's properties (ID_MODEL, ID_SERIAL_SHORT, ID_FS_TYPE ...);
sysfs attributes fill in where udev has no property; /proc gives CPU model and memory when DMI
does not. The result is a plain dict following hardware/inventory.schema.json (docs/inventory.md);
everything after detection (matching, wizard, installer) reads only that dict.

Runs inside the images on Debian bookworm's python3 with python3-pyudev; standard library otherwise.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from hardware.firmware import firmware

SCHEMA_VERSION = 1
MARKER = "clusterctl/medium"  # under /run: written by the stick's boot to name the medium
STICK_LABEL = "CLUSTER"  # the stick's small writable FAT partition

# SMBIOS type 3 chassis types (DSP0134 §7.4.1): number → (SMBIOS name, our chassis name).
CHASSIS: dict[int, tuple[str, str]] = {
    1: ("Other", "other"), 2: ("Unknown", "other"), 3: ("Desktop", "desktop"),
    4: ("Low Profile Desktop", "desktop"), 5: ("Pizza Box", "desktop"), 6: ("Mini Tower", "tower"),
    7: ("Tower", "tower"), 8: ("Portable", "laptop"), 9: ("Laptop", "laptop"), 10: ("Notebook", "laptop"),
    11: ("Hand Held", "tablet"), 12: ("Docking Station", "other"), 13: ("All in One", "all-in-one"),
    14: ("Sub Notebook", "laptop"), 15: ("Space-saving", "desktop"), 16: ("Lunch Box", "desktop"),
    17: ("Main Server Chassis", "server"), 18: ("Expansion Chassis", "other"), 19: ("SubChassis", "other"),
    20: ("Bus Expansion Chassis", "other"), 21: ("Peripheral Chassis", "other"), 22: ("RAID Chassis", "server"),
    23: ("Rack Mount Chassis", "server"), 24: ("Sealed-case PC", "desktop"), 25: ("Multi-system", "server"),
    26: ("Compact PCI", "other"), 27: ("Advanced TCA", "other"), 28: ("Blade", "server"),
    29: ("Blade Enclosure", "server"), 30: ("Tablet", "tablet"), 31: ("Convertible", "laptop"),
    32: ("Detachable", "laptop"), 33: ("IoT Gateway", "other"), 34: ("Embedded PC", "mini-pc"),
    35: ("Mini PC", "mini-pc"), 36: ("Stick PC", "mini-pc"),
}

# Block devices that are never disks of the machine: loop/ram/zram, device-mapper and md
# (built from disks we list anyway), optical, network block devices, eMMC boot/RPMB areas.
_SKIP_BLOCK = re.compile(r"^(loop|ram|zram|dm-|md|sr|nbd|fd)\d*|^mmcblk\d+(boot\d+|rpmb)$")
_UDEV_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")


def _attr(dev: Any, name: str) -> str | None:
    """A sysfs attribute as stripped text; None when absent or unreadable (e.g. carrier of a down link)."""
    try:
        value = dev.attributes.get(name)
    except (OSError, ValueError):
        return None
    if value is None:
        return None
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return text.strip()


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _prop(dev: Any, name: str) -> str | None:
    value = dev.properties.get(name)
    return value if value else None


def _decode(enc: str | None) -> str | None:
    """udev's ``*_ENC`` values escape spaces and odd bytes as \\xNN."""
    if not enc:
        return None
    return _UDEV_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), enc).strip() or None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


# --- system, CPU, memory -----------------------------------------------------------------


def _dmi_device(ctx: Any) -> Any | None:
    import pyudev

    try:
        return pyudev.Devices.from_path(ctx, "/devices/virtual/dmi/id")
    except pyudev.DeviceNotFoundError:
        return None


def _system(dmi: Any | None) -> dict[str, Any]:
    def a(name: str) -> str | None:
        return _attr(dmi, name) or None if dmi is not None else None

    number = _int(a("chassis_type"))
    smbios, name = CHASSIS.get(number, ("Unknown", "other")) if number is not None else (None, "other")
    return {
        "vendor": a("sys_vendor"),
        "product": a("product_name"),
        "version": a("product_version"),
        "serial": a("product_serial"),  # readable by root only; None for a user run
        "uuid": a("product_uuid"),
        "board_vendor": a("board_vendor"),
        "board_product": a("board_name"),
        "chassis": {"type": number, "smbios": smbios, "name": name},
    }


def _cpu(ctx: Any, proc: Path) -> dict[str, Any]:
    cpus = [d for d in ctx.list_devices(subsystem="cpu") if re.fullmatch(r"cpu\d+", d.sys_name)]
    # cpu0 often has no 'online' attribute (it cannot go offline); that means online.
    online = [d for d in cpus if _attr(d, "online") in (None, "1")]
    model = None
    for line in (_read(proc / "cpuinfo") or "").splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "Hardware") and value.strip():
            model = value.strip()
            break
    return {"model": model, "count": len(online) or os.cpu_count() or 0}


def _memory(dmi: Any | None, proc: Path) -> dict[str, Any]:
    usable = None
    for line in (_read(proc / "meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            usable = int(line.split()[1]) * 1024
    installed = 0
    if dmi is not None:
        # systemd's dmi_memory_id builtin (udev rule 70-memory.rules) exports the SMBIOS type 17 table.
        props = dmi.properties
        for key in props:
            m = re.fullmatch(r"MEMORY_DEVICE_(\d+)_SIZE", key)
            if m and props.get(f"MEMORY_DEVICE_{m.group(1)}_PRESENT", "1") != "0":
                installed += _int(props.get(key)) or 0
    if installed:
        return {"total": installed, "usable": usable, "source": "dmi"}
    if usable:
        gib = 1024**3
        # MemTotal lacks firmware and kernel reservations: round up to whole GiB to name the installed size.
        return {"total": -(-usable // gib) * gib, "usable": usable, "source": "meminfo"}
    return {"total": None, "usable": None, "source": None}


# --- disks -------------------------------------------------------------------------------


def _disk_type(dev: Any, bus: str | None, rotational: bool) -> str:
    name = dev.sys_name
    if bus == "usb" or "/usb" in dev.sys_path:
        return "usb"
    if name.startswith("nvme"):
        return "nvme"
    if name.startswith("mmcblk"):
        return "mmc"
    if name.startswith("vd") or bus == "virtio":
        return "virtio"
    return "hdd" if rotational else "ssd"


def _bus(dev: Any) -> str | None:
    bus = _prop(dev, "ID_BUS")
    if bus:
        return bus
    path = dev.sys_path
    for needle, name in (("/usb", "usb"), ("/nvme", "nvme"), ("/mmc_host/", "mmc"), ("/virtio", "virtio"),
                         ("/ata", "ata")):
        if needle in path:
            return name
    return None


def _model(dev: Any) -> str | None:
    model = _decode(_prop(dev, "ID_MODEL_ENC"))
    if model:
        return model
    if _prop(dev, "ID_MODEL"):  # ID_MODEL has spaces replaced by underscores
        return str(_prop(dev, "ID_MODEL")).replace("_", " ").strip()
    parent = dev.parent
    return (_attr(parent, "model") or _attr(parent, "name")) if parent is not None else None


def _serial(dev: Any) -> str | None:
    serial = _prop(dev, "ID_SERIAL_SHORT")
    if serial:
        return serial
    parent = dev.parent
    value = _attr(parent, "serial") if parent is not None else None
    return value or _attr(dev, "serial") or None


def _links(dev: Any) -> list[str]:
    # DEVLINKS rather than Device.device_links: the latter needs the udev DB, which umockdev lacks.
    return sorted((_prop(dev, "DEVLINKS") or "").split())


def _partition(part: Any) -> dict[str, Any]:
    return {
        "name": part.sys_name,
        "number": _int(_attr(part, "partition")) or _int(_prop(part, "ID_PART_ENTRY_NUMBER")),
        "size": (_int(_attr(part, "size")) or 0) * 512,
        "filesystem": _prop(part, "ID_FS_TYPE"),
        "label": _decode(_prop(part, "ID_FS_LABEL_ENC")) or _prop(part, "ID_FS_LABEL"),
        "uuid": _prop(part, "ID_FS_UUID"),
        "part_label": _decode(_prop(part, "ID_PART_ENTRY_NAME")),
    }


def _disk(dev: Any) -> dict[str, Any] | None:
    name = dev.sys_name
    if _SKIP_BLOCK.match(name) or _prop(dev, "ID_CDROM") == "1":
        return None
    size = (_int(_attr(dev, "size")) or 0) * 512  # 'size' counts 512-byte sectors whatever the block size
    if size == 0:  # an empty card reader slot
        return None
    rotational = _attr(dev, "queue/rotational") == "1"
    bus = _bus(dev)
    links = _links(dev)
    parts = sorted((_partition(p) for p in dev.children if p.device_type == "partition"),
                   key=lambda p: (p["number"] or 0, p["name"]))
    by_path = next((lk for lk in links if lk.startswith("/dev/disk/by-path/")), None)
    if by_path is None and _prop(dev, "ID_PATH"):
        by_path = f"/dev/disk/by-path/{_prop(dev, 'ID_PATH')}"
    return {
        "name": name,
        "path": _prop(dev, "DEVNAME") or f"/dev/{name}",
        "size": size,
        "type": _disk_type(dev, bus, rotational),
        "bus": bus,
        "rotational": rotational,
        "removable": _attr(dev, "removable") == "1",
        "model": _model(dev),
        "vendor": _prop(dev, "ID_VENDOR") if bus in ("usb", "ata", "scsi") else None,
        "serial": _serial(dev),
        "wwn": _prop(dev, "ID_WWN"),
        "by_id": [lk for lk in links if lk.startswith("/dev/disk/by-id/")],
        "by_path": by_path,
        "partition_table": _prop(dev, "ID_PART_TABLE_TYPE"),
        "filesystem": _prop(dev, "ID_FS_TYPE"),
        "label": _decode(_prop(dev, "ID_FS_LABEL_ENC")) or _prop(dev, "ID_FS_LABEL"),
        "partitions": parts,
        "devnum": f"{os.major(dev.device_number)}:{os.minor(dev.device_number)}" if dev.device_number else None,
        "boot_medium": False,
    }


def _disks(ctx: Any) -> list[dict[str, Any]]:
    out = [d for d in (_disk(dev) for dev in ctx.list_devices(subsystem="block", DEVTYPE="disk")) if d]
    return sorted(out, key=lambda d: d["name"])


# --- boot medium -------------------------------------------------------------------------


def _root_devnum(proc: Path) -> str | None:
    """major:minor of the block device mounted at / (from mountinfo), if it is one."""
    for line in (_read(proc / "self" / "mountinfo") or "").splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4] == "/":
            devnum = fields[2]
            return None if devnum.startswith("0:") else devnum  # 0:N is tmpfs/overlay: no disk
    return None


def _mark_boot_medium(disks: list[dict[str, Any]], proc: Path, run: Path) -> dict[str, Any]:
    """Which disk we booted from, and how we know, in order of trust:

    1. ``/run/clusterctl/medium``: the stick's boot writes the device (``sdb``, ``/dev/sdb``, or a
       partition such as ``/dev/sdb2``) it found itself on;
    2. the disk holding the file system mounted at ``/``;
    3. the disk holding the stick's partition labelled CLUSTER.
    """
    def owner(name: str) -> dict[str, Any] | None:
        name = name.strip().removeprefix("/dev/")
        for d in disks:
            if d["name"] == name or any(p["name"] == name for p in d["partitions"]):
                return d
        return None

    found: dict[str, Any] | None = None
    how = None
    marker = _read(run / MARKER)
    if marker and marker.strip():
        found, how = owner(marker.strip().splitlines()[0]), f"named by /run/{MARKER}"
    if found is None:
        devnum = _root_devnum(proc)
        if devnum:
            for d in disks:
                if d["devnum"] == devnum or any(p.get("devnum") == devnum for p in d["partitions"]):
                    found, how = d, "holds the root file system"
    if found is None:
        for d in disks:
            if any(p["label"] == STICK_LABEL for p in d["partitions"]):
                found, how = d, f"holds the {STICK_LABEL} partition"
                break
    if found is not None:
        found["boot_medium"] = True
    return {"medium": found["name"] if found else None, "how": how if found else None}


# --- NICs, displays, power ---------------------------------------------------------------


def _nics(ctx: Any) -> list[dict[str, Any]]:
    out = []
    for n in ctx.list_devices(subsystem="net"):
        if "/devices/virtual/" in n.sys_path:  # lo, bridges, veth, tun: not hardware
            continue
        carrier = _attr(n, "carrier")
        operstate = _attr(n, "operstate")
        link = "up" if carrier == "1" else "down" if carrier == "0" or operstate == "down" else "unknown"
        parent = n.parent
        speed = _int(_attr(n, "speed"))
        out.append({
            "name": n.sys_name,
            "mac": (_attr(n, "address") or "").lower() or None,
            "driver": _prop(n, "ID_NET_DRIVER") or (parent.driver if parent is not None else None),
            "link": link,
            "speed": speed if speed and speed > 0 else None,  # Mbit/s; -1 without link
            "wireless": n.device_type == "wlan" or os.path.isdir(os.path.join(n.sys_path, "wireless")),
            "bus": _prop(n, "ID_BUS") or ("usb" if "/usb" in n.sys_path else "pci" if "/pci" in n.sys_path else None),
        })
    return sorted(out, key=lambda x: x["name"])


def _displays(ctx: Any) -> list[dict[str, Any]]:
    out = []
    for c in ctx.list_devices(subsystem="drm"):
        m = re.fullmatch(r"(card\d+)-(.+)", c.sys_name)
        if not m and c.device_type != "drm_connector":
            continue
        status = _attr(c, "status") or "unknown"
        enabled = _attr(c, "enabled")
        out.append({
            "connector": m.group(2) if m else c.sys_name,
            "card": m.group(1) if m else None,
            "status": status,
            "connected": status == "connected",
            "enabled": None if enabled is None else enabled == "enabled",
        })
    return sorted(out, key=lambda x: (x["card"] or "", x["connector"]))


def _power(ctx: Any) -> dict[str, Any]:
    batteries = []
    ac = None
    for s in ctx.list_devices(subsystem="power_supply"):
        kind = _attr(s, "type")
        # scope=Device is a peripheral's battery (mouse, headset), not the machine's.
        if kind == "Battery" and _attr(s, "scope") != "Device" and _attr(s, "present") != "0":
            batteries.append({"name": s.sys_name, "status": _attr(s, "status"),
                              "capacity": _int(_attr(s, "capacity"))})
        elif kind == "Mains":
            ac = (ac or False) or _attr(s, "online") == "1"
    return {"battery": bool(batteries), "batteries": sorted(batteries, key=lambda b: b["name"]), "ac": ac}


# --- the whole inventory -----------------------------------------------------------------


def settle(timeout: float = 10.0) -> None:
    """Wait for udev to finish processing events (first boot runs early); harmless when absent."""
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        subprocess.run(["udevadm", "settle", f"--timeout={int(timeout)}"], check=False, timeout=timeout + 5,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def collect(context: Any | None = None, *, proc_root: str | os.PathLike[str] = "/proc",
            run_root: str | os.PathLike[str] = "/run", sys_root: str | os.PathLike[str] = "/sys",
            wait_for_udev: bool = False) -> dict[str, Any]:
    """The inventory of this machine (hardware/inventory.schema.json).

    ``proc_root``, ``run_root`` and ``sys_root`` let tests replay a recorded machine (umockdev
    redirects /sys and /dev for udev, not /proc or /run).
    """
    import pyudev

    if wait_for_udev:
        settle()
    ctx = context if context is not None else pyudev.Context()
    proc, run = Path(proc_root), Path(run_root)
    dmi = _dmi_device(ctx)
    disks = _disks(ctx)
    # Partitions' devnums, for matching the root mount; dropped from the output afterwards.
    for dev in ctx.list_devices(subsystem="block", DEVTYPE="partition"):
        for d in disks:
            for p in d["partitions"]:
                if p["name"] == dev.sys_name and dev.device_number:
                    p["devnum"] = f"{os.major(dev.device_number)}:{os.minor(dev.device_number)}"
    boot = _mark_boot_medium(disks, proc, run)
    for d in disks:
        d.pop("devnum", None)
        for p in d["partitions"]:
            p.pop("devnum", None)
    return {
        "schema": SCHEMA_VERSION,
        "source": "udev",
        "system": _system(dmi),
        "cpu": _cpu(ctx, proc),
        "memory": _memory(dmi, proc),
        "disks": disks,
        "nics": _nics(ctx),
        "displays": _displays(ctx),
        "power": _power(ctx),
        "boot": boot,
        "firmware": firmware(sys_root),
    }
