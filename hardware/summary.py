"""A short, readable account of an inventory: for the console (rich) and for the event stream."""

from __future__ import annotations

from typing import Any

from core.units import format_size
from hardware.selectors import TYPE_NAMES, describe_contents, has_battery, has_display, internal_disks

REQUIRED = ("system", "cpu", "memory", "disks", "nics", "displays", "power", "boot")


class NotAnInventory(ValueError):
    """Input that is not an inventory as hardware.detect writes it."""


def check_inventory(data: Any, where: str = "inventory") -> dict[str, Any]:
    """Refuse what is plainly not an inventory (the images have no jsonschema; this is the cheap check)."""
    if not isinstance(data, dict):
        raise NotAnInventory(f"{where}: expected a JSON object, got {type(data).__name__}")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise NotAnInventory(f"{where}: not an inventory (missing {', '.join(missing)}); "
                             "make one with `clusterctl inventory --json`")
    for key in ("disks", "nics", "displays"):
        if not isinstance(data[key], list) or not all(isinstance(x, dict) for x in data[key]):
            raise NotAnInventory(f"{where}: {key} must be a list of objects")
    return data


def machine_name(inv: dict[str, Any]) -> str:
    s = inv.get("system") or {}
    name = " ".join(str(v) for v in (s.get("vendor"), s.get("product")) if v)
    return name or "unknown machine"


def event_fields(inv: dict[str, Any]) -> dict[str, Any]:
    """Fields of the ``inventory`` event: enough to follow a boot, not the whole inventory."""
    s = inv.get("system") or {}
    return {
        "host": None,
        "vendor": s.get("vendor"),
        "product": s.get("product"),
        "serial": s.get("serial"),
        "chassis": (s.get("chassis") or {}).get("name"),
        "cpus": (inv.get("cpu") or {}).get("count"),
        "memory": (inv.get("memory") or {}).get("total"),
        "disks": len(internal_disks(inv)),
        "disk_names": [d["name"] for d in internal_disks(inv)],
        "nics": len(inv.get("nics") or []),
        "macs": [n["mac"] for n in inv.get("nics") or [] if n.get("mac")],
        "display": has_display(inv),
        "battery": has_battery(inv),
        "boot_medium": (inv.get("boot") or {}).get("medium"),
    }


def disk_line(d: dict[str, Any]) -> str:
    bits = [TYPE_NAMES.get(str(d.get("type")), "?"), format_size(d.get("size") or 0)]
    if d.get("model"):
        bits.append(str(d["model"]))
    if d.get("serial"):
        bits.append(f"serial {d['serial']}")
    tail = "boot medium" if d.get("boot_medium") else describe_contents(d)
    return f"{d.get('name')}: {', '.join(bits)} — {tail}"


def summary_lines(inv: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, text) rows: what was found, in a few lines."""
    s = inv.get("system") or {}
    chassis = s.get("chassis") or {}
    cpu, mem = inv.get("cpu") or {}, inv.get("memory") or {}
    rows = [("machine", machine_name(inv) + (f" (serial {s['serial']})" if s.get("serial") else ""))]
    kind = chassis.get("name") or "other"
    if chassis.get("smbios"):
        kind += f" (SMBIOS {chassis.get('type')}: {chassis['smbios']})"
    rows.append(("chassis", kind))
    rows.append(("cpu", f"{cpu.get('count')} × {cpu.get('model') or 'unknown model'}"))
    rows.append(("memory", format_size(mem["total"], binary=True) if mem.get("total") else "unknown"))
    for d in inv.get("disks") or []:
        rows.append(("disk", disk_line(d)))
    for n in inv.get("nics") or []:
        kind = "wifi" if n.get("wireless") else "ethernet"
        speed = f", {n['speed']} Mb/s" if n.get("speed") else ""
        rows.append(("nic", f"{n.get('name')}: {n.get('mac')} {kind} ({n.get('driver') or '?'}), link {n.get('link')}"
                            f"{speed}"))
    shown = [d["connector"] for d in inv.get("displays") or [] if d.get("connected")]
    rows.append(("display", ", ".join(shown) + " connected" if shown else "none connected"))
    power = inv.get("power") or {}
    if power.get("battery"):
        bats = power.get("batteries") or []
        cap = f" ({bats[0]['capacity']}%)" if bats and bats[0].get("capacity") is not None else ""
        rows.append(("battery", f"present{cap}"))
    else:
        rows.append(("battery", "none"))
    return rows


def render(inv: dict[str, Any]) -> Any:
    """A rich Table of summary_lines()."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column()
    for label, text in summary_lines(inv):
        table.add_row(label, escape(text))
    return table
