"""Executing a plan: each stage is reused from the cache when its key is there, else built.

Outputs go to the cache only when whole (builder/cache.py); images are assembled under a
temporary name and renamed when whole; a lock on the cache keeps two builds from sharing
scratch space. ``--explain`` reasons come from comparing a stage's inputs with those it had
the last time it was built under the same name.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.cache import StageCache
from builder.plan import ONHOST_PACKAGES, Plan, Stage, image_is_current, make_plan, onhost_version
from builder.report import Reporter
from builder.secrets import (
    IDENTITY_IN_ROOT,
    STICK_HOSTS,
    ca_dir_for,
    ensure_host_identity,
    ensure_host_secrets,
    host_secret_files,
    identity_dir,
    identity_files,
    image_host_names,
    installer_identity,
    register_bytes,
    secret_owners,
    secrets_digest,
)
from builder.stages import esp as esp_stage
from builder.stages import ext4edit, isoboot
from builder.stages import image as image_stage
from builder.stages.overlay import build_overlay
from builder.stages.rescue import build_rescue
from builder.stages.rootfs import build_rootfs, read_member, read_member_bytes
from builder.stages.rootpart import build_rootpart, partition_size

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class BuildError(RuntimeError):
    def __init__(self, stage: str, message: str, log: Path | None) -> None:
        super().__init__(f"stage {stage} failed: {message}")
        self.stage, self.message, self.log = stage, message, log


class CacheBusy(RuntimeError):
    pass


@dataclass
class Result:
    stage: Stage
    record: dict[str, Any]
    path: Path | None
    reused: bool
    seconds: float
    reason: str


@dataclass
class BuildOutcome:
    plan: Plan
    results: dict[str, Result] = field(default_factory=dict)
    manifest: Path | None = None


def _pairs_to_dict(v: Any) -> Any:
    if isinstance(v, list) and v and all(isinstance(x, list) and len(x) == 2 and isinstance(x[0], str) for x in v):
        return {x[0]: x[1] for x in v}
    return v


def diff_inputs(old: Any, new: Any, path: str = "", depth: int = 0) -> list[str]:
    """Where two input documents differ, as short paths (``layers.base``, ``hosts``)."""
    old, new = _pairs_to_dict(old), _pairs_to_dict(new)
    if old == new:
        return []
    if isinstance(old, dict) and isinstance(new, dict) and depth < 3:
        out: list[str] = []
        for k in sorted(set(old) | set(new), key=str):
            out += diff_inputs(old.get(k), new.get(k), f"{path}.{k}" if path else str(k), depth + 1)
        return out
    return [path or "(all)"]


class Builder:
    def __init__(self, profile: Any, *, out_dir: Path, cache: StageCache, reporter: Reporter,
                 images: list[str] | None = None, ca_dir: Path | None = None) -> None:
        self.profile = profile
        self.data: dict[str, Any] = profile.data
        self.out_dir = out_dir
        self.cache = cache
        self.reporter = reporter
        self.only = images
        self.cluster_dir = out_dir / profile.name
        self.logs = self.cluster_dir / "logs"
        self.version = onhost_version()
        self.results: dict[str, Result] = {}
        self.ca_dir = ca_dir_for(profile.name, ca_dir)

    # -- plan --------------------------------------------------------------------------
    def plan(self) -> Plan:
        hosts = secret_owners(self.data)
        for h in hosts:
            ensure_host_secrets(self.out_dir, self.profile.name, h)
        # The agent's identity, per host (a stick's own system has none: its agent stays idle).
        for h in image_host_names(self.data):
            ensure_host_identity(self.out_dir, self.profile.name, h, self.ca_dir)
        plan = make_plan(self.profile, out_dir=self.out_dir, only=self.only,
                         secrets_digest=secrets_digest(self.out_dir, self.profile.name, hosts))
        return plan

    # -- running -------------------------------------------------------------------------
    def run(self) -> BuildOutcome:
        self.cluster_dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        lock = open(self.cache.dir / "build.lock", "w")  # noqa: SIM115 (held for the whole build)
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise CacheBusy(f"another build is using the cache {self.cache.dir}; try again when it "
                                "ends, or use --cache-dir") from None
            # Whatever an earlier, killed build left half-made is garbage now.
            self.cache.clean_stale_work()
            for p in self.cluster_dir.glob(".*.partial*"):
                p.unlink(missing_ok=True)
            plan = self.plan()
            for w in plan.warnings:
                self.reporter.note(f"warning: {w}")
            outcome = BuildOutcome(plan)
            for stage in plan.ordered():
                outcome.results[stage.name] = self._stage(plan, stage)
            outcome.manifest = self._manifest(plan)
            return outcome
        finally:
            lock.close()

    def _reason(self, stage: Stage) -> str:
        last = self.cache.last(self.profile.name, stage.name)
        if last is None:
            return "not built before"
        if last.get("key") == stage.key:
            return "same inputs as last time, but the cache no longer holds the result"
        changed = diff_inputs(last.get("inputs"), stage.inputs)
        dep_changed = [d for d in stage.deps if (last.get("deps") or {}).get(d) != self.results[d].stage.key]
        parts = []
        if changed:
            parts.append("changed: " + ", ".join(changed[:6]) + (" …" if len(changed) > 6 else ""))
        if dep_changed:
            parts.append("rebuilt dependency: " + ", ".join(dep_changed))
        return "; ".join(parts) or "executor version changed"

    def _stage(self, plan: Plan, stage: Stage) -> Result:
        t0 = time.monotonic()
        current = (image_is_current(self.cache, plan.cluster, stage) if stage.kind == "image"
                   else self.cache.has(stage.key))
        if current:
            rec = self.cache.record(stage.key) or {}
            res = Result(stage, rec, self.cache.path(stage.key) if rec.get("file") else None, True,
                         time.monotonic() - t0, f"cached, key {stage.key[:12]}")
            self.results[stage.name] = res
            self.reporter.done(stage.name, res.seconds, True, res.reason, stage.key)
            return res
        reason = self._reason(stage)
        self.reporter.start(stage.name, reason)
        log = self.logs / f"{stage.name.replace(':', '_').replace('/', '_')}.log"
        log.write_text(f"# stage {stage.name} key {stage.key}\n# why: {reason}\n")
        work = self.cache.workdir(stage.name)
        try:
            record, output = getattr(self, f"_run_{stage.kind}")(plan, stage, work, log)
            self.cache.commit(stage.key, {**record, "kind": stage.kind, "name": stage.name}, output)
        except KeyboardInterrupt:
            self.reporter.failed(stage.name, "interrupted", str(log))
            raise
        except Exception as err:
            self.reporter.failed(stage.name, str(err), str(log))
            raise BuildError(stage.name, str(err), log) from err
        finally:
            shutil.rmtree(work, ignore_errors=True)
        self.cache.remember(self.profile.name, stage.name, {
            "key": stage.key, "inputs": stage.inputs, "deps": {d: self.results[d].stage.key for d in stage.deps}})
        rec = self.cache.record(stage.key) or {}
        res = Result(stage, rec, self.cache.path(stage.key) if output is not None else None, False,
                     time.monotonic() - t0, reason)
        self.results[stage.name] = res
        self.reporter.done(stage.name, res.seconds, False, reason, stage.key)
        return res

    def _sink(self, name: str) -> Any:
        return lambda line: self.reporter.line(name, line)

    def _dep(self, stage: Stage, kind: str) -> Result:
        return next(self.results[d] for d in stage.deps if self.results[d].stage.kind == kind)

    # -- executors: each returns (record, output file or None) -----------------------------
    def _run_rootfs(self, plan: Plan, stage: Stage, work: Path, log: Path) -> tuple[dict[str, Any], Path]:
        out = work / "rootfs.tar"
        rec = build_rootfs(stage.params["spec"], out, log, self._sink(stage.name))
        if not rec["kernels"]:
            raise RuntimeError("the root file system has no kernel in /boot")
        return rec, out

    def _run_overlay(self, plan: Plan, stage: Stage, work: Path, log: Path) -> tuple[dict[str, Any], Path]:
        rootfs = self._dep(stage, "rootfs")
        assert rootfs.path is not None
        accounts = {name: read_member_bytes(rootfs.path, where).decode()
                    for name, where in rootfs.record["accounts"].items()}
        out = work / "overlay.tar"
        onhost = {n: PROJECT_ROOT / n for n in ONHOST_PACKAGES}
        rec = build_overlay(self.data, stage.params, accounts, onhost, self.version, out)
        return rec, out

    def _run_rootpart(self, plan: Plan, stage: Stage, work: Path, log: Path) -> tuple[dict[str, Any], Path]:
        rootfs = self._dep(stage, "rootfs")
        assert rootfs.path is not None
        size = partition_size(rootfs.record["content_bytes"], stage.inputs["headroom_mib"])
        out = work / "root.ext4"
        build_rootpart(rootfs.path, out, work, label=stage.inputs["label"],
                       fs_uuid=stage.inputs["fs_uuid"], size=size, log=log, on_line=self._sink(stage.name),
                       scratch=self.cache.ram_scratch())
        return {"size": size, "sha256": esp_stage.file_sha256(out)}, out

    def _run_rescue(self, plan: Plan, stage: Stage, work: Path, log: Path) -> tuple[dict[str, Any], Path]:
        rootfs, overlay = self._dep(stage, "rootfs"), self._dep(stage, "overlay")
        assert rootfs.path is not None and overlay.path is not None
        out = work / "rescue.cpio.zst"
        return build_rescue(rootfs.path, overlay.path, out, log), out

    def _run_esp(self, plan: Plan, stage: Stage, work: Path, log: Path) -> tuple[dict[str, Any], Path]:
        payloads: dict[str, tuple[Path, Path]] = {}
        kernels: dict[str, str] = {}
        for e in stage.params["entries"]:
            if e["kind"] == "iso":
                continue  # its GRUB is made from the entry alone
            rootfs = self.results[e["rootfs"]]
            assert rootfs.path is not None
            version = sorted(rootfs.record["kernels"])[-1]
            kernels[e["os"]] = version
            k = work / f"{e['os']}.vmlinuz"
            read_member(rootfs.path, rootfs.record["kernels"][version]["kernel"], k)
            if e["kind"] == "rescue":
                rescue = self.results[e["payload"]]
                assert rescue.path is not None
                initrd = rescue.path
            else:
                initrd = work / f"{e['os']}.initrd"
                read_member(rootfs.path, rootfs.record["kernels"][version]["initrd"], initrd)
            payloads[e["os"]] = (k, initrd)
        out = work / "esp.vfat"
        rec = esp_stage.build_esp(stage.inputs["entries"], payloads, stage.inputs["default"],
                                  stage.inputs["timeout_s"], stage.inputs["hidden_sectors"], out, work, log,
                                  self._sink(stage.name))
        return {**rec, "kernels": kernels}, out

    def _run_isos(self, plan: Plan, stage: Stage, work: Path, log: Path) -> tuple[dict[str, Any], Path]:
        out = work / "isos.ext4"
        rec = isoboot.build_iso_partition({n: Path(p) for n, p in stage.params["sources"].items()},
                                          stage.inputs["fs_uuid"], out, work, log, self._sink(stage.name))
        return {**rec, "sha256": esp_stage.file_sha256(out)}, out

    def _run_image(self, plan: Plan, stage: Stage, work: Path, log: Path) -> tuple[dict[str, Any], None]:
        final = Path(stage.inputs["output"])
        final.parent.mkdir(parents=True, exist_ok=True)
        # The old image goes first: from here until the rename, the final path holds no image
        # (never a stale one beside a new manifest, never a half-written one).
        for p in (final, final.with_name(final.name + ".bmap"), self.cluster_dir / "manifest.json"):
            p.unlink(missing_ok=True)
        files = {s: self.results[s].path for s in stage.deps}
        placed = image_stage.layout(stage.inputs["partitions"], files, stage.inputs["size"])  # type: ignore[arg-type]
        tmp = final.with_name(f".{final.name}.partial-{os.getpid()}")
        try:
            image_stage.assemble(placed, stage.inputs["size"], stage.inputs["disk_uuid"], tmp, log)
            for spec, part in zip(stage.inputs["partitions"], placed, strict=True):
                if spec.get("overlay"):
                    self._personalise(stage, spec["overlay"], tmp, part.start, work, log)
            facts = image_stage.finish(tmp, final, stage.inputs["format"], log)
        finally:
            tmp.unlink(missing_ok=True)
        st = final.stat()
        return {"size": st.st_size, "allocated": st.st_blocks * 512, "mtime_ns": st.st_mtime_ns,
                "partitions": [{"name": p.name, "start": p.start, "size": p.size, "uuid": p.uuid} for p in placed],
                **facts}, None

    def _personalise(self, stage: Stage, overlay_stage: str, img: Path, offset: int, work: Path, log: Path) -> None:
        """Write an OS's overlay and the hosts' secrets into the image's copy of its root."""
        overlay = self.results[overlay_stage]
        assert overlay.path is not None
        scratch = work / overlay_stage.replace(":", "_").replace("/", "_")
        scratch.mkdir()
        puts = ext4edit.puts_from_tar(overlay.path, scratch)
        owners: list[tuple[str, str]] = []
        if stage.params["installer"]:
            # The stick's own identity while it runs as an installer; each host's keys wait
            # under /var/lib/clusterctl/hosts/<host>/ssh for first boot to install them.
            owners.append((installer_identity(stage.params["image_name"]), "/etc/ssh"))
            owners += [(h, f"/var/lib/clusterctl/hosts/{h}/ssh") for h in stage.params["hosts"]]
        else:
            owners += [(h, "/etc/ssh") for h in stage.params["hosts"]]
        for h, base in owners:
            if base != "/etc/ssh":
                puts.append(ext4edit.Put(base, "dir", 0o700))
            for src, name, mode in host_secret_files(self.out_dir, self.profile.name, h):
                puts.append(ext4edit.Put(f"{base}/{name}", "file", mode, src=src))
        puts += self._identity_puts(stage, work)
        ext4edit.place(img, offset, puts, log)

    def _identity_puts(self, stage: Stage, work: Path) -> list[ext4edit.Put]:
        """A disk/cloud image: its host's identity at /etc/clusterctl/identity/. A stick: each
        host's at /var/lib/clusterctl/hosts/<host>/identity/ for first boot to copy. Both with
        the register of the profile's hosts (public, 0644) beside it."""
        register = work / "hosts.json"
        if not register.exists():
            register.write_bytes(register_bytes(self.out_dir, self.profile.name, secret_owners(self.data)))
            register.chmod(0o644)
        folders = ([(h, f"{STICK_HOSTS}/{h}/identity") for h in stage.params["hosts"]] if stage.params["installer"]
                   else [(h, IDENTITY_IN_ROOT) for h in stage.params["hosts"]])
        puts: list[ext4edit.Put] = []
        for h, base in folders:
            puts.append(ext4edit.Put(base, "dir", 0o700))
            for src, name, mode in identity_files(self.out_dir, self.profile.name, h):
                puts.append(ext4edit.Put(f"{base}/{name}", "file", mode, src=src))
            puts.append(ext4edit.Put(f"{base}/hosts.json", "file", 0o644, src=register))
        return puts

    # -- manifest ----------------------------------------------------------------------------
    def _identity_facts(self) -> dict[str, Any]:
        """Public facts only: the CA's fingerprint and, per host, its mesh address and the
        digest of its public identity (what the image stage key saw)."""
        from cryptography import x509

        from agent import identity as ident

        hosts: dict[str, Any] = {}
        ca_fp = None
        for h in image_host_names(self.data):
            folder = identity_dir(self.out_dir, self.profile.name, h)
            mesh = json.loads((folder / ident.MESH).read_text())
            hosts[h] = {"address": mesh["address"], "wg_public": mesh["wg_public"],
                        "public_digest": ident.public_digest(folder)}
            ca_fp = ca_fp or ident.fingerprint(x509.load_pem_x509_certificate(
                (folder / ident.CA_CERT).read_bytes())).hex()
        return {"ca_sha256": ca_fp, "hosts": hosts}

    def _manifest(self, plan: Plan) -> Path:
        images: dict[str, Any] = {}
        for name, info in plan.images.items():
            img = self.results[f"image:{name}"]
            esp = self.results[f"esp:{name}"]
            oses = []
            for os_name in info["oses"]:
                entry = next(e for e in self.results[f"esp:{name}"].stage.params["entries"] if e["os"] == os_name)
                rootfs = self.results[entry["rootfs"]]
                osdef = self.data["oses"][os_name]
                oses.append({"name": os_name, "kind": osdef.get("kind", "system"), "suite": osdef.get("suite"),
                             "kernel": esp.record.get("kernels", {}).get(os_name),
                             "kernels": sorted(rootfs.record["kernels"]), "rootfs_key": rootfs.stage.key,
                             "packages": rootfs.record["packages"]})
            images[name] = {"path": Path(info["output"]).name, "type": info["type"], "format": info["format"],
                            "hosts": info["hosts"], "size": img.record.get("size"),
                            "allocated": img.record.get("allocated"), "bmap": img.record.get("bmap"),
                            "esp_sha256": esp.record.get("sha256"), "partitions": img.record.get("partitions"),
                            "oses": oses, "isos": info.get("isos", [])}
            for part in images[name]["partitions"] or []:
                stage_name = next((p["stage"] for p in img.stage.inputs["partitions"] if p["name"] == part["name"]),
                                  None)
                if stage_name:
                    part["sha256"] = self.results[stage_name].record.get("sha256")
                    part["stage_key"] = self.results[stage_name].stage.key
        manifest = {"cluster": plan.cluster, "profile": plan.profile_path, "clusterctl_version": self.version,
                    "onhost_version": self.version, "images": images, "identity": self._identity_facts(),
                    "stages": {s.name: s.key for s in plan.ordered()}}
        path = self.cluster_dir / "manifest.json"
        tmp = path.with_name(".manifest.json.partial")
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(tmp, path)
        return path
