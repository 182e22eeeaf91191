"""How ``clusterctl manage`` shows the cluster: a rich table, one row per host, and a detail
panel for the host picked. Plain text where rich is missing (it is on every image)."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

COLUMNS = ("host", "online", "role", "board", "OS (running; * default)", "up", "load", "memory", "disk",
           "failed", "last event")


def _bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "K", "M", "G", "T"):
        if n < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return "-"


def _used(space: dict[str, Any] | None) -> str:
    if not space or not space.get("size"):
        return "-"
    return f"{100 * space['used'] / space['size']:.0f}% of {_bytes(space['size'])}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600}h"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s"


def event_text(e: dict[str, Any], now: float | None = None) -> str:
    """An event in a few words: its name and its telling fields, and how long ago."""
    now = time.time() if now is None else now
    skip = {"event", "seq", "time", "host"}
    fields = " ".join(f"{k}={v}" for k, v in e.items() if k not in skip and not isinstance(v, dict | list))
    age = f" ({_duration(now - float(e['time']))} ago)" if isinstance(e.get("time"), int | float) else ""
    return f"{e.get('event')} {fields}".strip()[:60] + age


def oses_text(h: dict[str, Any]) -> Text:
    t = Text()
    for i, name in enumerate(h.get("oses") or []):
        if i:
            t.append(" ")
        label = name + ("*" if name == h.get("default_os") else "")
        t.append(label, style="bold green" if name == h.get("os") and h.get("online") else None)
    return t


def row_cells(h: dict[str, Any], now: float) -> list[RenderableType]:
    mem = h.get("memory") or {}
    used_mem = f"{100 * (1 - mem['available'] / mem['total']):.0f}% of {_bytes(mem['total'] * 1024)}" \
        if mem.get("total") and mem.get("available") is not None else "-"
    online = "this host" if h.get("self") else "yes" if h.get("online") else f"no ({h.get('state') or '?'})"
    recent = h.get("recent") or []
    return [h["host"], online, h.get("role") or "-", h.get("board") or "-", oses_text(h),
            _duration(h.get("uptime")), "-" if h.get("load") is None else f"{h['load']:.2f}", used_mem,
            _used((h.get("space") or {}).get("/")), str(len(h.get("failed_units") or [])) if h.get("online") else "-",
            event_text(recent[-1], now) if recent else "-"]


def table(snap: dict[str, Any], selected: str | None = None) -> Table:
    now = float(snap.get("time") or time.time())
    online = sum(1 for h in snap["hosts"] if h.get("online"))
    t = Table(title=f"cluster {snap.get('cluster')} seen from {snap.get('seen_from')}: {online} of "
                    f"{len(snap['hosts'])} hosts online", title_justify="left", expand=True)
    for c in COLUMNS:
        t.add_column(c, overflow="fold")
    for h in snap["hosts"]:
        style = "reverse" if h["host"] == selected else None if h.get("online") else "yellow"
        t.add_row(*row_cells(h, now), style=style)
    return t


def detail(h: dict[str, Any], now: float | None = None) -> Panel:
    now = time.time() if now is None else now
    lines = [f"role {h.get('role')} on board {h.get('board')}; OSes it boots: "
             f"{', '.join(h.get('oses') or []) or '-'} (default {h.get('default_os') or '-'}); "
             f"runs {h.get('os') or '-'}"]
    for name, space in sorted((h.get("space") or {}).items()):
        where = "root" if name == "/" else f"export {name} ({(h.get('exports') or {}).get(name, '?')})"
        lines.append(f"{where}: {_used(space)}")
    if h.get("failed_units"):
        lines.append("failed units: " + ", ".join(h["failed_units"]))
    if h.get("error"):
        lines.append(f"cannot read its state: {h['error']}")
    lines.append("last events:")
    lines += [f"  {event_text(e, now)}" for e in h.get("recent") or []] or ["  (none seen)"]
    return Panel("\n".join(lines), title=h["host"], title_align="left")


KEYS = "up/down: pick a host   r: reboot   p: power off   b: boot an OS next time only   q: quit"


def screen(snap: dict[str, Any], selected: str | None, message: str = "") -> Group:
    parts: list[RenderableType] = [table(snap, selected)]
    picked = next((h for h in snap["hosts"] if h["host"] == selected), None)
    if picked is not None:
        parts.append(detail(picked, float(snap.get("time") or time.time())))
    parts.append(Text(message or KEYS, style="bold" if message else "dim"))
    return Group(*parts)
