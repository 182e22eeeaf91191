"""Finding peers on the LAN: mDNS/DNS-SD (python3-zeroconf) and the profile's seed list.

Every agent announces ``<host>-<cluster>._clusterctl._udp.local.`` whose port is its WireGuard
port and whose TXT record says who it claims to be: cluster, host, LAN address, WireGuard
public key, 9P port. A claim is only a hint: an advert is used as a WireGuard endpoint only
when its host is in this cluster's register with that very public key, and nothing is mounted
before the peer proves its certificate over the mesh (agent.auth). Adverts of other clusters
are ignored; adverts that claim a member's name with another key are ``refused``.

Seeds (``cluster.fusion.seeds``: ``host``, ``address``, ``address:port``, ``[v6]:port``) are
for hosts mDNS cannot reach. A seed naming a member, or resolving to a member's LAN address
in the profile, is that member's endpoint; any other address is a candidate endpoint for every
member not yet reached, and WireGuard's handshake (which only the holder of a member's key can
answer) tells which one it is.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import subprocess
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from agent.mesh.config import WG_PORT, AgentConfig

log = logging.getLogger("agent.mesh.discovery")

SERVICE = "_clusterctl._udp.local."
TXT_VERSION = "1"


class AdvertError(ValueError):
    pass


@dataclass(frozen=True)
class Advert:
    host: str
    cluster: str
    lan: str
    wg_port: int
    wg_public: str
    port: int  # 9P on the mesh

    @property
    def endpoint(self) -> tuple[str, int]:
        return self.lan, self.wg_port


def instance_name(host: str, cluster: str) -> str:
    # One DNS label: a cluster name may hold dots.
    return f"{host}-{cluster.replace('.', '-')}.{SERVICE}"


def txt_properties(ad: Advert) -> dict[str, str]:
    return {"v": TXT_VERSION, "cluster": ad.cluster, "host": ad.host, "lan": ad.lan,
            "wg": ad.wg_public, "wgport": str(ad.wg_port), "port": str(ad.port)}


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value or "")


def parse_advert(properties: dict[Any, Any], addresses: list[str], port: int | None) -> Advert:
    """An advert from a resolved service's TXT properties, addresses and port."""
    props = {_text(k): _text(v) for k, v in properties.items()}
    if props.get("v") != TXT_VERSION:
        raise AdvertError(f"advert version {props.get('v')!r}")
    for key in ("cluster", "host", "wg"):
        if not props.get(key):
            raise AdvertError(f"advert without {key!r}")
    lan = props.get("lan") or (addresses[0] if addresses else "")
    try:
        lan = str(ipaddress.ip_address(lan))
        wg_port = int(props.get("wgport") or port or WG_PORT)
        nine_port = int(props.get("port") or 0)
    except ValueError as exc:
        raise AdvertError(f"advert of {props['host']!r}: {exc}") from None
    if not 0 < wg_port < 65536:
        raise AdvertError(f"advert of {props['host']!r}: port {wg_port}")
    return Advert(props["host"], props["cluster"], lan, wg_port, props["wg"], nine_port)


@dataclass(frozen=True)
class Verdict:
    """What to make of an advert: use it as ``peer``'s endpoint, refuse it (why), or ignore it."""

    action: str  # "use", "refuse", "ignore"
    peer: str = ""
    reason: str = ""


def judge(ad: Advert, cfg: AgentConfig) -> Verdict:
    if ad.cluster != cfg.cluster:
        return Verdict("ignore", ad.host, "another cluster")
    if ad.host == cfg.host:
        return Verdict("ignore", ad.host, "this host")
    member = cfg.members.get(ad.host)
    if member is None:
        return Verdict("refuse", ad.host, "not in this cluster's register")
    if member.wg_public != ad.wg_public:
        return Verdict("refuse", ad.host, "its WireGuard key is not the register's")
    return Verdict("use", ad.host)


# -- seeds ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Seed:
    text: str
    host: str  # a name or an address
    port: int


def parse_seed(text: str, default_port: int = WG_PORT) -> Seed:
    """``host``, ``address``, ``host:port``, ``address:port``, ``[v6]`` or ``[v6]:port``;
    a bare IPv6 address (several colons, no brackets) has no port."""
    s = text.strip()
    if not s:
        raise ValueError("an empty seed")
    host, port = s, default_port
    if s.startswith("["):
        inner, sep, rest = s[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"seed {text!r}: expected [ADDRESS] or [ADDRESS]:PORT")
        host = inner
        if rest:
            port = _port(rest[1:], text)
    elif s.count(":") == 1:
        host, _, p = s.partition(":")
        port = _port(p, text)
    if not host:
        raise ValueError(f"seed {text!r}: no host")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"seed {text!r}: {host!r} is not an IPv6 address") from None
    return Seed(text, host, port)


def _port(text: str, seed: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"seed {seed!r}: port {text!r} is not 1..65535")
    return int(text)


def resolve(host: str) -> list[str]:
    """Addresses of a seed (a literal, /etc/hosts or DNS); IPv4 first; [] when unknown."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError):
        return []
    out: list[str] = []
    for family, *_rest, sockaddr in infos:
        addr = str(sockaddr[0])
        if addr not in out and family in (socket.AF_INET, socket.AF_INET6):
            out.append(addr)
    return sorted(out, key=lambda a: ":" in a)


def seed_targets(seed: Seed, cfg: AgentConfig, resolver: Callable[[str], list[str]] = resolve,
                 own: Collection[str] = ()) -> tuple[list[str], list[tuple[str, int]]]:
    """(members this seed is known to be, candidate endpoints). No members means: any member
    not reached yet may be behind it. A seed that is this host (its name, its LAN address in the
    profile, or an address it holds, ``own``) gives nothing: every host has the same seed list,
    and a cloud host's public address is its own seed. As a candidate it would point each peer's
    endpoint back at this host and undo the one WireGuard learned from the peer (behind a NAT,
    the only one that works)."""
    addresses = resolver(seed.host)
    mine = {*own, *([cfg.lan] if cfg.lan else [])}
    if seed.host == cfg.host or mine.intersection(addresses):
        return [], []
    endpoints = [(a, seed.port) for a in addresses]
    if seed.host in cfg.members:
        return [seed.host], endpoints
    by_lan = {m.lan: n for n, m in cfg.members.items() if m.lan}
    named = sorted({by_lan[a] for a in addresses if a in by_lan})
    if named:
        return [n for n in named if n != cfg.host], endpoints
    return [], endpoints


# -- LAN address ----------------------------------------------------------------------------
def ipv4_addresses(exclude: tuple[str, ...] = ("lo", "wg0")) -> list[tuple[str, str]]:
    """(interface, address) of every global IPv4 address, loopback and the mesh left out."""
    out: list[tuple[str, str]] = []
    try:
        text = subprocess.run(["ip", "-j", "-4", "address", "show"], capture_output=True, text=True,
                              timeout=5, check=True).stdout
        for link in json.loads(text):
            if link.get("ifname") in exclude:
                continue
            out += [(str(link.get("ifname")), str(a["local"])) for a in link.get("addr_info", [])
                    if a.get("scope") == "global" and a.get("local")]
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    return out


def lan_address(preferred: str | None, found: list[tuple[str, str]] | None = None) -> str | None:
    """This host's LAN IPv4 address once an interface has it: the profile's, else the first
    global one on an interface that is not loopback or the mesh. None while there is none."""
    addresses = [a for _i, a in (ipv4_addresses() if found is None else found)]
    if preferred:
        return preferred if preferred in addresses else None
    return addresses[0] if addresses else None


def shared_address(address: str, found: list[tuple[str, str]]) -> list[str]:
    """Interfaces holding ``address`` when more than one does (a .network matching every NIC):
    replies may then leave through a NIC that has no cable."""
    names = sorted({i for i, a in found if a == address})
    return names if len(names) > 1 else []


# -- mDNS -----------------------------------------------------------------------------------
class Mdns:
    """Announce this agent and browse for others; ``on_advert(advert)`` runs on zeroconf's
    browser thread for every service seen (added or updated)."""

    def __init__(self, advert: Advert, on_advert: Callable[[Advert], None],
                 interfaces: list[str] | None = None) -> None:
        self.advert = advert
        self.on_advert = on_advert
        self.interfaces = interfaces
        self.zc: Any = None
        self.browser: Any = None
        self.info: Any = None
        self._lock = threading.Lock()

    def start(self) -> None:
        from zeroconf import IPVersion, ServiceBrowser, ServiceInfo, Zeroconf

        # IPv4 only: the LAN; the mesh (wg0) carries no multicast.
        self.zc = Zeroconf(interfaces=self.interfaces or [self.advert.lan], ip_version=IPVersion.V4Only)
        ad = self.advert
        server = f"{ad.host}-{ad.cluster.replace('.', '-')}.local."
        self.info = ServiceInfo(SERVICE, instance_name(ad.host, ad.cluster), port=ad.wg_port,
                                properties=txt_properties(ad), server=server, parsed_addresses=[ad.lan])
        self.zc.register_service(self.info)
        self.browser = ServiceBrowser(self.zc, SERVICE, handlers=[self._changed])

    def _changed(self, zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
        from zeroconf import ServiceStateChange

        if state_change is ServiceStateChange.Removed:
            return  # liveness over the mesh decides when a peer is gone
        try:
            info = zeroconf.get_service_info(service_type, name, timeout=3000)
            if info is None:
                return
            ad = parse_advert(info.properties or {}, info.parsed_addresses(), info.port)
        except AdvertError as exc:
            log.info("mDNS %s: %s", name, exc)
            return
        except Exception:  # zeroconf's thread must live on
            log.exception("mDNS %s", name)
            return
        with self._lock:
            self.on_advert(ad)

    def stop(self) -> None:
        try:
            if self.browser is not None:
                self.browser.cancel()
            if self.zc is not None:
                if self.info is not None:
                    self.zc.unregister_service(self.info)
                self.zc.close()
        except Exception:
            log.exception("stopping mDNS")
