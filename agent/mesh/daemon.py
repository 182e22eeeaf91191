"""``clusterctl-agent run``: the fused agent on an installed host.

Order of things: clear 9P mounts a previous agent left; bring up WireGuard (wg0, this host's
mesh address, every member as a peer); serve 9P only on the mesh address, behind the
certificate handshake, with the role's exports read-write; announce and browse mDNS; try the
seeds; one supervisor per peer mounts it at <namespace>/<peer> and watches it. Every change
goes to the console as an event and into /run/clusterctl/members.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.auth import Gate
from agent.bootctl import BootControl
from agent.mesh import discovery
from agent.mesh.config import AgentConfig, ConfigError
from agent.mesh.liveness import INTERVAL, MISSES
from agent.mesh.members import RUN, Membership
from agent.mesh.mounts import FuseMount, KernelMount, clear_stale
from agent.mesh.supervisor import PeerSupervisor
from agent.mesh.wireguard import WireGuard
from agent.ninep.creds import People, can_switch, person_creds
from agent.ninep.localfs import Export
from core import events

log = logging.getLogger("agent.mesh.daemon")

SEED_PERIOD = 30.0
MDNS_RETRY = 3.0


def exports_of(cfg: AgentConfig) -> list[Export]:
    """The role's exports, read-write; a missing folder is made (a fresh host's drive)."""
    from agent.service import UsageError, parse_export

    out = []
    for name, path in sorted(cfg.exports.items()):
        Path(path).mkdir(parents=True, exist_ok=True)
        made = person_folders(Path(path), cfg.people)
        if made:
            events.emit("export", host=cfg.host, export=name, state="person-folders", folders=made)
        try:
            out.append(parse_export(f"{name}={path}:rw"))
        except UsageError as exc:
            raise ConfigError(f"profile.json: roles.{cfg.role}.exports: {exc}") from None
    return out


def person_folders(path: Path, people: dict[int, str]) -> list[str]:
    """An export with nothing in it yet (a fresh drive: lost+found at most) gets a private
    folder per person, theirs, since a peer's root may not write there (agent.ninep.creds).
    An export with anything in it is the owner's to arrange and is left alone."""
    try:
        if any(p.name != "lost+found" for p in path.iterdir()):
            return []
    except OSError:
        return []
    made = []
    for uid, name in sorted(people.items()):
        who = person_creds(name, uid)
        folder = path / name
        try:
            folder.mkdir(mode=0o700)
            os.chown(folder, who.uid, who.gid)
        except OSError as exc:
            events.emit("error", stage="export", message=f"{folder}: {exc}")
            continue
        made.append(name)
    return made


class Agent:
    def __init__(self, cfg: AgentConfig, backend: KernelMount | FuseMount, *, wg: WireGuard | None = None,
                 run_dir: Path = RUN, mdns: bool = True, listen: str | None = None,
                 interval: float = INTERVAL, misses: int = MISSES) -> None:
        self.cfg = cfg
        self.backend = backend
        self.wg = wg
        self.mdns_wanted = mdns
        self.listen = listen or f"[{cfg.mesh}]:{cfg.port}"
        self.members = Membership(cfg, run_dir)
        self.sups: dict[str, PeerSupervisor] = {}
        self.mdns: discovery.Mdns | None = None
        self.seen_refusals: set[tuple[str, str, str]] = set()
        self.tasks: list[asyncio.Task[Any]] = []
        self.interval, self.misses = interval, misses

    # -- reporting ---------------------------------------------------------------------
    def report(self, peer: str, state: str, **fields: Any) -> None:
        clean = {k: v for k, v in fields.items() if v is not None}
        entry: dict[str, Any] = {"state": state, "online": state == "mounted", "reason": clean.get("reason")}
        if "endpoint" in clean:
            entry["endpoint"] = clean["endpoint"]
        # The table first, then the event: whoever acts on the event finds /n/cluster and
        # members.json already saying the same.
        self.members.update(peer, **entry)
        if state == "error":
            events.emit("error", stage="mount", host=self.cfg.host, peer=peer, message=clean.get("reason", ""))
        else:
            events.emit("peer", host=self.cfg.host, peer=peer, state=state, **clean)

    def _gate_event(self, publish: Callable[..., Any]) -> Callable[..., Any]:
        def hook(name: str, **fields: Any) -> Any:
            if name == "auth" and fields.get("state") == "refused":
                events.emit("peer", host=self.cfg.host, peer=None, state="refused", source="server",
                            reason=fields.get("reason"), connection=fields.get("peer"))
            return publish(name, **fields)

        return hook

    def gate(self) -> Callable[[Callable[[], asyncio.BaseProtocol], Callable[..., Any]], Gate]:
        return lambda make, on_event: Gate(self.cfg.identity, make, self._gate_event(on_event))

    def people(self) -> People | None:
        """Each person acts as themselves in the exports (agent.ninep.creds); where switching
        credentials is impossible (not root: tests on a build machine) the server acts as itself."""
        if not can_switch():
            events.emit("error", stage="agent", host=self.cfg.host,
                        message="not root: peers act with the agent's own rights in the exports")
            return None
        return People(self.cfg.people, self.cfg.trust_root)

    # -- discovery ---------------------------------------------------------------------
    def advert_seen(self, ad: discovery.Advert) -> None:
        verdict = discovery.judge(ad, self.cfg)
        if verdict.action == "use":
            if verdict.peer in self.sups:
                self.sups[verdict.peer].add_candidate(ad.endpoint)
        elif verdict.action == "refuse":
            key = (ad.host, ad.lan, verdict.reason)
            if key not in self.seen_refusals:
                self.seen_refusals.add(key)
                events.emit("peer", host=self.cfg.host, peer=ad.host, state="refused", source="mdns",
                            lan=ad.lan, reason=verdict.reason)

    async def seeds_loop(self) -> None:
        loop = asyncio.get_running_loop()
        seeds = []
        for text in self.cfg.seeds:
            try:
                seeds.append(discovery.parse_seed(text, self.cfg.wg_port))
            except ValueError as exc:
                events.emit("error", stage="seeds", host=self.cfg.host, message=str(exc))
        while seeds:
            own = [a for _i, a in await loop.run_in_executor(None, discovery.ipv4_addresses)]
            for seed in seeds:
                named, endpoints = await loop.run_in_executor(None, discovery.seed_targets, seed, self.cfg,
                                                              discovery.resolve, own)
                targets = [self.sups[n] for n in named if n in self.sups] or \
                    [s for s in self.sups.values() if s.state != "mounted"]
                for sup in targets:
                    for ep in endpoints:
                        sup.add_candidate(ep)
            await asyncio.sleep(SEED_PERIOD)

    async def mdns_loop(self) -> None:
        loop = asyncio.get_running_loop()
        warned = False
        while True:
            found = await loop.run_in_executor(None, discovery.ipv4_addresses)
            lan = discovery.lan_address(self.cfg.lan, found)
            if lan is not None and not warned and discovery.shared_address(lan, found):
                warned = True
                events.emit("error", stage="network", host=self.cfg.host,
                            message=f"the LAN address {lan} is on {', '.join(discovery.shared_address(lan, found))}: "
                                    "replies may leave through the wrong interface")
            if lan is not None:
                ad = discovery.Advert(self.cfg.host, self.cfg.cluster, lan, self.cfg.wg_port,
                                      self.cfg.identity.wg_public, self.cfg.port)
                mdns = discovery.Mdns(ad, lambda a: loop.call_soon_threadsafe(self.advert_seen, a))
                try:
                    await loop.run_in_executor(None, mdns.start)
                except Exception as exc:  # zeroconf: no multicast yet, name conflict...
                    events.emit("error", stage="mdns", host=self.cfg.host, message=f"{type(exc).__name__}: {exc}")
                    await loop.run_in_executor(None, mdns.stop)
                else:
                    self.mdns = mdns
                    return
            await asyncio.sleep(MDNS_RETRY)

    # -- the whole -------------------------------------------------------------------
    async def run(self) -> None:
        from agent.service import serve

        cfg = self.cfg
        loop = asyncio.get_running_loop()
        exports = exports_of(cfg)
        cfg.namespace.mkdir(parents=True, exist_ok=True)
        await loop.run_in_executor(None, clear_stale, cfg.namespace)
        if self.wg is not None:
            wg = self.wg
            key = cfg.identity_dir / "wg.key"
            await loop.run_in_executor(None, wg.up, key, cfg.wg_port, cfg.mesh, cfg.prefix)
            for member in cfg.peers.values():
                await loop.run_in_executor(None, wg.add_peer, member.wg_public, member.mesh)
            events.emit("mesh", host=cfg.host, state="up", address=str(cfg.mesh), iface=wg.iface,
                        port=cfg.wg_port, peers=len(cfg.peers))
        self.members.write()
        self.members.link_namespace()
        started: asyncio.Future[list[str]] = loop.create_future()
        server = loop.create_task(serve(exports, [self.listen], hostname=cfg.host, gate=self.gate(),
                                        started=started, people=self.people(), policy=cfg.policy,
                                        boot=BootControl(cfg.boot_oses)))
        self.tasks.append(server)
        done, _ = await asyncio.wait([server, started], return_when=asyncio.FIRST_COMPLETED)
        if server in done:
            server.result()  # the listen error
        for name, member in sorted(cfg.peers.items()):
            if name == "cluster":
                events.emit("error", stage="agent", host=cfg.host, message="a host named 'cluster' cannot be mounted")
                continue
            sup = PeerSupervisor(member, cfg.identity, cfg.port, cfg.namespace / name, self.backend, self.report,
                                 self.wg, interval=self.interval, misses=self.misses)
            self.sups[name] = sup
        for sup in self.sups.values():
            self.tasks.append(loop.create_task(sup.run()))
        self.tasks.append(loop.create_task(self.seeds_loop()))
        if self.mdns_wanted:
            self.tasks.append(loop.create_task(self.mdns_loop()))
        events.emit("agent", host=cfg.host, state="running", listen=started.result(), backend=self.backend.name,
                    namespace=str(cfg.namespace), peers=sorted(self.sups), pid=os.getpid())
        try:
            await server  # serves until cancelled
        finally:
            await self.stop()

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(BaseException):
                await t
        if self.mdns is not None:
            await loop.run_in_executor(None, self.mdns.stop)
        if self.wg is not None:
            await loop.run_in_executor(None, self.wg.down)
