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
  bootchain              Debian's signed shim and GRUB (Secure Boot), fetched once for all images
  esp:<image>            the EFI system partition: shim+GRUB, syslinux, kernels, menus
                         (and a GRUB script per ISO entry: builder/stages/isoboot.py)
  isos:<image>           a stick's ISO files in an ext4 partition (when it has ISO entries)
  claims:<image>         a stick's CLUSTER partition (FAT) for the claim ledger (usb-installers)
  image:<image>          the disk image in images/<cluster>/: partitions copied in, each OS's
                         overlay and the hosts' secrets written into its copy; .bmap, qcow2
                         (compressed for cloud images)
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
from builder.stages.claims import SIZE_MIB as CLAIMS_SIZE_MIB
from builder.stages.isoboot import ISOS_LABEL, iso_entry_name, iso_kernels_signed
from builder.stages.registry import KINDS
from builder.stages.rootfs import BASE_PACKAGES, RootfsSpec
from core.disk.gpt import BASIC_DATA_TYPE, CLAIMS_NAME, ESP_TYPE, LINUX_DATA_TYPE, ROOT_X86_64_TYPE
from core.model import CLOUD, Image
from core.model import Profile as ProfileModel

PROJECT_ROOT = Path(__file__).resolve().parents[1]
OVERLAYS_DIR = PROJECT_ROOT / "overlays"
# The Python packages copied into every root: the host layer and the core below it (never
# builder/ or testdriver/; tests/test_layers.py checks a built root).
ONHOST_PACKAGES = ("core", "hardware", "agent")

IMAGE_PARTUUID_NS = uuid.UUID("3c8f2a4e-5d1b-4f67-9a0e-6b7c2d9e1f30")


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
    """The kind's executor version (builder/stages/registry.py) is part of the key: bumping it
    rebuilds that kind's stages and what depends on them."""
    h = hashlib.sha256()
    h.update(canonical({"kind": kind, "executor": KINDS[kind].version, "inputs": inputs, "deps": dep_keys}))
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


# -- reading the resolved profile (core.model) ---------------------------------------------

def image_output(cluster: str, name: str, image: Image, out_dir: Path) -> Path:
    ext = "qcow2" if image.format == "qcow2" else "img"
    return out_dir / cluster / f"{name}.{ext}"


def _overlay_layers(model: ProfileModel, os_name: str, hosts: list[str], per_host_root: bool, cloud: bool = False
                    ) -> tuple[list[list[str]], dict[str, list[list[str]]]]:
    """Overlay folders: those laid over the root, and (installer sticks) those kept per host.
    A cloud image's root also gets the cloud layer (metadata, root growth) before the role's
    and host's, which may override it."""
    osdef = model.oses[os_name]
    root: list[list[str]] = [["base", str(OVERLAYS_DIR / "base")],
                             [f"os/{os_name}", str(OVERLAYS_DIR / "os" / os_name)]]
    if cloud:
        root.append(["cloud", str(OVERLAYS_DIR / "cloud")])
    root += [[f"profile:{p}", p] for p in osdef.overlays or ()]
    per_host: dict[str, list[list[str]]] = {}
    for h in hosts:
        host = model.hosts[h]
        role_name = host.role
        role = model.roles[role_name]
        # On a stick, each host's tree is what first boot lays over the installed system: the
        # base and OS layers again (rendered for this host: hostname, network, host.json) and
        # the role's and host's own.
        layers = list(root) if not per_host_root else []
        layers += [[f"role/{role_name}", str(OVERLAYS_DIR / "role" / role_name)]]
        layers += [[f"profile:{p}", p] for p in role.overlays]
        layers += [[f"host/{h}", str(OVERLAYS_DIR / "host" / h)]]
        layers += [[f"profile:{p}", p] for p in host.overlays]
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
    model: ProfileModel = profile.model
    data: dict[str, Any] = profile.data  # stage inputs are its plain JSON (equal to model.to_json())
    cluster = data["cluster"]
    cname = model.cluster.name
    out_root = Path(out_dir)
    stages: dict[str, Stage] = {}
    rootfs_by_spec: dict[RootfsSpec, Stage] = {}
    images: dict[str, dict[str, Any]] = {}
    warnings: list[str] = []
    code_hash = onhost_code_hash()
    addresses = {h: {"role": v.role, "address": v.address} for h, v in model.hosts.items()}
    secrets_digest = secrets_digest or {}

    def add(stage: Stage) -> Stage:
        stage.key = stage_key(stage.kind, stage.inputs, [stages[d].key for d in stage.deps])
        stages[stage.name] = stage
        return stage

    selected = [n for n in model.images if not only or n in only]
    for missing in sorted(set(only or []) - set(model.images)):
        raise PlanError(f"no image named {missing!r} in the profile (images: {', '.join(model.images)})")

    for img_name in selected:
        img = model.images[img_name]
        image = data["images"][img_name]
        hosts = list(img.hosts)
        if not hosts:
            raise PlanError(f"images.{img_name}: names no host")
        installer = img.installer
        if installer and model.cluster.stick_secrets == "clear":
            warnings.append(f"images.{img_name}: this usb-installer stick holds the private keys of "
                            f"{', '.join(hosts)} in the clear (ssh host keys, cluster identity, WireGuard): "
                            "whoever has the stick can join the cluster as any of them. "
                            "Set cluster.stick_secrets: passphrase to seal them")
        oses = model.oses_of_image(img)
        fmt = img.format
        os_parts: list[str] = []
        os_overlays: list[str] = []
        boot_entries: list[dict[str, Any]] = []
        iso_sources: dict[str, str] = {}  # ISO entry -> the user's file
        for os_name in oses:
            osm = model.oses[os_name]
            osdef = data["oses"][os_name]
            kind = osm.kind
            if not osm.is_debian:
                if installer:
                    iso_sources[os_name] = str(osm.path)
                else:
                    warnings.append(f"images.{img_name}: OS {os_name!r} is an ISO, booted from a usb-installer "
                                    f"stick only; this {img.type} image leaves it out")
                continue
            users_of_os = [h for h in hosts if os_name in model.oses_of_host(h)]
            pkgs: set[str] = set(osm.packages or ())
            if kind == "system":
                for h in users_of_os:
                    pkgs |= set(model.role_of(h).packages)
                    pkgs |= set(model.hosts[h].packages)
            spec = RootfsSpec(suite=str(osm.suite), mirror=str(osm.mirror), packages=tuple(sorted(pkgs)),
                              locale=model.cluster.locale)
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

            root_layers, host_layers = _overlay_layers(model, os_name, users_of_os, per_host_root=not installer,
                                                       cloud=img.type == CLOUD)
            facts_hosts = [{"name": h, **data["hosts"][h]} for h in users_of_os]
            roles = {model.hosts[h].role: data["roles"][model.hosts[h].role] for h in users_of_os}
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
            boot_entries.append({"os": os_name, "kind": kind, "title": osm.title(os_name),
                                 "cmdline": " ".join([*cmdline, *(osm.cmdline or ())]),
                                 "rootfs": rootfs.name, "payload": part.name, "overlay": overlay.name,
                                 "partuuid": part_uuid})
        if not boot_entries:
            raise PlanError(f"images.{img_name}: none of its OSes can be built")
        for path in img.isos or ():
            iso_sources[iso_entry_name(path)] = str(path)
        # ISO entries come last: the default entry is always one of the cluster's own systems.
        iso_fs_uuid = str(uuid.uuid5(IMAGE_PARTUUID_NS, f"{cname}/{img_name}/isos-fs"))
        for name, path in iso_sources.items():
            iso_os = model.oses.get(name)  # an ISO OS of the profile, or one of the image's isos
            title = (iso_os.label if iso_os else None) or f"{name} (ISO {Path(path).name})"
            signed = iso_kernels_signed(Path(path))
            if signed is False:
                title += " [unsigned: Secure Boot off]"
            boot_entries.append({"os": name, "kind": "iso", "title": title, "fs_uuid": iso_fs_uuid,
                                 "kernel_signed": signed})
        chain = stages.get("bootchain") or add(Stage("bootchain", "bootchain", {}))
        esp = add(Stage("esp", f"esp:{img_name}", {
            "entries": [{k: v for k, v in e.items() if k not in ("rootfs", "payload", "overlay")}
                        for e in boot_entries],
            "default": boot_entries[0]["os"], "timeout_s": 3, "hidden_sectors": 2048,
        }, deps=[chain.name, *sorted({e["rootfs"] for e in boot_entries if "rootfs" in e}
                                     | {e["payload"] for e in boot_entries if e["kind"] == "rescue"})],
            params={"entries": boot_entries}))
        output = image_output(cname, img_name, img, out_root)
        parts = [{"name": "ESP", "stage": esp.name, "type": ESP_TYPE, "uuid": partuuid(cname, img_name, "esp"),
                  "legacy_boot": True}]
        for e in boot_entries:
            if e["kind"] == "system":
                parts.append({"name": f"root-{e['os']}", "stage": e["payload"], "overlay": e["overlay"],
                              "type": ROOT_X86_64_TYPE, "uuid": e["partuuid"], "os": e["os"]})
        if installer:
            # Which box became which host: first boot keeps the ledger here (agent/firstboot/claims.py).
            # Before the ISOs, which stay last (the largest, and optional).
            claims = add(Stage("claims", f"claims:{img_name}", {
                "label": CLAIMS_NAME, "size_mib": CLAIMS_SIZE_MIB,
                "volume_id": uuid.uuid5(IMAGE_PARTUUID_NS, f"{cname}/{img_name}/claims-fs").hex[:8]}))
            parts.append({"name": CLAIMS_NAME, "stage": claims.name, "type": BASIC_DATA_TYPE,
                          "uuid": partuuid(cname, img_name, "claims")})
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
            "size": img.size, "format": fmt, "type": img.type, "partitions": parts,
            "disk_uuid": partuuid(cname, img_name, "disk"), "output": str(output),
            "secrets": {h: secrets_digest.get(h, "to generate")
                        for h in [*hosts, *([f"{img_name}.installer"] if installer else [])]},
            # Every image carries the cluster's register (hosts.json: public mesh facts of all hosts).
            "register": secrets_digest.get("hosts.json", "to generate"),
            # A stick's hosts' keys: in the clear, or sealed under this passphrase's key (a verifier).
            **({"stick_secrets": secrets_digest.get("stick", model.cluster.stick_secrets)} if installer else {}),
            # A cloud image is uploaded: qemu-img compresses its clusters (only its key changes).
            **({"compress": True} if img.type == CLOUD and fmt == "qcow2" else {}),
        }, deps=[esp.name, *dict.fromkeys(os_parts), *os_overlays, *([f"isos:{img_name}"] if iso_sources else []),
                 *([f"claims:{img_name}"] if installer else [])],
            params={"image_name": img_name, "hosts": hosts, "installer": installer}))
        images[img_name] = {"type": img.type, "hosts": hosts,
                            "oses": [e["os"] for e in boot_entries if e["kind"] != "iso"],
                            "isos": iso_facts, "output": str(output), "format": fmt}
    plan = Plan(cluster=cname, profile_path=str(profile.path), stages=stages, images=images, warnings=warnings)
    add_tool_versions(plan)
    return plan


def add_tool_versions(plan: Plan) -> None:
    """Tool versions and boot loader binaries join the stage inputs: a new mmdebstrap, mke2fs or
    systemd-boot may make different output from equal settings. (Asking a tool its version is
    the only thing planning runs.) Each kind declares its tools and extra inputs (its module
    under builder/stages/)."""
    from builder.tools import tool_version

    for s in plan.ordered():
        kind = KINDS[s.kind]
        tools = kind.tools_for(s)
        if tools:
            s.inputs["tools"] = {t: tool_version(t) for t in tools}
        s.inputs.update(kind.inputs_for(s))
        s.key = stage_key(s.kind, s.inputs, [plan.stages[d].key for d in s.deps])


def describe_plan(profile: Any, cache_dir: str | os.PathLike[str] | None = None,
                  out_dir: Path | str = "images") -> list[dict[str, Any]]:
    """The stages as rows for ``clusterctl plan``: name, kind, key, deps, and whether cached."""
    from builder.cache import StageCache
    from builder.ids import settle_ids
    from builder.secrets import secret_owners, secrets_digest

    settle_ids(profile, out_dir, write=False)  # the ids a build would give: the same keys
    digest = secrets_digest(Path(out_dir), profile.name, secret_owners(profile.model))
    plan = make_plan(profile, out_dir=out_dir, secrets_digest=digest)
    cache = StageCache(Path(cache_dir) if cache_dir else None)
    try:
        rows = []
        for s in plan.ordered():
            cached = KINDS[s.kind].current(cache, s)
            rows.append({"name": s.name, "kind": s.kind, "key": s.key, "deps": s.deps, "cached": cached})
        return rows
    finally:
        cache.close()
