"""The hardware inventory served under ``hw/``.

The project's detector (hardware.detect.collect(), pyudev based) is the source; where it
fails (a bare machine without pyudev running the agent standalone) a small reader of
/sys/class/dmi/id, /proc and /sys/block, /sys/class/net stands in.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from hardware.detect import collect

DMI_FIELDS = ("sys_vendor", "product_name", "product_version", "product_uuid", "product_serial",
              "board_vendor", "board_name", "board_version", "chassis_type", "chassis_vendor",
              "bios_vendor", "bios_version", "bios_date")


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def fallback_inventory(sys_root: str = "/sys", proc_root: str = "/proc") -> dict[str, Any]:
    dmi = {}
    for name in DMI_FIELDS:
        value = _read(f"{sys_root}/class/dmi/id/{name}")
        if value is not None:
            dmi[name] = value
    cpus: list[str] = []
    cpuinfo = _read(f"{proc_root}/cpuinfo") or ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            cpus.append(value.strip())
    mem_kib = 0
    for line in (_read(f"{proc_root}/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    disks = []
    block = f"{sys_root}/block"
    for dev in sorted(os.listdir(block)) if os.path.isdir(block) else []:
        if dev.startswith(("loop", "ram", "zram", "dm-")):
            continue
        sectors = _read(f"{block}/{dev}/size")
        disks.append({
            "name": dev,
            "size": int(sectors) * 512 if sectors and sectors.isdigit() else None,
            "model": _read(f"{block}/{dev}/device/model"),
            "rotational": _read(f"{block}/{dev}/queue/rotational") == "1",
            "removable": _read(f"{block}/{dev}/removable") == "1",
        })
    nics = []
    net = f"{sys_root}/class/net"
    for ifname in sorted(os.listdir(net)) if os.path.isdir(net) else []:
        if ifname == "lo":
            continue
        nics.append({"name": ifname, "mac": _read(f"{net}/{ifname}/address"),
                     "state": _read(f"{net}/{ifname}/operstate")})
    return {
        "source": "fallback",
        "dmi": dmi,
        "cpu": {"count": len(cpus) or os.cpu_count() or 0, "model": cpus[0] if cpus else None},
        "memory": {"total": mem_kib * 1024},
        "disks": disks,
        "nics": nics,
    }


class Inventory:
    """collect() with a short cache: a walk of hw/ renders many files from one inventory."""

    def __init__(self, ttl: float = 5.0, collect: Callable[[], dict[str, Any]] = collect) -> None:
        self.ttl = ttl
        self.collect = collect
        self._value: dict[str, Any] | None = None
        self._at = 0.0

    def refresh(self) -> None:
        self._value = None

    def __call__(self) -> dict[str, Any]:
        now = time.monotonic()
        if self._value is None or now - self._at > self.ttl:
            try:
                value = dict(self.collect())
            except Exception as exc:  # pyudev missing, or udev unreadable: never take hw/ down
                value = fallback_inventory()
                value["detect_error"] = f"{type(exc).__name__}: {exc}"
            self._value, self._at = value, now
        return self._value
