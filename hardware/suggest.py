"""From a captured inventory, a host stanza (YAML) whose selectors and pins recognise that box.

The stanza is meant to be pasted under ``hosts:`` and edited: it names what was seen (chassis,
vendor, product, display, battery, CPUs, memory, internal disks), pins the DMI serial and the
MACs, and picks the install disk by serial (the smallest solid-state internal disk).
"""

from __future__ import annotations

import json
import re
from typing import Any

from core.units import format_size
from hardware.selectors import (
    describe_contents,
    disk_holds_data,
    has_battery,
    has_display,
    internal_disks,
    usable_serial,
)
from hardware.summary import machine_name

GiB = 1024**3


def _q(value: Any) -> str:
    """A YAML scalar: JSON strings are valid YAML and need no further escaping."""
    return json.dumps(value)


def host_name(inv: dict[str, Any]) -> str:
    """A profile name from the product: ``NF9HG-2930`` → ``nf9hg-2930``."""
    product = str((inv.get("system") or {}).get("product") or "")
    slug = re.sub(r"[^a-z0-9-]+", "-", product.lower()).strip("-")
    return slug[:32].strip("-") if slug and slug[0].isalpha() else f"host-{slug}".strip("-")[:32] or "host"


def install_disk(inv: dict[str, Any]) -> dict[str, Any] | None:
    """The suggested target: smallest solid-state internal disk, else the smallest internal disk."""
    disks = internal_disks(inv)
    if not disks:
        return None
    solid = [d for d in disks if not d.get("rotational")]
    return sorted(solid or disks, key=lambda d: (d.get("size") or 0, d["name"]))[0]


def selectors(inv: dict[str, Any]) -> dict[str, Any]:
    system = inv.get("system") or {}
    out: dict[str, Any] = {}
    chassis = (system.get("chassis") or {}).get("name")
    if chassis and chassis != "other":
        out["chassis"] = chassis
    if system.get("vendor"):
        out["vendor"] = system["vendor"]
    if system.get("product"):
        out["product"] = system["product"]
    out["display"] = has_display(inv)
    if has_battery(inv):
        out["battery"] = True
    cpus = (inv.get("cpu") or {}).get("count")
    if cpus:
        out["cpus"] = f">={cpus}"
    total = (inv.get("memory") or {}).get("total")
    if total and total >= GiB:
        out["memory"] = f">={total // GiB}GiB"
    disks = internal_disks(inv)
    if disks:
        spec: dict[str, Any] = {"count": len(disks)}
        kinds = {d.get("type") for d in disks}
        if len(kinds) == 1:
            spec["type"] = kinds.pop()
        out["disks"] = spec
    return out


def suggest(inv: dict[str, Any], name: str | None = None, role: str = "ROLE", board: str = "BOARD") -> str:
    """The YAML text of one host stanza (indented for ``hosts:``)."""
    name = name or host_name(inv)
    system = inv.get("system") or {}
    lines = [f"# {machine_name(inv)}, as seen by clusterctl inventory; set role and board, then paste under hosts:",
             f"{name}:", f"  role: {role}", f"  board: {board}", "  match:"]
    for key, value in selectors(inv).items():
        if isinstance(value, dict):
            inner = ", ".join(f"{k}: {_q(v)}" for k, v in value.items())
            lines.append(f"    {key}: {{{inner}}}")
        else:
            lines.append(f"    {key}: {_q(value)}")
    serial = usable_serial(system.get("serial"))
    macs = sorted(n["mac"] for n in inv.get("nics") or [] if n.get("mac"))
    if serial or macs:
        lines.append("  pin:")
        if serial:
            lines.append(f"    serial: {_q(serial)}")
        if macs:
            lines.append(f"    mac: [{', '.join(_q(m) for m in macs)}]")
    target = install_disk(inv)
    if target is not None:
        what = f"{target['name']}, {format_size(target.get('size') or 0)} {target.get('model') or ''}".strip()
        lines.append("  install:")
        if target.get("serial"):
            lines.append(f"    disk: {{serial: {_q(target['serial'])}}}  # {what}")
        else:
            lines.append(f"    disk: {{type: {_q(target.get('type'))}, smallest: true}}  # {what}")
        if disk_holds_data(target):
            lines.append(f"    # it holds {describe_contents(target)}: add wipe: true to the disk only if that may go")
    return "\n".join(lines) + "\n"
