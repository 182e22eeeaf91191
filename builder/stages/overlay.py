"""Overlays: Jinja2 file trees rendered with the resolved profile into one tarball.

Layers apply in order (base, os/<name>, the profile's OS overlays, then role and host
layers); a later layer's file replaces an earlier one's. Files named ``*.j2`` are templates
(rendered, suffix dropped; a template that calls ``skip_file()`` is left out, for files that
only some hosts have); others are copied as they are. Every entry is owned by root with
mode 0644 (0755 when the source is executable, 0755 for folders) unless the layer's
``overlay.yaml`` says otherwise::

    modes: {etc/sudoers.d/admin: {mode: "0440"}, var/lib/x: {mode: "0700", owner: 0, group: 0}}
    links: {etc/localtime: "/usr/share/zoneinfo/{{ cluster.timezone }}"}

On a usb-installer the role and host layers are rendered per host under
/usr/lib/clusterctl/hosts/<host>/root/ for first boot to lay over the installed system.
"""

from __future__ import annotations

import io
import ipaddress
import json
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import yaml

from builder.stages.kind import StageContext, StageKind
from builder.stages.rootfs import read_member_bytes
from builder.stages.users import add_users

if TYPE_CHECKING:
    from builder.plan import Stage
from core.model import CLOUD, DHCP, Profile

META_FILE = "overlay.yaml"
FIXED_MTIME = 1700000000  # reproducible tarballs: same inputs, same bytes


@dataclass
class Entry:
    kind: str  # "file" | "dir" | "link"
    data: bytes = b""
    target: str = ""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0


class OverlayError(ValueError):
    pass


class SkipFile(Exception):
    """Raised by a template's ``skip_file()``: this host has no such file."""


def _skip_file() -> str:
    raise SkipFile


def _env(layer: Path) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(layer)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False, trim_blocks=True,
                             lstrip_blocks=True)
    env.globals["skip_file"] = _skip_file
    return env


def _mode(text: Any, where: str) -> int:
    try:
        return int(str(text), 8)
    except ValueError:
        raise OverlayError(f"{where}: mode {text!r} is not an octal number such as \"0644\"") from None


def render_layer(layer: Path, context: dict[str, Any], entries: dict[str, Entry], prefix: str = "") -> None:
    """Add one overlay folder's files to ``entries`` (path inside the root → entry)."""
    if not layer.is_dir():
        return
    meta: dict[str, Any] = {}
    if (layer / META_FILE).is_file():
        meta = yaml.safe_load((layer / META_FILE).read_text()) or {}
    env = _env(layer)
    for dirpath, dirnames, filenames in os.walk(layer):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(layer)
        for d in dirnames:
            rel = (rel_dir / d).as_posix()
            if os.path.islink(os.path.join(dirpath, d)):
                entries[prefix + rel] = Entry("link", target=os.readlink(os.path.join(dirpath, d)), mode=0o777)
            else:
                entries.setdefault(prefix + rel, Entry("dir", mode=0o755))
        for f in sorted(filenames):
            src = Path(dirpath, f)
            rel = (rel_dir / f).as_posix()
            if rel == META_FILE or f.endswith((".pyc", ".pyo")):
                continue
            if src.is_symlink():
                entries[prefix + rel] = Entry("link", target=os.readlink(src), mode=0o777)
                continue
            exec_bit = bool(src.stat().st_mode & stat.S_IXUSR)
            if f.endswith(".j2"):
                rel = rel[:-3]
                try:
                    data = env.get_template((rel_dir / f).as_posix()).render(**context).encode()
                except SkipFile:
                    entries.pop(prefix + rel, None)  # nor an earlier layer's version of it
                    continue
                except jinja2.TemplateError as err:
                    raise OverlayError(f"{src}: {err}") from err
            else:
                data = src.read_bytes()
            entries[prefix + rel] = Entry("file", data=data, mode=0o755 if exec_bit else 0o644)
    for rel, target in (meta.get("links") or {}).items():
        rendered = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(str(target)).render(**context)
        entries[prefix + rel] = Entry("link", target=rendered, mode=0o777)
    for rel, spec in (meta.get("modes") or {}).items():
        e = entries.get(prefix + rel)
        if e is None:
            raise OverlayError(f"{layer / META_FILE}: modes names {rel!r}, which the layer does not have")
        e.mode = _mode(spec.get("mode", oct(e.mode)), f"{layer / META_FILE}: {rel}")
        e.uid, e.gid = int(spec.get("owner", 0)), int(spec.get("group", 0))


def add_tree(src: Path, dest: str, entries: dict[str, Entry]) -> None:
    """Copy a Python package (the on-host code) into the root, as plain files."""
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        rel_dir = Path(dirpath).relative_to(src)
        entries[f"{dest}/{rel_dir.as_posix()}".rstrip("/.").rstrip("/")] = Entry("dir", mode=0o755)
        for f in sorted(filenames):
            if f.endswith((".pyc", ".pyo")):
                continue
            entries[f"{dest}/{(rel_dir / f).as_posix()}"] = Entry("file", data=Path(dirpath, f).read_bytes())


def _parents(entries: dict[str, Entry]) -> None:
    for path in list(entries):
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            entries.setdefault("/".join(parts[:i]), Entry("dir", mode=0o755))


def write_tar(entries: dict[str, Entry], out: Path) -> None:
    _parents(entries)
    with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as tar:
        for path in sorted(entries):
            e = entries[path]
            info = tarfile.TarInfo("./" + path)
            info.mode, info.uid, info.gid, info.mtime = e.mode, e.uid, e.gid, FIXED_MTIME
            info.uname = info.gname = ""
            if e.kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif e.kind == "link":
                info.type, info.linkname = tarfile.SYMTYPE, e.target
                tar.addfile(info)
            else:
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))


def template_context(data: dict[str, Any], os_name: str, image_name: str, host: str | None,
                     installer_hosts: list[str], version: str) -> dict[str, Any]:
    cluster = data["cluster"]
    lan = cluster["network"]["lan"]
    prefix = ipaddress.ip_network(lan).prefixlen if lan != DHCP else None
    hostdef = data["hosts"][host] if host else None
    role = hostdef["role"] if hostdef else None
    # A fixed address, else None: DHCP gives it (address: dhcp, a cloud host, a dhcp LAN).
    address = hostdef.get("address") if hostdef and hostdef.get("address") != DHCP else None
    image_type = data["images"][image_name]["type"]
    facts = {"cluster": cluster["name"], "host": host, "role": role, "os": os_name,
             "suite": data["oses"][os_name].get("suite"), "image": image_name,
             "image_type": image_type, "candidates": installer_hosts,
             "address": address, "clusterctl_version": version}
    return {
        "cluster": cluster, "oses": data["oses"], "os": {"name": os_name, **data["oses"][os_name]},
        "image": {"name": image_name, **data["images"][image_name]},
        "host": {"name": host, **hostdef} if hostdef else None,
        "role": {"name": role, **data["roles"][role]} if role else None,
        "hosts": data["hosts"], "roles": data["roles"], "lan_prefix": prefix,
        # A fixed LAN address goes on the bond of the host's ports (overlays/base/etc/systemd/network).
        "lan_bond": bool(address and prefix),
        # The cluster's DNS servers are the home LAN's: a cloud VM uses its provider's (from DHCP).
        "lan_dns": [] if image_type == CLOUD else list(cluster["network"].get("dns") or []),
        # Hosts with a fixed LAN address, for /etc/hosts.
        "lan_addresses": {n: h["address"] for n, h in data["hosts"].items() if h.get("address") not in (None, DHCP)},
        "hostname": host or f"{cluster['name']}-installer", "facts": facts, "facts_json": json.dumps(facts, indent=2),
    }


def build_overlay(profile: Profile | dict[str, Any], params: dict[str, Any], accounts_files: dict[str, str],
                  onhost: dict[str, Path], version: str, out: Path) -> dict[str, Any]:
    """Render the overlay of one OS on one image into the tarball ``out``.

    ``profile`` is the resolved profile: the model, or its JSON (read into the model here, so a
    profile.json that host code could not read back is never written)."""
    model = profile if isinstance(profile, Profile) else Profile.from_json(profile)
    data = model.to_json()
    os_name, image_name = params["os_name"], params["image_name"]
    host = params["single_host"]
    candidates = params["hosts"] if params["installer"] else []
    ctx = template_context(data, os_name, image_name, host, candidates, version)
    entries: dict[str, Entry] = {}
    for _label, layer in params["root_layers"]:
        render_layer(Path(layer), ctx, entries)
    for h, layers in params["host_layers"].items():
        hctx = template_context(data, os_name, image_name, h, candidates, version)
        for _label, layer in layers:
            render_layer(Path(layer), hctx, entries, prefix=f"usr/lib/clusterctl/hosts/{h}/root/")
    for name, src in onhost.items():
        add_tree(src, f"usr/lib/clusterctl/{name}", entries)
    entries["usr/lib/clusterctl/VERSION"] = Entry("file", data=(version + "\n").encode())
    # First boot matches against the whole profile; the agent reads exports, addresses and
    # fusion settings of every host from it.
    entries["etc/clusterctl/profile.json"] = Entry("file", data=model.dumps().encode(), mode=0o640)
    files, accounts = add_users(accounts_files, data["cluster"]["users"])
    for path, text in files.items():
        shadowish = path in ("etc/shadow", "etc/gshadow")
        entries[path] = Entry("file", data=text.encode(), mode=0o640 if shadowish else 0o644,
                              gid=42 if shadowish else 0)  # Debian's shadow group
    for a in accounts:
        home = a.home.lstrip("/")
        entries[home] = Entry("dir", mode=0o700, uid=a.uid, gid=a.gid)
        if a.ssh_keys:
            entries[f"{home}/.ssh"] = Entry("dir", mode=0o700, uid=a.uid, gid=a.gid)
            entries[f"{home}/.ssh/authorized_keys"] = Entry(
                "file", data=("\n".join(a.ssh_keys) + "\n").encode(), mode=0o600, uid=a.uid, gid=a.gid)
    write_tar(entries, out)
    return {"files": sum(1 for e in entries.values() if e.kind == "file"),
            "bytes": sum(len(e.data) for e in entries.values()),
            "users": {a.name: a.uid for a in accounts}}


def run(ctx: StageContext, stage: Stage, work: Path, log: Path) -> tuple[dict[str, Any], Path]:
    rootfs = ctx.dep(stage, "rootfs")
    assert rootfs.path is not None
    accounts = {name: read_member_bytes(rootfs.path, where).decode()
                for name, where in rootfs.record["accounts"].items()}
    out = work / "overlay.tar"
    rec = build_overlay(ctx.data, stage.params, accounts, ctx.onhost, ctx.version, out)
    return rec, out


KIND = StageKind(name="overlay", version=1, tools=(), run=run)
