"""What the agent reads at start: /etc/clusterctl/{host.json, profile.json, identity/}.

host.json names this host and its role (the build's overlay writes it); profile.json is the
resolved profile (roles' exports, hosts' LAN addresses, cluster.fusion); identity/ holds this
host's certificate and keys (agent.identity) and hosts.json, the cluster's register of public
facts (mesh address and WireGuard public key per host). Bad or missing files raise ConfigError
with one line that names the file.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.control import Policy
from agent.identity import HostIdentity, IdentityError, check_host_name, load_host_identity
from core.model import ModelError, Profile, Volume

ETC = Path("/etc/clusterctl")
WG_PORT = 51820


class ConfigError(ValueError):
    """A missing or malformed configuration file: one line, naming the file."""


@dataclass(frozen=True)
class Member:
    """One host of the cluster as every other host knows it (public facts only)."""

    name: str
    mesh: ipaddress.IPv6Address
    wg_public: str
    role: str | None = None
    lan: str | None = None  # the profile's LAN address, if it gives one
    exports: dict[str, str] = field(default_factory=dict)
    board: str | None = None  # the profile's, for the manager's view
    oses: tuple[str, ...] = ()  # what its own boot menu offers, default first


@dataclass
class AgentConfig:
    host: str
    role: str | None
    cluster: str
    identity_dir: Path
    identity: HostIdentity
    prefix: ipaddress.IPv6Network
    exports: dict[str, str]
    members: dict[str, Member]  # every host of the register, this one included
    namespace: Path  # cluster.fusion of the profile
    port: int
    seeds: list[str]
    wg_port: int = WG_PORT
    lan: str | None = None
    people: dict[int, str] = field(default_factory=dict)  # uid → name: the cluster's users
    trust_root: tuple[str, ...] = ()  # this role's exports where a peer's root stays root
    policy: Policy | None = None  # who may act here through ctl (roles.<role>.control)
    boot_oses: tuple[str, ...] = ()  # what this host's own boot menu offers, default first

    @property
    def mesh(self) -> ipaddress.IPv6Address:
        return self.identity.address

    @property
    def peers(self) -> dict[str, Member]:
        return {n: m for n, m in self.members.items() if n != self.host}


def boot_oses(profile: Profile, host: str) -> tuple[str, ...]:
    """The OSes of a host's own boot menu, default first (ISOs stay on the stick)."""
    if host not in profile.hosts:
        return ()
    return tuple(o for o in profile.oses_of_host(host) if profile.oses[o].is_debian)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path} is missing") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from None


def parse_register(data: Any, where: str) -> dict[str, dict[str, Any]]:
    """hosts.json: ``{host: {address, wg_public, serial}}``, or the CA's own register file
    ``{"cluster": ..., "hosts": {...}}`` (both shapes are accepted)."""
    if isinstance(data, dict) and isinstance(data.get("hosts"), dict) and "cluster" in data:
        data = data["hosts"]
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object of hosts")
    out: dict[str, dict[str, Any]] = {}
    for name, entry in data.items():
        if not isinstance(entry, dict) or "address" not in entry or "wg_public" not in entry:
            raise ConfigError(f"{where}: host {name!r} needs 'address' and 'wg_public'")
        try:
            check_host_name(name)
            ipaddress.IPv6Address(entry["address"])
        except (IdentityError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
        out[name] = entry
    return out


def read_profile(path: Path) -> Profile:
    """profile.json, the resolved profile the build wrote, as the model."""
    try:
        return Profile.from_json(_read_json(path))
    except ModelError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def role_exports(profile: Profile, role: str | None) -> dict[str, str]:
    r = profile.roles.get(role) if role else None
    return dict(r.exports) if r else {}


def role_volumes(etc: Path = ETC) -> tuple[str | None, dict[str, dict[str, Any]]]:
    """This host's role and that role's volumes (path, disk selector, options), from the resolved profile."""
    etc = Path(etc)
    facts = _read_json(etc / "host.json")
    role = facts.get("role") if isinstance(facts, dict) else None
    if not role:
        return None, {}
    profile = read_profile(etc / "profile.json")
    r = profile.roles.get(role)
    volumes: dict[str, Volume] = dict(r.volumes) if r else {}
    return str(role), {name: v.to_json() for name, v in volumes.items()}


def load(etc: Path = ETC) -> AgentConfig:
    etc = Path(etc)
    facts = _read_json(etc / "host.json")
    host = facts.get("host") if isinstance(facts, dict) else None
    if not host:
        raise ConfigError(f"{etc / 'host.json'} names no host (an installer's own system runs no agent)")
    profile = read_profile(etc / "profile.json")
    ident_dir = etc / "identity"
    try:
        ident = load_host_identity(ident_dir)
    except (IdentityError, OSError, ValueError) as exc:
        raise ConfigError(f"{ident_dir}: {exc}") from None
    if ident.host != host:
        raise ConfigError(f"{ident_dir}: the certificate is for {ident.host!r}, host.json says {host!r}")
    if not ident.wg_private:
        raise ConfigError(f"{ident_dir}: no wg.key")
    mesh = _read_json(ident_dir / "mesh.json")
    try:
        prefix = ipaddress.IPv6Network(mesh["prefix"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{ident_dir / 'mesh.json'}: no valid prefix ({exc})") from None
    register = parse_register(_read_json(ident_dir / "hosts.json"), str(ident_dir / "hosts.json"))
    members: dict[str, Member] = {}
    for name, entry in register.items():
        hdef = profile.hosts.get(name)
        role = hdef.role if hdef else None
        members[name] = Member(name, ipaddress.IPv6Address(entry["address"]), str(entry["wg_public"]),
                               role, hdef.lan_address if hdef else None, role_exports(profile, role),
                               hdef.board if hdef else None, boot_oses(profile, name))
    if host not in members:
        # The register is what peers know; this host's own facts come from its identity.
        members[host] = Member(host, ident.address, ident.wg_public, facts.get("role"),
                               facts.get("address"), role_exports(profile, facts.get("role")),
                               profile.hosts[host].board if host in profile.hosts else None,
                               boot_oses(profile, host))
    fusion = profile.cluster.fusion
    own_role = profile.roles.get(facts.get("role") or "")
    return AgentConfig(
        host=host, role=facts.get("role"), cluster=ident.cluster, identity_dir=ident_dir, identity=ident,
        prefix=prefix, exports=role_exports(profile, facts.get("role")), members=members,
        namespace=Path(fusion.namespace), port=fusion.port, seeds=list(fusion.seeds), lan=facts.get("address"),
        people={u.uid: u.name for u in profile.cluster.users if u.uid is not None},
        trust_root=own_role.trust_root if own_role else (),
        policy=Policy.from_profile(facts.get("role"), {n: h.role for n, h in profile.hosts.items()},
                                   {n: r.control for n, r in profile.roles.items()},
                                   [(u.name, u.uid, u.groups) for u in profile.cluster.users]),
        boot_oses=boot_oses(profile, host))
