"""The resolved profile as one typed model: what the builder writes to etc/clusterctl/profile.json
and what host code reads back.

The builder's field table (builder/profile/fields.py) parses, checks and fills every default;
its result is the *resolved* profile, plain JSON. :meth:`Profile.from_json` turns that JSON into
frozen dataclasses, and :meth:`Profile.to_json` gives it back exactly
(``Profile.from_json(d).to_json() == d``). The model restates no default of the table: a field
the table always fills is required here, a field it may leave out is ``X | None = None`` and is
left out of ``to_json`` again when it is ``None``.

Selectors (a role's or host's ``match``, a host's ``pin``, install and volume disk selectors)
stay open mappings, typed by the keys they may hold: hardware/selectors.py evaluates them as
they are written.

Layer 3: standard library only, imports nothing of ours outside core/ (runs inside images).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict, TypeVar

__all__ = [
    "Cluster",
    "DiskSelector",
    "DisksSelector",
    "Fusion",
    "Host",
    "HostSelector",
    "Image",
    "Install",
    "ModelError",
    "Network",
    "OsDef",
    "Pin",
    "Profile",
    "Role",
    "User",
    "Volume",
]

T = TypeVar("T")


class ModelError(ValueError):
    """The document is not a resolved profile; the message names the key path."""


# --- selectors: open mappings, evaluated by hardware/selectors.py ----------------------------

Comparison = int | str  # ">=2", "<=1TB", 4: kept as written


class DisksSelector(TypedDict, total=False):
    count: Comparison
    size: Comparison
    type: str
    rotational: bool


class NicsSelector(TypedDict, total=False):
    count: Comparison


class HostSelector(TypedDict, total=False):
    chassis: list[str]
    vendor: str
    product: str
    display: bool
    battery: bool
    cpus: Comparison
    memory: Comparison
    disks: DisksSelector
    nics: NicsSelector


class Pin(TypedDict, total=False):
    serial: str
    mac: list[str]


class DiskSelector(TypedDict, total=False):
    """Install or volume disk selector (``wipe`` is always present once resolved)."""

    type: str
    size: Comparison
    model: str
    serial: str
    smallest: bool
    largest: bool
    wipe: bool


# --- reading JSON with located errors -------------------------------------------------------


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


class _Obj:
    """One JSON object being read: every key must be taken, none may be left unknown."""

    def __init__(self, value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise ModelError(f"{path or 'profile'}: expected an object, got {_kind(value)}")
        self.d, self.path, self.taken = value, path, set()

    def sub(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def value(self, key: str) -> Any:
        return self._get(key, True)

    def _get(self, key: str, required: bool) -> Any:
        self.taken.add(key)
        if key not in self.d:
            if required:
                raise ModelError(f"{self.path or 'profile'}: missing {key!r}")
            return None
        return self.d[key]

    def text(self, key: str, required: bool = True) -> Any:
        v = self._get(key, required)
        if v is None and not required:
            return None
        if not isinstance(v, str):
            raise ModelError(f"{self.sub(key)}: expected a string, got {_kind(v)}")
        return v

    def integer(self, key: str) -> int:
        v = self._get(key, True)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ModelError(f"{self.sub(key)}: expected a whole number, got {_kind(v)}")
        return v

    def flag(self, key: str) -> bool:
        v = self._get(key, True)
        if not isinstance(v, bool):
            raise ModelError(f"{self.sub(key)}: expected true or false, got {_kind(v)}")
        return v

    def texts(self, key: str, required: bool = True) -> Any:
        v = self._get(key, required)
        if v is None and not required:
            return None
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise ModelError(f"{self.sub(key)}: expected a list of strings, got {_kind(v)}")
        return tuple(v)

    def open(self, key: str) -> Any:
        """An open mapping (a selector): checked to be an object, copied as it is."""
        v = self._get(key, True)
        if not isinstance(v, dict):
            raise ModelError(f"{self.sub(key)}: expected an object, got {_kind(v)}")
        return copy.deepcopy(v)

    def record(self, key: str, make: Callable[[Any, str], T]) -> T:
        return make(self._get(key, True), self.sub(key))

    def named(self, key: str, make: Callable[[Any, str], T]) -> dict[str, T]:
        """A mapping of names to records (or to plain values)."""
        v = self._get(key, True)
        if not isinstance(v, dict):
            raise ModelError(f"{self.sub(key)}: expected an object, got {_kind(v)}")
        return {str(k): make(item, f"{self.sub(key)}.{k}") for k, item in v.items()}

    def done(self) -> None:
        unknown = [k for k in self.d if k not in self.taken]
        if unknown:
            raise ModelError(f"{self.path or 'profile'}: unknown key {unknown[0]!r}")


def _str_value(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise ModelError(f"{path}: expected a string, got {_kind(value)}")
    return value


def _out(pairs: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON object from a record's fields: None means absent, tuples become lists."""
    out: dict[str, Any] = {}
    for k, v in pairs.items():
        if v is None:
            continue
        out[k] = list(v) if isinstance(v, tuple) else v
    return out


# --- the model --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class User:
    name: str
    ssh_keys: tuple[str, ...]
    groups: tuple[str, ...]
    shell: str
    password_hash: str | None = None
    uid: int | None = None  # the same on every host (builder/ids.py); also the private group's gid

    @classmethod
    def from_json(cls, value: Any, path: str) -> User:
        o = _Obj(value, path)
        u = cls(name=o.text("name"), ssh_keys=o.texts("ssh_keys"), groups=o.texts("groups"), shell=o.text("shell"),
                password_hash=o.text("password_hash", required=False),
                uid=o.integer("uid") if "uid" in value else None)
        o.done()
        return u

    def to_json(self) -> dict[str, Any]:
        return _out({"name": self.name, "uid": self.uid, "ssh_keys": self.ssh_keys,
                     "password_hash": self.password_hash, "groups": self.groups, "shell": self.shell})


@dataclass(frozen=True, kw_only=True)
class Network:
    lan: str  # a network such as 10.42.0.0/24, or "dhcp"
    dns: tuple[str, ...]
    gateway: str | None = None

    @classmethod
    def from_json(cls, value: Any, path: str) -> Network:
        o = _Obj(value, path)
        n = cls(lan=o.text("lan"), dns=o.texts("dns"), gateway=o.text("gateway", required=False))
        o.done()
        return n

    def to_json(self) -> dict[str, Any]:
        return _out({"lan": self.lan, "gateway": self.gateway, "dns": self.dns})


@dataclass(frozen=True, kw_only=True)
class Fusion:
    namespace: str
    port: int
    seeds: tuple[str, ...]

    @classmethod
    def from_json(cls, value: Any, path: str) -> Fusion:
        o = _Obj(value, path)
        f = cls(namespace=o.text("namespace"), port=o.integer("port"), seeds=o.texts("seeds"))
        o.done()
        return f

    def to_json(self) -> dict[str, Any]:
        return _out({"namespace": self.namespace, "port": self.port, "seeds": self.seeds})


@dataclass(frozen=True, kw_only=True)
class Cluster:
    name: str
    domain: str
    timezone: str
    locale: str
    keymap: str
    users: tuple[User, ...]
    network: Network
    fusion: Fusion
    unattended: bool
    stick_secrets: str  # clear | passphrase (a usb-installer's host keys)

    @classmethod
    def from_json(cls, value: Any, path: str) -> Cluster:
        o = _Obj(value, path)
        users = o.value("users")
        if not isinstance(users, list):
            raise ModelError(f"{o.sub('users')}: expected a list, got {_kind(users)}")
        c = cls(name=o.text("name"), domain=o.text("domain"), timezone=o.text("timezone"), locale=o.text("locale"),
                keymap=o.text("keymap"),
                users=tuple(User.from_json(u, f"{o.sub('users')}[{i}]") for i, u in enumerate(users)),
                network=o.record("network", Network.from_json), fusion=o.record("fusion", Fusion.from_json),
                unattended=o.flag("unattended"), stick_secrets=o.text("stick_secrets"))
        o.done()
        return c

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "domain": self.domain, "timezone": self.timezone, "locale": self.locale,
                "keymap": self.keymap, "users": [u.to_json() for u in self.users],
                "network": self.network.to_json(), "fusion": self.fusion.to_json(), "unattended": self.unattended,
                "stick_secrets": self.stick_secrets}


@dataclass(frozen=True, kw_only=True)
class OsDef:
    """An operating system. ``system`` and ``rescue`` are Debian (distro, suite, mirror, packages,
    overlays and cmdline are set); ``iso`` is a user's ISO file (``path``; those are None)."""

    kind: str  # system | rescue | iso
    distro: str | None = None
    suite: str | None = None
    mirror: str | None = None
    packages: tuple[str, ...] | None = None
    overlays: tuple[str, ...] | None = None
    cmdline: tuple[str, ...] | None = None
    path: str | None = None
    label: str | None = None

    @property
    def is_debian(self) -> bool:
        return self.kind != "iso"

    def title(self, name: str) -> str:
        """Its boot-menu title: the label, else the name and suite."""
        if self.label:
            return self.label
        if self.kind == "rescue":
            return f"{name} (Debian {self.suite}, runs from RAM)"
        return f"{name} (Debian {self.suite})"

    @classmethod
    def from_json(cls, value: Any, path: str) -> OsDef:
        o = _Obj(value, path)
        kind = o.text("kind")
        if kind not in ("system", "rescue", "iso"):
            raise ModelError(f"{o.sub('kind')}: expected system, rescue or iso, got {kind!r}")
        debian = kind != "iso"
        d = cls(kind=kind, distro=o.text("distro", debian), suite=o.text("suite", debian),
                mirror=o.text("mirror", debian), packages=o.texts("packages", debian),
                overlays=o.texts("overlays", debian), cmdline=o.texts("cmdline", debian),
                path=o.text("path", not debian), label=o.text("label", required=False))
        o.done()
        if not debian:
            extra = [k for k in ("distro", "suite", "mirror", "packages", "overlays", "cmdline") if k in o.d]
            if extra:
                raise ModelError(f"{o.sub(extra[0])}: applies only when kind is system or rescue")
        elif d.path is not None:
            raise ModelError(f"{o.sub('path')}: applies only when kind is iso")
        return d

    def to_json(self) -> dict[str, Any]:
        return _out({"kind": self.kind, "distro": self.distro, "suite": self.suite, "mirror": self.mirror,
                     "packages": self.packages, "overlays": self.overlays, "cmdline": self.cmdline,
                     "path": self.path, "label": self.label})


@dataclass(frozen=True, kw_only=True)
class Volume:
    path: str
    disk: DiskSelector
    options: tuple[str, ...]

    @classmethod
    def from_json(cls, value: Any, path: str) -> Volume:
        o = _Obj(value, path)
        v = cls(path=o.text("path"), disk=o.open("disk"), options=o.texts("options"))
        o.done()
        return v

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "disk": copy.deepcopy(self.disk), "options": list(self.options)}


@dataclass(frozen=True, kw_only=True)
class Role:
    os: tuple[str, ...]  # boot-menu order; the first is the default
    packages: tuple[str, ...]
    overlays: tuple[str, ...]
    exports: Mapping[str, str]
    volumes: Mapping[str, Volume]
    match: HostSelector
    trust_root: tuple[str, ...]  # exports where a peer's root stays root (agent.ninep.creds)
    control: tuple[str, ...]  # roles whose hosts this role's hosts may control (agent/control.py)
    kiosk: str | None = None  # manage: the manager full-screen on the host's monitor (agent/kiosk.py)
    description: str | None = None
    extends: str | None = None  # merged away by composition; kept should a document carry it

    @classmethod
    def from_json(cls, value: Any, path: str) -> Role:
        o = _Obj(value, path)
        r = cls(extends=o.text("extends", required=False), description=o.text("description", required=False),
                os=o.texts("os"), packages=o.texts("packages"), overlays=o.texts("overlays"),
                exports=o.named("exports", _str_value), volumes=o.named("volumes", Volume.from_json),
                match=o.open("match"), trust_root=o.texts("trust_root"), control=o.texts("control"),
                kiosk=o.text("kiosk", required=False))
        o.done()
        return r

    def to_json(self) -> dict[str, Any]:
        return _out({"extends": self.extends, "description": self.description, "os": self.os,
                     "packages": self.packages, "overlays": self.overlays, "exports": dict(self.exports),
                     "trust_root": self.trust_root, "control": self.control, "kiosk": self.kiosk,
                     "volumes": {k: v.to_json() for k, v in self.volumes.items()},
                     "match": copy.deepcopy(self.match)})


@dataclass(frozen=True, kw_only=True)
class Install:
    disk: DiskSelector

    @classmethod
    def from_json(cls, value: Any, path: str) -> Install:
        o = _Obj(value, path)
        i = cls(disk=o.open("disk"))
        o.done()
        return i

    def to_json(self) -> dict[str, Any]:
        return {"disk": copy.deepcopy(self.disk)}


@dataclass(frozen=True, kw_only=True)
class Host:
    role: str
    board: str
    match: HostSelector  # added to the role's
    pin: Pin
    install: Install
    packages: tuple[str, ...]
    overlays: tuple[str, ...]
    address: str | None = None  # the fixed LAN address, "dhcp", or None when the LAN is dhcp
    extends: str | None = None  # merged away by composition; kept should a document carry it

    @property
    def lan_address(self) -> str | None:
        """The fixed LAN address; None when DHCP gives it (``address: dhcp``, a cloud host, a dhcp LAN)."""
        return None if self.address in (None, DHCP) else self.address

    @property
    def install_disk(self) -> DiskSelector:
        """The install disk selector (hardware.selectors.choose_disk evaluates it)."""
        return self.install.disk

    @classmethod
    def from_json(cls, value: Any, path: str) -> Host:
        o = _Obj(value, path)
        h = cls(extends=o.text("extends", required=False), role=o.text("role"), board=o.text("board"),
                match=o.open("match"), pin=o.open("pin"), install=o.record("install", Install.from_json),
                address=o.text("address", required=False), packages=o.texts("packages"),
                overlays=o.texts("overlays"))
        o.done()
        return h

    def to_json(self) -> dict[str, Any]:
        return _out({"extends": self.extends, "role": self.role, "board": self.board,
                     "match": copy.deepcopy(self.match), "pin": copy.deepcopy(self.pin),
                     "install": self.install.to_json(), "address": self.address, "packages": self.packages,
                     "overlays": self.overlays})


INSTALLER = "usb-installer"
DHCP = "dhcp"  # a host's address (or the LAN) given by a DHCP server
CLOUD = "cloud"  # a cloud VM's image: DHCP on the provider's network, metadata, root grown (agent/cloud.py)


@dataclass(frozen=True, kw_only=True)
class Image:
    """An image. ``hosts`` is always the list of its hosts: a usb-installer's ``hosts``, or the
    single ``host`` of a disk or cloud image (the JSON keeps its two spellings)."""

    type: str  # usb-installer | disk | cloud
    hosts: tuple[str, ...]
    size: int
    format: str  # raw | qcow2
    isos: tuple[str, ...] | None = None  # usb-installer only

    @property
    def installer(self) -> bool:
        return self.type == INSTALLER

    @classmethod
    def from_json(cls, value: Any, path: str) -> Image:
        o = _Obj(value, path)
        kind = o.text("type")
        installer = kind == INSTALLER
        if installer:
            hosts = o.texts("hosts")
            if not hosts:
                raise ModelError(f"{o.sub('hosts')}: needs at least one host")
            if "host" in o.d:
                raise ModelError(f"{o.sub('host')}: applies only to disk and cloud images (a stick has hosts)")
        else:
            hosts = (o.text("host"),)
            if "hosts" in o.d:
                raise ModelError(f"{o.sub('hosts')}: applies only to usb-installer images (this one has host)")
        img = cls(type=kind, hosts=hosts, size=o.integer("size"), format=o.text("format"),
                  isos=o.texts("isos", installer))
        o.done()
        if not installer and img.isos is not None:
            raise ModelError(f"{o.sub('isos')}: applies only to usb-installer images")
        return img

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if self.installer:
            out["hosts"] = list(self.hosts)
        else:
            (out["host"],) = self.hosts
        out.update(size=self.size, format=self.format)
        if self.isos is not None:
            out["isos"] = list(self.isos)
        return out


def _board(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ModelError(f"{path}: expected an object, got {_kind(value)}")
    return copy.deepcopy(value)


@dataclass(frozen=True, kw_only=True)
class Profile:
    """The resolved cluster profile (sections in profile order)."""

    cluster: Cluster
    oses: Mapping[str, OsDef]
    roles: Mapping[str, Role]
    hosts: Mapping[str, Host]
    images: Mapping[str, Image]
    # The profile's own machine shapes (board files' data, as testdriver/boards/ holds them): only
    # the test driver reads them, so they stay plain data here.
    boards: Mapping[str, Mapping[str, Any]]

    @property
    def name(self) -> str:
        return self.cluster.name

    # --- helpers for what callers ask of it -------------------------------------------------

    def role_of(self, host: str) -> Role:
        return self.roles[self.hosts[host].role]

    def oses_of_host(self, host: str) -> tuple[str, ...]:
        """The OSes a host boots, in boot-menu order (its role's)."""
        return self.role_of(host).os

    def oses_of_image(self, image: str | Image) -> list[str]:
        """The OSes on an image in boot-menu order: the first host's role order, then the others'."""
        img = self.images[image] if isinstance(image, str) else image
        out: list[str] = []
        for h in img.hosts:
            for os_name in self.oses_of_host(h):
                if os_name not in out:
                    out.append(os_name)
        return out

    def image_hosts(self) -> list[str]:
        """Every host some image holds, sorted."""
        return sorted({h for img in self.images.values() for h in img.hosts})

    def host_selector(self, host: str) -> tuple[HostSelector, HostSelector]:
        """The role's and the host's own ``match`` (hardware.selectors.merge_selectors joins them)."""
        h = self.hosts[host]
        return self.roles[h.role].match, h.match

    # --- JSON ---------------------------------------------------------------------------------

    @classmethod
    def from_json(cls, value: Mapping[str, Any] | str | bytes) -> Profile:
        """The model of a resolved profile: its JSON text or the decoded object. Raises
        :class:`ModelError` naming the first key that is missing, unknown or of the wrong kind."""
        if isinstance(value, (str, bytes)):
            try:
                value = json.loads(value)
            except ValueError as e:
                raise ModelError(f"profile: not JSON ({e})") from None
        o = _Obj(value, "")
        p = cls(cluster=o.record("cluster", Cluster.from_json), oses=o.named("oses", OsDef.from_json),
                roles=o.named("roles", Role.from_json), hosts=o.named("hosts", Host.from_json),
                images=o.named("images", Image.from_json), boards=o.named("boards", _board))
        o.done()
        p._check_references()
        return p

    @classmethod
    def read(cls, path: Any) -> Profile:
        """The model of a profile.json file (the builder writes etc/clusterctl/profile.json)."""
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            return cls.from_json(text)
        except ModelError as e:
            raise ModelError(f"{path}: {e}") from None

    def _check_references(self) -> None:
        for name, role in self.roles.items():
            for o in role.os:
                if o not in self.oses:
                    raise ModelError(f"roles.{name}.os: no OS {o!r}")
        for name, host in self.hosts.items():
            if host.role not in self.roles:
                raise ModelError(f"hosts.{name}.role: no role {host.role!r}")
        for name, img in self.images.items():
            for h in img.hosts:
                if h not in self.hosts:
                    raise ModelError(f"images.{name}: no host {h!r}")

    def to_json(self) -> dict[str, Any]:
        return {"cluster": self.cluster.to_json(),
                "oses": {k: v.to_json() for k, v in self.oses.items()},
                "roles": {k: v.to_json() for k, v in self.roles.items()},
                "hosts": {k: v.to_json() for k, v in self.hosts.items()},
                "images": {k: v.to_json() for k, v in self.images.items()},
                "boards": {k: copy.deepcopy(dict(v)) for k, v in self.boards.items()}}

    def dumps(self) -> str:
        """profile.json's text, as the builder writes it."""
        return json.dumps(self.to_json(), indent=1, sort_keys=True)
