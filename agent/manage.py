"""``clusterctl manage`` on a host: every host of the cluster in one view, and actions on them.

What it reads: the agent's membership table (/run/clusterctl/members.json: who is online,
where it is mounted, and from the profile each host's role, board and the OSes it boots,
default first), readable by anyone, so a kiosk's unprivileged viewer sees it too; and, of
each online peer, its ``status`` (the OS it runs,
failed units, space), ``os/json`` (uptime, load, memory) and ``recent`` (its last events)
under <namespace>/<host>/. This host's own facts are read locally.

The live view changes when something happens: one thread per online peer blocks on a read of
its ``events`` file and refreshes that host's row when an event comes; the membership table
is the one local file checked on a timer (a peer that vanishes sends no event).

Actions go to the peer's ``ctl`` file (agent/namespace.py): the peer decides whether this host
and this person may (agent/control.py) and refuses with EPERM otherwise.
"""

from __future__ import annotations

import errno
import json
import os
import select
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.mesh.members import RUN, read_table
from agent.state import osinfo, svc
from core.events import parse_line

RECENT_SHOWN = 5
MEMBERS_CHECK_SECONDS = 1.0


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _recent(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    return [e for line in lines[-RECENT_SHOWN:] if (e := parse_line(line))]


def _local_state(exports: dict[str, str]) -> dict[str, Any]:
    facts = osinfo.facts()
    return {"os": osinfo.running_os(), "uptime": facts["uptime"], "load": facts["load"]["1"],
            "memory": facts["memory"],
            "space": {name: osinfo.space(path) for name, path in {"/": "/", **exports}.items()},
            "failed_units": svc.failed(svc.units()), "recent": []}


def peer_state(path: Path) -> dict[str, Any]:
    """What a peer's files under its mount say (raises OSError when it cannot be read)."""
    status = _read_json(path / "status")
    facts = _read_json(path / "os" / "json")
    return {"os": status.get("os"), "uptime": facts.get("uptime"), "load": (facts.get("load") or {}).get("1"),
            "memory": facts.get("memory"), "space": status.get("space") or {},
            "failed_units": status.get("failed_units") or [], "recent": _recent(path / "recent")}


@dataclass
class View:
    """The cluster as this host sees it: the table's facts, refreshed state per host."""

    run_dir: Path = RUN

    def members(self) -> dict[str, Any]:
        return read_table(self.run_dir)

    def host_row(self, member: dict[str, Any], namespace: Path) -> dict[str, Any]:
        name = member["host"]
        row: dict[str, Any] = {
            "host": name, "role": member.get("role"), "online": bool(member.get("online")),
            "self": bool(member.get("self")), "state": member.get("state"), "since": member.get("since"),
            "board": member.get("board"), "oses": list(member.get("oses") or []),
            "exports": member.get("exports") or {},
        }
        row["default_os"] = row["oses"][0] if row["oses"] else None
        if row["self"]:
            row.update(_local_state(row["exports"]))
        elif row["online"]:
            try:
                row.update(peer_state(namespace / name))
            except (OSError, ValueError) as e:
                row["error"] = str(e)
        return row

    def snapshot(self) -> dict[str, Any]:
        table = self.members()
        namespace = Path(table.get("namespace") or "/n")
        return {"cluster": table.get("cluster"), "seen_from": table.get("host"), "time": round(time.time(), 3),
                "hosts": [self.host_row(m, namespace) for m in table.get("members", [])]}


def act(namespace: Path, host: str, command: str) -> str | None:
    """Write ``command`` to the host's ctl file; why it failed, or None."""
    ctl = namespace / host / "ctl"
    try:
        fd = os.open(ctl, os.O_WRONLY)
    except OSError as e:
        return f"{ctl}: {e.strerror}"
    try:
        os.write(fd, command.encode() + b"\n")
    except OSError as e:
        if e.errno == errno.EPERM:
            return f"{host} refused {command!r}: not allowed (its role's control list, or you are not an operator)"
        return f"{host}: {command!r}: {e.strerror}"
    finally:
        os.close(fd)
    return None


class EventWatch:
    """A reader per online peer, blocked on its ``events`` file: ``cat``, a process of its own,
    so leaving never waits for a read that only the peer's next event would end (a FUSE mount
    cannot interrupt one; the kernel's 9p client can). ``changed`` returns the hosts whose
    events file spoke within the timeout."""

    def __init__(self, namespace: Path) -> None:
        self.namespace = namespace
        self.readers: dict[str, subprocess.Popen[bytes]] = {}

    def watch(self, hosts: list[str]) -> None:
        for h in hosts:
            if h not in self.readers:
                self.readers[h] = subprocess.Popen(["cat", str(self.namespace / h / "events")],
                                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                                   stdin=subprocess.DEVNULL)

    def changed(self, timeout: float) -> set[str]:
        by_fd = {p.stdout.fileno(): h for h, p in self.readers.items() if p.stdout is not None}
        if not by_fd:
            time.sleep(timeout)
            return set()
        ready, _, _ = select.select(list(by_fd), [], [], timeout)
        out = set()
        for fd in ready:
            host = by_fd[fd]
            out.add(host)
            if not os.read(fd, 65536):  # the peer went away: watched again when it is back
                self.readers.pop(host).wait()
        return out

    def close(self) -> None:
        for p in self.readers.values():
            p.kill()  # not waited for: see the class's note
        self.readers = {}


def live(view: View, render: Callable[[dict[str, Any]], None], stop: Callable[[], bool]) -> None:
    """Render now, then again whenever a peer's event or the membership table changes."""
    snap = view.snapshot()
    namespace = Path(view.members().get("namespace") or "/n")
    watch = EventWatch(namespace)
    render(snap)
    table_stamp = _stamp(view.run_dir)
    try:
        _follow(view, render, stop, watch, namespace, snap, table_stamp)
    finally:
        watch.close()


def _follow(view: View, render: Callable[[dict[str, Any]], None], stop: Callable[[], bool], watch: EventWatch,
            namespace: Path, snap: dict[str, Any], table_stamp: float) -> None:
    while not stop():
        watch.watch([h["host"] for h in snap["hosts"] if h["online"] and not h["self"]])
        changed = watch.changed(MEMBERS_CHECK_SECONDS)
        stamp = _stamp(view.run_dir)
        if stamp != table_stamp:  # someone came or went: all rows
            table_stamp = stamp
            snap = view.snapshot()
        elif changed:  # only the hosts that sent an event
            members = {m["host"]: m for m in view.members().get("members", [])}
            snap["hosts"] = [view.host_row(members[h["host"]], namespace) if h["host"] in changed
                             and h["host"] in members else h for h in snap["hosts"]]
            snap["time"] = round(time.time(), 3)
        else:
            continue
        render(snap)


def _stamp(run_dir: Path) -> float:
    try:
        return os.stat(Path(run_dir) / "members.json").st_mtime
    except OSError:
        return 0.0
