"""The agent's 9P namespace: exported directories plus the synthetic state trees.

Attach names (aname) select what a mount sees:

- ``""`` or ``"/"``: the whole host::

      fs/<export>/...   each exported directory (read-only ones refuse changes)
      hw/...            hardware inventory (one file per fact, ``json`` per directory)
      os/...            os-release, kernel, hostname, uptime, load, memory
      svc/<unit>/...    systemd units: load, active, sub, description, ctl
      status            the agent: host, exports, connections, event count (JSON)
      events            a blocking read returning the next change event line(s)
      recent            the last 20 events, at once
      ctl               text commands (allowed ones listed when read)

- ``"fs/<export>"`` or ``"<export>"``: that export's root alone.

So a peer mounted at /n/<host> with aname "/" shows /n/<host>/fs/<export>, /n/<host>/hw/...
"""

from __future__ import annotations

import errno
import os
import shlex
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from typing import Any

from agent import control
from agent.bootctl import BootControl
from agent.control import Policy
from agent.eventbus import EventBus, EventReader
from agent.ninep.localfs import Export
from agent.ninep.node import Node, fail
from agent.ninep.synth import DataDir, StreamFile, StreamHandle, SynthDir, SynthFile, render_json, render_scalar
from agent.state import osinfo, svc
from agent.state.hw import Inventory
from core.events import emit

# What the owner may let remote writers do through ctl files (``--ctl-allow``); on a deployed
# host, what the profile's roles.<role>.control lets a peer do (agent/control.py).
CTL_CAPABILITIES = ("event", "refresh", "svc", "power", "boot")
POWER_VERBS = ("reboot", "poweroff")
SVC_CACHE_SECONDS = 2.0
RECENT = 20  # events the ``recent`` file holds


class AgentNamespace:
    def __init__(self, exports: Iterable[Export], bus: EventBus | None = None,
                 ctl_allow: Iterable[str] = (), hostname: str | None = None,
                 connections: Callable[[], int] | None = None, policy: Policy | None = None,
                 power: Callable[[str], None] | None = None, boot: BootControl | None = None) -> None:
        self.exports: dict[str, Export] = {}
        for i, exp in enumerate(exports):
            if exp.name in self.exports:
                raise ValueError(f"export {exp.name!r} given twice")
            exp.index = i
            if exp.root_fd < 0:
                exp.open()
            self.exports[exp.name] = exp
        unknown = set(ctl_allow) - set(CTL_CAPABILITIES)
        if unknown:
            raise ValueError(f"unknown ctl capabilities: {', '.join(sorted(unknown))}")
        self.ctl_allow = frozenset(ctl_allow)
        self.policy = policy
        self.power = power or _systemctl_power
        self.boot = boot
        self.bus = bus or EventBus()
        self.hostname = hostname or socket.gethostname()
        self.connections = connections or (lambda: 0)
        self.started = time.time()
        self.inventory = Inventory()
        self._units_cache: list[dict[str, Any]] = []
        self._units_at = -SVC_CACHE_SECONDS
        self.root = self._build()

    # -- tree ----------------------------------------------------------------------------
    def _build(self) -> SynthDir:
        root = SynthDir("", None)
        root.add(SynthDir("fs", root, lambda d: {n: e.root(mount_parent=d) for n, e in self.exports.items()}))
        root.add(DataDir("hw", root, self.inventory))
        osdir = DataDir("os", root, osinfo.facts)
        root.add(osdir)
        root.add(SynthDir("svc", root, self._svc_children))
        root.add(SynthFile("status", root, lambda: render_json(self.status())))
        root.add(StreamFile("events", root, lambda: StreamHandle(EventReader(self.bus).next_chunk)))
        # The last events at once (a reader of ``events`` sees only what comes after it opens).
        root.add(SynthFile("recent", root, lambda: b"".join(line for _, line in list(self.bus.ring)[-RECENT:])))
        root.add(SynthFile("ctl", root, self._ctl_help, self._ctl_write, self._ctl_writable))
        return root

    def attach(self, aname: str, uname: str, n_uname: int) -> Node:
        name = aname.strip("/")
        if not name:
            return self.root
        if name.startswith("fs/"):
            name = name[3:]
        exp = self.exports.get(name)
        if exp is None:
            raise fail(errno.ENOENT, f"no export {aname!r}")
        return exp.root()

    def status(self) -> dict[str, Any]:
        return {
            "host": self.hostname,
            "pid": os.getpid(),
            "started": round(self.started, 3),
            "uptime": round(time.time() - self.started, 3),
            "exports": [{"name": e.name, "path": e.path, "readonly": e.readonly} for e in self.exports.values()],
            "connections": self.connections(),
            "events": self.bus.seq,
            "ctl": sorted(self.ctl_allow),
            "control": "by the profile's roles.*.control" if self.policy is not None else None,
            "systemd": svc.systemd_running(),
            # What a manager shows of the host (agent/manage.py): the system it runs, its units
            # that failed, and how full its root and its exports are.
            "os": osinfo.running_os(),
            "failed_units": svc.failed(self._units()),
            "space": {"/": osinfo.space("/"), **{e.name: osinfo.space(e.path) for e in self.exports.values()}},
        }

    def _units(self) -> list[dict[str, Any]]:
        # One systemctl call serves a whole walk (svc/<unit>/active is three lookups).
        now = time.monotonic()
        if now - self._units_at > SVC_CACHE_SECONDS:
            self._units_cache, self._units_at = svc.units(), now
        return self._units_cache

    def _svc_children(self, parent: SynthDir) -> dict[str, Node]:
        out: dict[str, Node] = {}
        for unit in self._units():
            name = unit["name"].replace("/", "_")
            d = SynthDir(name, parent)
            for key in ("load", "active", "sub", "description"):
                d.add(SynthFile(key, d, _const(render_scalar(unit[key]))))
            d.add(SynthFile("json", d, _const(render_json(unit))))
            d.add(SynthFile("ctl", d, _const(f"{' '.join(svc.VERBS)}\n".encode()),
                            self._svc_ctl(unit["name"]), lambda: "svc" in self.ctl_allow or self.policy is not None))
            out[name] = d
        return out

    # -- ctl -----------------------------------------------------------------------------
    def _ctl_writable(self) -> bool:
        return bool(self.ctl_allow) or self.policy is not None

    def _ctl_help(self) -> bytes:
        lines = []
        allowed = set(CTL_CAPABILITIES) if self.policy is not None else self.ctl_allow
        if "event" in allowed:
            lines.append("event NAME [KEY=VALUE ...]   publish an event on the events stream")
        if "refresh" in allowed:
            lines.append("refresh                      re-read the hardware inventory now")
        if "svc" in allowed:
            lines.append(f"svc {'|'.join(svc.VERBS)} UNIT  queue a systemd job")
        if "power" in allowed:
            lines.append("reboot | poweroff             restart or power off this host")
        if "boot" in allowed and self.boot is not None:
            lines.append(f"boot {'|'.join(self.boot.oses)}  that OS on the next boot only, then the default")
        if self.policy is not None:
            lines.append(f"(hosts of roles whose control lists {self.policy.role} may; others may only look)")
        if not lines:
            lines.append("(no commands allowed on this host)")
        return ("\n".join(lines) + "\n").encode()

    def _audit(self, event: str, **fields: Any) -> None:
        """An action or a refusal: on the events stream, and on the console (the journal) too."""
        self.bus.publish(event, **fields)
        emit(event, host=self.hostname, **fields)

    def _need(self, capability: str, command: str) -> str:
        """Who asks, if they may; else EPERM and a ``refused`` event naming them."""
        req = control.current.get() or control.Requester(None, -1)
        people = self.policy.people if self.policy is not None else {}
        who = req.who(people)
        if self.policy is not None and req.host is not None:
            why = self.policy.refusal(req)
        elif capability in self.ctl_allow:
            why = None
        else:
            why = f"ctl command {capability!r} is not allowed here"
        if why is not None:
            self._audit("refused", command=command, by=who, reason=why)
            raise fail(errno.EPERM, why)
        return who

    def _ctl_write(self, data: bytes) -> None:
        for raw in data.decode("utf-8", "replace").splitlines():
            try:
                words = shlex.split(raw)
            except ValueError:
                raise fail(errno.EINVAL, "unbalanced quotes") from None
            if words:
                self.run_command(words)

    def run_command(self, words: list[str]) -> None:
        cmd, args = words[0], words[1:]
        command = shlex.join(words)
        if cmd == "event":
            who = self._need("event", command)
            if not args or any("=" not in a for a in args[1:]):
                raise fail(errno.EINVAL, "usage: event NAME [KEY=VALUE ...]")
            self.bus.publish(args[0], source="ctl", by=who, **dict(a.split("=", 1) for a in args[1:]))
        elif cmd == "refresh":
            who = self._need("refresh", command)
            self.inventory.refresh()
            self.bus.publish("hw", source="ctl", state="refreshed", by=who)
        elif cmd == "svc":
            if len(args) != 2:
                raise fail(errno.EINVAL, "usage: svc VERB UNIT")
            self._svc_ctl(args[1])(args[0].encode())
        elif cmd in POWER_VERBS:
            if args:
                raise fail(errno.EINVAL, f"usage: {cmd}")
            who = self._need("power", command)
            self._audit("ctl", command=cmd, by=who)
            try:
                self.power(cmd)
            except RuntimeError as exc:
                raise fail(errno.EIO, str(exc)) from None
        elif cmd == "boot" and self.boot is not None:
            if len(args) != 1:
                raise fail(errno.EINVAL, f"usage: boot {'|'.join(self.boot.oses)}")
            who = self._need("boot", command)
            try:
                disk = self.boot.next_boot(args[0])
            except ValueError as exc:
                raise fail(errno.EINVAL, str(exc)) from None
            except RuntimeError as exc:
                raise fail(errno.EIO, str(exc)) from None
            self._audit("ctl", command="boot", os=args[0], disk=disk, by=who)
        else:
            raise fail(errno.EINVAL, f"unknown ctl command {cmd!r}")

    def _svc_ctl(self, unit: str) -> Callable[[bytes], None]:
        def run(data: bytes) -> None:
            verb = data.decode("utf-8", "replace").strip()
            who = self._need("svc", f"svc {verb} {unit}")
            try:
                svc.control(unit, verb)
            except ValueError as exc:
                raise fail(errno.EINVAL, str(exc)) from None
            except RuntimeError as exc:
                raise fail(errno.EIO, str(exc)) from None
            self._audit("svc", unit=unit, request=verb, source="ctl", by=who)

        return run


def _systemctl_power(verb: str) -> None:
    """Queue the reboot or power-off and return at once: the ctl write's reply still goes out."""
    proc = subprocess.run(["systemctl", "--no-block", verb], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"systemctl {verb}: {proc.stderr.strip() or proc.returncode}")


def _const(data: bytes) -> Callable[[], bytes]:
    return lambda: data

