"""The build plan: which stages a profile needs, what each is made from, and its cache key.

``make_plan(profile)`` executes nothing. Each :class:`Stage` declares its inputs (plain JSON
values: settings, content hashes of overlay trees and of the on-host code) and the stages it
builds on; its key is the hash of its kind, its executor's version, its inputs and its
dependencies' keys. Equal keys mean equal outputs, so a root file system is built once per
distinct OS definition (suite, mirror, package set, locale) and shared by every image using it.

Stages, per image:
  rootfs:<os>            mmdebstrap tarball (shared across images when the definition is equal)
  overlay:<image>/<os>   rendered overlay trees, users, host facts (a tar)
  rootpart:<os>          the root's ext4 partition, as a file (shared like the root itself)
  rescue:<image>/<os>    a rescue system packed into an initramfs (runs from RAM)
  esp:<image>            the EFI system partition: systemd-boot, syslinux, kernels, menus
                         (and a GRUB per ISO entry: builder/stages/isoboot.py)
  isos:<image>           a stick's ISO files in an ext4 partition (when it has ISO entries)
  image:<image>          the disk image in images/<cluster>/: partitions copied in, each OS's
                         overlay and the hosts' secrets written into its copy; .bmap, qcow2
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder import __version__
from builder.filedigest import file_digest
from builder.stages.isoboot import ISOS_LABEL, LINUX_DATA_TYPE, iso_entry_name
from builder.stages.rootfs import BASE_PACKAGES, RootfsSpec

PROJECT_ROOT = Path(__file__).resolve().parents[1]
OVERLAYS_DIR = PROJECT_ROOT / "overlays"
# The Python packages copied into every root: the host layer and the core below it (never
# builder/ or testdriver/; tests/test_layers.py checks a built root).
ONHOST_PACKAGES = ("core", "hardware", "agent")

# Bump a kind's version when its executor starts producing different output for equal inputs.
EXECUTOR_VERSIONS: dict[str, int] = {"rootfs": 1, "overlay": 1, "rootpart": 1, "rescue": 1, "esp": 1, "isos": 1,
                                     "image": 1}

IMAGE_PARTUUID_NS = uuid.UUID("3c8f2a4e-5d1b-4f67-9a0e-6b7c2d9e1f30")
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
ROOT_X86_64_TYPE = "4F68BCE3-E8CD-4C1D-96E7-FBCAF984B709"


class PlanError(ValueError):
    """The profile asks for something the builder cannot make (said plainly, exit 2)."""


@dataclass
class Stage:
    kind: str
    name: str
    inputs: dict[str, Any]
    deps: list[str] = field(default_factory=list)
    key: str = ""
    # Execution parameters derived from the profile that the key already covers via inputs.
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Plan:
    cluster: str
    profile_path: str
    stages: dict[str, Stage]  # by name, in execution order (dependencies first)
    images: dict[str, dict[str, Any]]  # image name -> {type, hosts, oses, output, format}
    warnings: list[str] = field(default_factory=list)

    def ordered(self) -> list[Stage]:
        return list(self.stages.values())


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()


def stage_key(kind: str, inputs: dict[str, Any], dep_keys: list[str]) -> str:
    h = hashlib.sha256()
    h.update(canonical({"kind": kind, "executor": EXECUTOR_VERSIONS[kind], "inputs": inputs, "deps": dep_keys}))
    return h.hexdigest()


def tree_hash(root: Path) -> str:
    """Content hash of a folder: every path, mode, symlink target and file's bytes."""
    if not root.is_dir():
        return "absent"
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
            p = Path(dirpath, name)
            rel = p.relative_to(root).as_posix()
            st = p.lstat()
            h.update(f"{rel}\0{st.st_mode:o}\0".encode())
            if p.is_symlink():
                h.update(os.readlink(p).encode())
            elif p.is_file() and not name.endswith((".pyc", ".pyo")):
                with open(p, "rb") as f:
                    h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()


def onhost_code_hash() -> str:
    return hashlib.sha256(canonical({n: tree_hash(PROJECT_ROOT / n) for n in ONHOST_PACKAGES})).hexdigest()


def onhost_version() -> str:
    """The version of the on-host code installed into roots: release plus content hash."""
    return f"{__version__}+{onhost_code_hash()[:12]}"


def partuuid(cluster: str, image: str, part: str) -> str:
    return str(uuid.uuid5(IMAGE_PARTUUID_NS, f"{cluster}/{image}/{part}"))


# -- reading the resolved profile ---------------------------------------------------------

def image_hosts(image: dict[str, Any]) -> list[str]:
    return list(image.get("hosts") or ([image["host"]] if image.get("host") else []))


def image_oses(data: dict[str, Any], image: dict[str, Any]) -> list[str]:
    """The OSes on an image in boot-menu order: the first host's role order, then the others'."""
    out: list[str] = []
    for h in image_hosts(image):
        for os_name in data["roles"][data["hosts"][h]["role"]]["os"]:
            if os_name not in out:
                out.append(os_name)
    return out


def os_title(name: str, osdef: dict[str, Any]) -> str:
    if osdef.get("label"):
        return str(osdef["label"])
    if osdef.get("kind") == "rescue":
        return f"{name} (Debian {osdef.get('suite', 'bookworm')}, runs from RAM)"
    return f"{name} (Debian {osdef.get('suite', 'bookworm')})"


def image_output(cluster: str, name: str, image: dict[str, Any], out_dir: Path) -> Path:
    ext = "qcow2" if image.get("format") == "qcow2" else "img"
    return out_dir / cluster / f"{name}.{ext}"


def resolve_format(image: dict[str, Any]) -> str:
    fmt = image.get("format")
    if fmt in ("raw", "qcow2"):
        return str(fmt)
    return "qcow2" if image.get("type") == "cloud" else "raw"


def _host_facts(data: dict[str, Any], h: str) -> dict[str, Any]:
    host = data["hosts"][h]
    return {"name": h, **{k: v for k, v in host.items() if k != "extends"}}


def _overlay_layers(data: dict[str, Any], os_name: str, hosts: list[str], per_host_root: bool
                    ) -> tuple[list[list[str]], dict[str, list[list[str]]]]:
    """Overlay folders: those laid over the root, and (installer sticks) those kept per host."""
    osdef = data["oses"][os_name]
    root: list[list[str]] = [["base", str(OVERLAYS_DIR / "base")],
                             [f"os/{os_name}", str(OVERLAYS_DIR / "os" / os_name)]]
    root += [[f"profile:{p}", p] for p in osdef.get("overlays") or []]
    per_host: dict[str, list[list[str]]] = {}
    for h in hosts:
        host = data["hosts"][h]
        role_name = host["role"]
        role = data["roles"][role_name]
        # On a stick, each host's tree is what first boot lays over the installed system: the
        # base and OS layers again (rendered for this host: hostname, network, host.json) and
        # the role's and host's own.
        layers = list(root) if not per_host_root else []
        layers += [[f"role/{role_name}", str(OVERLAYS_DIR / "role" / role_name)]]
        layers += [[f"profile:{p}", p] for p in role.get("overlays") or []]
        layers += [[f"host/{h}", str(OVERLAYS_DIR / "host" / h)]]
        layers += [[f"profile:{p}", p] for p in host.get("overlays") or []]
        per_host[h] = layers
    if per_host_root:
        (only,) = hosts
        return root + per_host[only], {}
    # The stick's own roots also run first boot (wizard + installer); the per-host trees above,
    # laid over the installed system, do not carry it.
    return [*root, ["installer", str(OVERLAYS_DIR / "installer")]], per_host


def make_plan(profile: Any, out_dir: Path | str = "images", secrets_digest: dict[str, str] | None = None,
              only: list[str] | None = None) -> Plan:
    """Declare every stage of building ``profile`` (a :class:`builder.profile.Profile`)."""
    data: dict[str, Any] = profile.data
    cluster = data["cluster"]
    cname = str(cluster["name"])
    out_root = Path(out_dir)
    stages: dict[str, Stage] = {}
    rootfs_by_spec: dict[RootfsSpec, Stage] = {}
    images: dict[str, dict[str, Any]] = {}
    warnings: list[str] = []
    code_hash = onhost_code_hash()
    addresses = {h: {"role": v["role"], "address": v.get("address")} for h, v in data["hosts"].items()}
    secrets_digest = secrets_digest or {}

    def add(stage: Stage) -> Stage:
        stage.key = stage_key(stage.kind, stage.inputs, [stages[d].key for d in stage.deps])
        stages[stage.name] = stage
        return stage

    selected = [n for n in data.get("images", {}) if not only or n in only]
    for missing in sorted(set(only or []) - set(data.get("images", {}))):
        raise PlanError(f"no image named {missing!r} in the profile (images: {', '.join(data['images'])})")

    for img_name in selected:
        image = data["images"][img_name]
        hosts = image_hosts(image)
        if not hosts:
            raise PlanError(f"images.{img_name}: names no host")
        installer = image["type"] == "usb-installer"
        oses = image_oses(data, image)
        fmt = resolve_format(image)
        os_parts: list[str] = []
        os_overlays: list[str] = []
        boot_entries: list[dict[str, Any]] = []
        iso_sources: dict[str, str] = {}  # ISO entry -> the user's file
        for os_name in oses:
            osdef = data["oses"][os_name]
            kind = osdef.get("kind", "system")
            if kind == "iso":
                if installer:
                    iso_sources[os_name] = str(osdef["path"])
                else:
                    warnings.append(f"images.{img_name}: OS {os_name!r} is an ISO, booted from a usb-installer "
                                    f"stick only; this {image['type']} image leaves it out")
                continue
            users_of_os = [h for h in hosts if os_name in data["roles"][data["hosts"][h]["role"]]["os"]]
            pkgs: set[str] = set(osdef.get("packages") or [])
            if kind == "system":
                for h in users_of_os:
                    pkgs |= set(data["roles"][data["hosts"][h]["role"]].get("packages") or [])
                    pkgs |= set(data["hosts"][h].get("packages") or [])
            spec = RootfsSpec(suite=str(osdef.get("suite", "bookworm")),
                              mirror=str(osdef.get("mirror", "http://deb.debian.org/debian")),
                              packages=tuple(sorted(pkgs)), locale=str(cluster.get("locale", "C.UTF-8")))
            rootfs = rootfs_by_spec.get(spec)
            if rootfs is None and kind == "rescue":
                # A rescue system may run from a system OS's root when that has all it asks for:
                # one mmdebstrap less (the usual case: the rescue is the default OS's suite).
                rootfs = next((st for sp, st in rootfs_by_spec.items()
                               if (sp.suite, sp.mirror, sp.locale) == (spec.suite, spec.mirror, spec.locale)
                               and set(spec.packages) <= set(sp.packages)), None)
            if rootfs is None:
                name = f"rootfs:{os_name}"
                if name in stages:
                    name = f"rootfs:{os_name}-{hashlib.sha256(canonical(spec.__dict__)).hexdigest()[:8]}"
                rootfs = add(Stage("rootfs", name, {
                    "suite": spec.suite, "mirror": spec.mirror, "packages": spec.all_packages(),
                    "locale": spec.locale, "base_packages": list(BASE_PACKAGES),
                }, params={"spec": spec}))
                rootfs_by_spec[spec] = rootfs

            root_layers, host_layers = _overlay_layers(data, os_name, users_of_os, per_host_root=not installer)
            facts_hosts = [_host_facts(data, h) for h in users_of_os]
            roles = {data["hosts"][h]["role"]: data["roles"][data["hosts"][h]["role"]] for h in users_of_os}
            single = None if installer else users_of_os[0]
            ov_inputs: dict[str, Any] = {
                "cluster": cluster, "os": {"name": os_name, **osdef}, "image": {"name": img_name, **image},
                "hosts": facts_hosts, "roles": roles, "all_hosts": addresses, "host": single,
                "layers": [[label, tree_hash(Path(p))] for label, p in root_layers],
                "host_layers": {h: [[label, tree_hash(Path(p))] for label, p in ls] for h, ls in host_layers.items()},
                "onhost_code": code_hash, "clusterctl": __version__,
            }
            # First boot matches the machine against the whole profile, and the agent reads every
            # host's exports and addresses from it: all of it is input (etc/clusterctl/profile.json).
            ov_inputs["profile"] = data
            part_uuid = partuuid(cname, img_name, os_name)
            overlay = add(Stage("overlay", f"overlay:{img_name}/{os_name}", ov_inputs, deps=[rootfs.name],
                                params={"root_layers": root_layers, "host_layers": host_layers,
                                        "os_name": os_name, "image_name": img_name, "hosts": users_of_os,
                                        "single_host": single, "installer": installer}))
            cmdline = ["console=tty0", "console=ttyS0,115200", "systemd.firstboot=no", "rw"]
            if kind == "system":
                # The partition holds the root alone, so every image and host using this root
                # shares it; the overlay is written into each image's copy (stage image).
                part_name = f"rootpart:{rootfs.name.split(':', 1)[1]}"
                part = stages.get(part_name) or add(Stage("rootpart", part_name, {
                    "fs": "ext4", "label": f"root-{os_name}"[:16],
                    "fs_uuid": str(uuid.uuid5(IMAGE_PARTUUID_NS, rootfs.key)), "headroom_mib": 512,
                }, deps=[rootfs.name]))
                os_parts.append(part.name)
                os_overlays.append(overlay.name)
                cmdline = [f"root=PARTUUID={part_uuid}", *cmdline]
            else:
                part = add(Stage("rescue", f"rescue:{img_name}/{os_name}", {"compress": "zstd"},
                                 deps=[rootfs.name, overlay.name]))
                cmdline = ["rdinit=/sbin/init", *cmdline]
            boot_entries.append({"os": os_name, "kind": kind, "title": os_title(os_name, osdef),
                                 "cmdline": " ".join([*cmdline, *(osdef.get("cmdline") or [])]),
                                 "rootfs": rootfs.name, "payload": part.name, "overlay": overlay.name,
                                 "partuuid": part_uuid})
        if not boot_entries:
            raise PlanError(f"images.{img_name}: none of its OSes can be built")
        for path in image.get("isos") or []:
            iso_sources[iso_entry_name(path)] = str(path)
        # ISO entries come last: the default entry is always one of the cluster's own systems.
        iso_fs_uuid = str(uuid.uuid5(IMAGE_PARTUUID_NS, f"{cname}/{img_name}/isos-fs"))
        for name, path in iso_sources.items():
            osdef = data["oses"].get(name) or {}
            boot_entries.append({"os": name, "kind": "iso", "title": str(osdef.get("label") or
                                                                           f"{name} (ISO {Path(path).name})"),
                                 "fs_uuid": iso_fs_uuid})
        esp = add(Stage("esp", f"esp:{img_name}", {
            "entries": [{k: v for k, v in e.items() if k not in ("rootfs", "payload", "overlay")}
                        for e in boot_entries],
            "default": boot_entries[0]["os"], "timeout_s": 3, "hidden_sectors": 2048,
        }, deps=sorted({e["rootfs"] for e in boot_entries if "rootfs" in e}
                       | {e["payload"] for e in boot_entries if e["kind"] == "rescue"}),
            params={"entries": boot_entries}))
        output = image_output(cname, img_name, {**image, "format": fmt}, out_root)
        parts = [{"name": "ESP", "stage": esp.name, "type": ESP_TYPE, "uuid": partuuid(cname, img_name, "esp"),
                  "legacy_boot": True}]
        for e in boot_entries:
            if e["kind"] == "system":
                parts.append({"name": f"root-{e['os']}", "stage": e["payload"], "overlay": e["overlay"],
                              "type": ROOT_X86_64_TYPE, "uuid": e["partuuid"], "os": e["os"]})
        iso_facts: list[dict[str, Any]] = []
        if iso_sources:
            for name, path in iso_sources.items():
                iso_facts.append({"entry": name, "file": Path(path).name, "size": os.path.getsize(path),
                                  "sha256": file_digest(Path(path))})
            isos = add(Stage("isos", f"isos:{img_name}", {"files": iso_facts, "fs_uuid": iso_fs_uuid,
                                                          "label": ISOS_LABEL}, params={"sources": iso_sources}))
            parts.append({"name": "isos", "stage": isos.name, "type": LINUX_DATA_TYPE,
                          "uuid": partuuid(cname, img_name, "isos")})
        add(Stage("image", f"image:{img_name}", {
            "size": int(image["size"]), "format": fmt, "type": image["type"], "partitions": parts,
            "disk_uuid": partuuid(cname, img_name, "disk"), "output": str(output),
            "secrets": {h: secrets_digest.get(h, "to generate")
                        for h in [*hosts, *([f"{img_name}.installer"] if installer else [])]},
            # Every image carries the cluster's register (hosts.json: public mesh facts of all hosts).
            "register": secrets_digest.get("hosts.json", "to generate"),
        }, deps=[esp.name, *dict.fromkeys(os_parts), *os_overlays, *([f"isos:{img_name}"] if iso_sources else [])],
            params={"image_name": img_name, "hosts": hosts, "installer": installer}))
        images[img_name] = {"type": image["type"], "hosts": hosts,
                            "oses": [e["os"] for e in boot_entries if e["kind"] != "iso"],
                            "isos": iso_facts, "output": str(output), "format": fmt}
    plan = Plan(cluster=cname, profile_path=str(profile.path), stages=stages, images=images, warnings=warnings)
    add_tool_versions(plan)
    return plan


def add_tool_versions(plan: Plan) -> None:
    """Tool versions and boot loader binaries join the stage inputs: a new mmdebstrap, mke2fs or
    systemd-boot may make different output from equal settings. (Asking a tool its version is
    the only thing planning runs.)"""
    from builder.stages.esp import boot_files_digest
    from builder.stages.isoboot import grub_files_digest
    from builder.tools import tool_version

    tools = {"rootfs": ["mmdebstrap"], "rootpart": ["mke2fs"], "esp": ["mkfs.vfat", "syslinux"],
             "isos": ["mke2fs"], "image": ["sfdisk", "debugfs", "qemu-img"]}
    for s in plan.ordered():
        if s.kind in tools:
            s.inputs["tools"] = {t: tool_version(t) for t in tools[s.kind]}
        if s.kind == "esp":
            s.inputs["boot_files"] = boot_files_digest()
            if any(e["kind"] == "iso" for e in s.inputs["entries"]):
                s.inputs["tools"]["grub-mkimage"] = tool_version("grub-mkimage")
                s.inputs["boot_files"].update(grub_files_digest())
        s.key = stage_key(s.kind, s.inputs, [plan.stages[d].key for d in s.deps])


def describe_plan(profile: Any, cache_dir: str | os.PathLike[str] | None = None,
                  out_dir: Path | str = "images") -> list[dict[str, Any]]:
    """The stages as rows for ``clusterctl plan``: name, kind, key, deps, and whether cached."""
    from builder.cache import StageCache
    from builder.secrets import secret_owners, secrets_digest

    digest = secrets_digest(Path(out_dir), profile.name, secret_owners(profile.data))
    plan = make_plan(profile, out_dir=out_dir, secrets_digest=digest)
    cache = StageCache(Path(cache_dir) if cache_dir else None)
    try:
        rows = []
        for s in plan.ordered():
            cached = image_is_current(cache, plan.cluster, s) if s.kind == "image" else cache.has(s.key)
            rows.append({"name": s.name, "kind": s.kind, "key": s.key, "deps": s.deps, "cached": cached})
        return rows
    finally:
        cache.close()


def image_is_current(cache: Any, cluster: str, stage: Stage) -> bool:
    """An image stage is 'cached' when its output file is the one this key produced."""
    rec = cache.record(stage.key)
    out = Path(stage.inputs["output"])
    if rec is None or not out.exists():
        return False
    st = out.stat()
    return bool(rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns)
