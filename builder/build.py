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
from builder.ids import settle_ids
from builder.plan import ONHOST_PACKAGES, Plan, Stage, make_plan, onhost_version
from builder.report import Reporter
from builder.secrets import (
    STICK_SEAL,
    StickPassphraseNeeded,
    ca_dir_for,
    ensure_host_identity,
    ensure_host_secrets,
    identity_dir,
    image_host_names,
    needs_stick_passphrase,
    secret_owners,
    secrets_digest,
    stick_key,
)
from builder.stages.kind import StageContext
from builder.stages.registry import KINDS

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
                 images: list[str] | None = None, ca_dir: Path | None = None,
                 stick_passphrase: str | None = None) -> None:
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
        self.stick_passphrase = stick_passphrase
        # What every stage's executor is given (builder/stages/kind.py); results fill in as stages end.
        self.ctx = StageContext(results=self.results, data=self.data, profile_name=profile.name,
                                out_dir=out_dir, cluster_dir=self.cluster_dir, version=self.version,
                                onhost={n: PROJECT_ROOT / n for n in ONHOST_PACKAGES},
                                ram_scratch=cache.ram_scratch, sink=self._sink)

    # -- plan --------------------------------------------------------------------------
    def plan(self) -> Plan:
        settle_ids(self.profile, self.out_dir, write=True)
        hosts = secret_owners(self.data)
        for h in hosts:
            ensure_host_secrets(self.out_dir, self.profile.name, h)
        # The agent's identity, per host (a stick's own system has none: its agent stays idle).
        for h in image_host_names(self.data):
            ensure_host_identity(self.out_dir, self.profile.name, h, self.ca_dir)
        digest = secrets_digest(self.out_dir, self.profile.name, hosts)
        if needs_stick_passphrase(self.profile.model, self.only):
            if self.stick_passphrase is None:
                raise StickPassphraseNeeded(
                    f"{self.profile.path}: cluster.stick_secrets is passphrase, so the stick's keys are sealed "
                    "with a passphrase: give it with --stick-passphrase-file FILE or $CLUSTERCTL_STICK_PASSPHRASE, "
                    "or run the build on a terminal to be asked")
            self.ctx.stick_key = stick_key(self.out_dir, self.profile.name, self.stick_passphrase)
            digest[STICK_SEAL] = "sealed " + self.ctx.stick_key.verifier()
        return make_plan(self.profile, out_dir=self.out_dir, only=self.only, secrets_digest=digest)

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
        kind = KINDS[stage.kind]
        if kind.current(self.cache, stage):
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
            record, output = kind.run(self.ctx, stage, work, log)
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
                osdef = self.profile.model.oses[os_name]
                oses.append({"name": os_name, "kind": osdef.kind, "suite": osdef.suite,
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
