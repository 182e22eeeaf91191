"""systemd units served under ``svc/``, and the verbs their ``ctl`` files accept."""

from __future__ import annotations

import os
import subprocess
from typing import Any

VERBS = ("start", "stop", "restart", "reload")


def systemd_running() -> bool:
    return os.path.isdir("/run/systemd/system")


def units() -> list[dict[str, Any]]:
    """Every unit systemd knows (loaded or not): name, load, active, sub, description."""
    if not systemd_running():
        return []
    try:
        out = subprocess.run(
            ["systemctl", "list-units", "--all", "--plain", "--no-legend", "--no-pager", "--full"],
            capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    result = []
    for line in out.splitlines():
        fields = line.split(None, 4)
        if len(fields) < 4:
            continue
        name, load, active, sub = fields[:4]
        result.append({"name": name, "load": load, "active": active, "sub": sub,
                       "description": fields[4] if len(fields) > 4 else ""})
    return result


def failed(listed: list[dict[str, Any]]) -> list[str]:
    """The names of the units that failed, sorted."""
    return sorted(u["name"] for u in listed if u["active"] == "failed")


def control(unit: str, verb: str) -> None:
    """Queue a start/stop/restart/reload job (--no-block: the reply does not wait for it)."""
    if verb not in VERBS:
        raise ValueError(f"unknown verb {verb!r} (one of {', '.join(VERBS)})")
    if not systemd_running():
        raise RuntimeError("systemd is not running here")
    proc = subprocess.run(["systemctl", "--no-block", verb, "--", unit], capture_output=True, text=True,
                          timeout=10, check=False)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip() or f"systemctl {verb} {unit} failed")
