"""Operating-system facts served under ``os/``: release, kernel, uptime, load, memory."""

from __future__ import annotations

import json
import os
import socket
from typing import Any


def os_release(path: str = "/etc/os-release") -> dict[str, str]:
    out: dict[str, str] = {}
    for candidate in (path, "/usr/lib/os-release"):
        try:
            with open(candidate, encoding="utf-8") as f:
                text = f.read()
        except OSError:
            continue
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip() and not key.startswith("#"):
                out[key.strip()] = value.strip().strip('"').strip("'")
        break
    return out


def meminfo() -> dict[str, int]:
    wanted = {"MemTotal": "total", "MemFree": "free", "MemAvailable": "available", "Buffers": "buffers",
              "Cached": "cached", "SwapTotal": "swap_total", "SwapFree": "swap_free"}
    out: dict[str, int] = {}
    with open("/proc/meminfo", encoding="utf-8") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in wanted:
                out[wanted[key]] = int(rest.split()[0]) * 1024
    return out


def facts() -> dict[str, Any]:
    u = os.uname()
    with open("/proc/uptime", encoding="utf-8") as f:
        uptime = float(f.read().split()[0])
    load = os.getloadavg()
    return {
        "hostname": socket.gethostname(),
        "release": os_release(),
        "kernel": {"sysname": u.sysname, "release": u.release, "version": u.version, "machine": u.machine},
        "uptime": round(uptime, 2),
        "load": {"1": round(load[0], 2), "5": round(load[1], 2), "15": round(load[2], 2)},
        "memory": meminfo(),
    }


HOST_FACTS = "/etc/clusterctl/host.json"


def running_os(path: str = HOST_FACTS) -> str | None:
    """The profile's name of the OS this host runs (stable, rescue, ...), from its facts file."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f).get("os")
    except (OSError, ValueError, AttributeError):
        return None
    return str(value) if value else None


def space(path: str) -> dict[str, int] | None:
    """Bytes in all and in use of the file system holding ``path`` (None when it cannot be read)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return {"size": st.f_blocks * st.f_frsize, "used": (st.f_blocks - st.f_bfree) * st.f_frsize}
