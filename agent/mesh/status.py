"""``clusterctl status`` on a host: the agent's membership table as a table (rich when
python3-rich is there, plain columns otherwise), or as JSON."""

from __future__ import annotations

import io
import time
from typing import Any

from agent.mesh.members import agent_alive

COLUMNS = ("host", "role", "online", "state", "exports", "mount", "mesh address", "endpoint")


def rows(table: dict[str, Any]) -> list[tuple[str, ...]]:
    out = []
    for e in table.get("members", []):
        exports = ", ".join(f"{n}={p}" for n, p in sorted((e.get("exports") or {}).items())) or "-"
        mount = "(this host)" if e.get("self") else (e.get("path") if e.get("online") else "-") or "-"
        state = e.get("state") or "?"
        if e.get("reason") and not e.get("online"):
            state = f"{state}: {e['reason']}"
        out.append((e["host"], e.get("role") or "-", "yes" if e.get("online") else "no", state, exports, mount,
                    e.get("mesh") or "-", e.get("endpoint") or "-"))
    return out


def headline(table: dict[str, Any], now: float | None = None) -> str:
    now = time.time() if now is None else now
    members = table.get("members", [])
    online = sum(1 for e in members if e.get("online"))
    alive = agent_alive(int(table.get("pid") or 0)) if table.get("pid") else False
    age = now - float(table.get("updated") or now)
    line = (f"cluster {table.get('cluster')} seen from {table.get('host')}: "
            f"{online} of {len(members)} members online")
    if not alive:
        line += f" (the agent is not running: this table is {age:.0f} s old)"
    return line


def render(table: dict[str, Any], width: int = 140, color: bool = False) -> str:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        return _plain(table)
    t = Table(title=headline(table), title_justify="left")
    for c in COLUMNS:
        t.add_column(c, overflow="fold")
    for r in rows(table):
        style = None if r[2] == "yes" else "red" if "refused" in r[3] else "yellow"
        t.add_row(*r, style=style)
    buf = io.StringIO()
    Console(file=buf, width=width, force_terminal=color, color_system="standard" if color else None).print(t)
    return buf.getvalue()


def _plain(table: dict[str, Any]) -> str:
    body = [COLUMNS, *rows(table)]
    widths = [max(len(r[i]) for r in body) for i in range(len(COLUMNS))]
    lines = [headline(table)] + ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in body]
    return "\n".join(lines) + "\n"
