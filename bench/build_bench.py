"""Build speed: cold build, no-op rebuild, overlay change, 1/4/16 hosts, against the floor.

    python bench/build_bench.py [--profile profiles/dual-nano-itx.yaml] [--skip-hosts]

Every figure is printed with its ratio to the floor:
  floor (root)      a bare ``mmdebstrap`` of the same package set (no hooks), to a tarball
  floor (assembly)  the raw byte copy of the finished image (its mapped bytes, sparse)
  floor (mkfs)      ``mkfs.ext4 -d`` from an unpacked tree + that copy: what assembling the
                    image from a finished tree costs at least
Targets: no-op rebuild under 2 s; overlay change under 1.5x the assembly floor (mkfs); 16
hosts under 2x one host (the root file system is built once either way; what is left is
what depends on the host list). Builds run as the CLI does (subprocess), each
with its own cache and output folder under a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from builder.plan import make_plan  # noqa: E402
from builder.profile import load_profile  # noqa: E402
from builder.sparse import copy_sparse  # noqa: E402
from builder.stages.rootfs import RootfsSpec  # noqa: E402


def build(profile: Path, out: Path, cache: Path) -> tuple[float, dict[str, tuple[str, float]]]:
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "builder", "build", str(profile), "--out", str(out),
                        "--cache-dir", str(cache), "--json"], capture_output=True, text=True, cwd=ROOT)
    seconds = time.monotonic() - t0
    if r.returncode != 0:
        sys.exit(f"build of {profile} failed:\n{r.stderr}\n{r.stdout}")
    stages = {}
    for line in r.stdout.splitlines():
        ev = json.loads(line)
        if ev.get("event") == "stage" and ev["state"] in ("built", "reused"):
            stages[ev["stage"]] = (ev["state"], ev["seconds"])
    return seconds, stages


def profile_copy(src: Path, dest: Path, extra_overlay: Path, hosts: int | None = None) -> Path:
    """The profile with an extra overlay folder on its first OS, optionally with N hosts on its stick."""
    data = yaml.safe_load(src.read_text())
    data["include"] = [str((src.parent / i).resolve()) for i in data.get("include") or []]
    first_os = next(iter(data["oses"]))
    data["oses"][first_os]["overlays"] = [str(extra_overlay)]
    if hosts is not None:
        name, image = next((n, i) for n, i in data["images"].items() if i["type"] == "usb-installer")
        template = image["hosts"][0]
        clones = {f"{template}-{i}": {"extends": template} for i in range(1, hosts)}
        for h in list(data["hosts"]):
            if h != template:
                del data["hosts"][h]
        for h in clones:
            data["hosts"][h] = clones[h]
        # Hosts of one shape must be told apart at first boot: each clone gets its own MAC pin.
        for i, h in enumerate([template, *clones]):
            data["hosts"][h]["pin"] = {"mac": f"52:54:00:bb:{i // 256:02x}:{i % 256:02x}"}
        data["images"] = {name: {**image, "hosts": [template, *clones]}}
    dest.write_text(yaml.safe_dump(data))
    return dest


def floor_root(profile: Path, work: Path) -> float:
    plan = make_plan(load_profile(profile))
    spec: RootfsSpec = next(s for s in plan.ordered() if s.kind == "rootfs").params["spec"]
    t0 = time.monotonic()
    subprocess.run(["mmdebstrap", "--variant=apt", "--quiet", "--include=" + ",".join(spec.all_packages()),
                    spec.suite, str(work / "bare.tar"), spec.mirror], check=True, env={**os.environ,
                                                                                        "TMPDIR": str(work)})
    return time.monotonic() - t0


def floor_copy(image: Path, work: Path) -> float:
    t0 = time.monotonic()
    dest = work / "copy.img"
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, image.stat().st_size)
        copy_sparse(str(image), fd, 0)
    finally:
        os.close(fd)
    seconds = time.monotonic() - t0
    dest.unlink()
    return seconds


def floor_mkfs(cache: Path, work: Path) -> float:
    """mkfs.ext4 -d from an unpacked tree (unpacking not timed) — the rest of an assembly."""
    from builder.cache import StageCache

    c = StageCache(cache)
    try:
        tar = next(c.path(k[1]) for k in c.cache.iterkeys() if k[0] == "rec" and
                   (c.record(k[1]) or {}).get("kind") == "rootfs")
    finally:
        c.close()
    assert tar is not None
    tree = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        subprocess.run(["tar", "-x", "-p", "--numeric-owner", "-f", str(tar), "-C", str(tree)], check=True)
        out = work / "floor.ext4"
        size = int(sum(f.stat().st_size for f in tree.rglob("*") if f.is_file() and not f.is_symlink()) * 1.3
                   ) + 512 * 1024**2
        with open(out, "wb") as f:
            f.truncate(size)
        t0 = time.monotonic()
        subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(out)], check=True)
        seconds = time.monotonic() - t0
        out.unlink()
        return seconds
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def row(label: str, seconds: float, floor: float, floor_name: str, target: str = "") -> dict[str, Any]:
    ratio = seconds / floor if floor else float("nan")
    print(f"{label:<42} {seconds:8.2f} s   {ratio:6.2f}x {floor_name:<16} {target}", flush=True)
    return {"label": label, "seconds": round(seconds, 3), "ratio": round(ratio, 3), "floor": floor_name}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=str(ROOT / "profiles" / "dual-nano-itx.yaml"))
    ap.add_argument("--skip-hosts", action="store_true", help="skip the 1/4/16-host builds")
    ap.add_argument("--hosts-only", action="store_true", help="only the 1/4/16-host builds")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args()
    src = Path(args.profile).resolve()
    work = Path(tempfile.mkdtemp(prefix="clusterctl-bench."))
    results: list[dict[str, Any]] = []
    try:
        extra = work / "extra-overlay"
        (extra / "etc").mkdir(parents=True)
        (extra / "etc" / "motd").write_text("bench 1\n")
        profile = profile_copy(src, work / "profile.yaml", extra)
        cache, out = work / "cache", work / "images"
        cold_stages: dict[str, tuple[str, float]] = {}
        if not args.hosts_only:
            cold_stages = main_figures(profile, out, cache, extra, work, results)
        if not args.skip_hosts:
            results += hosts_scaling(src, work, extra)
        if args.json:
            Path(args.json).write_text(json.dumps({"profile": str(src), "results": results,
                                                   "cold_stages": cold_stages}, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def main_figures(profile: Path, out: Path, cache: Path, extra: Path, work: Path,
                 results: list[dict[str, Any]]) -> dict[str, tuple[str, float]]:
    cold, cold_stages = build(profile, out, cache)
    image = next(out.glob("*/*.img"))
    noop, noop_stages = build(profile, out, cache)
    noop_built = [n for n, (state, _) in noop_stages.items() if state == "built"]
    (extra / "etc" / "motd").write_text("bench 2\n")
    overlay, overlay_stages = build(profile, out, cache)
    rebuilt = [n for n, (state, _) in overlay_stages.items() if state == "built"]

    f_root = floor_root(profile, work)
    f_copy = floor_copy(image, work)
    f_mkfs = floor_mkfs(cache, work) + f_copy
    floor = f_root + f_copy
    print(f"\nprofile {profile.name}; image {image.name} ({image.stat().st_blocks * 512 / 1024**2:.0f} MiB allocated)")
    print(f"{'':<42} {'time':>10}   {'ratio':>7}")
    results.append(row("floor: bare mmdebstrap + raw byte copy", floor, floor, "floor"))
    results.append(row("floor (assembly): raw byte copy", f_copy, f_copy, "raw copy"))
    results.append(row("floor (assembly): mkfs.ext4 -d + raw copy", f_mkfs, f_mkfs, "mkfs+copy"))
    results.append(row("cold build", cold, floor, "floor"))
    # Anything built here means the inputs moved under the bench (say, someone edited agent/).
    results.append(row("no-op rebuild" + (f" (rebuilt: {', '.join(noop_built)})" if noop_built else ""),
                       noop, floor, "floor", "target < 2 s"))
    results.append(row(f"overlay change (rebuilt: {', '.join(rebuilt)})", overlay, f_mkfs, "mkfs+copy",
                       "target < 1.5x"))
    results.append(row("overlay change vs raw copy", overlay, f_copy, "raw copy"))
    return cold_stages


def hosts_scaling(src: Path, work: Path, extra: Path) -> list[dict[str, Any]]:
    """1, 4 and 16 hosts on one stick, each from a cache that holds only the root file system
    (mmdebstrap's output, made once beforehand): everything else is built for each count."""
    from builder.cache import StageCache

    seed = work / "cache-seed"
    build(profile_copy(src, work / "hosts-seed.yaml", extra, hosts=1), work / "images-seed", seed)
    results = []
    one = None
    for n in (1, 4, 16):
        cache = work / f"cache-{n}"
        s, c = StageCache(seed), StageCache(cache)
        try:
            for k in list(s.cache.iterkeys()):
                rec = s.record(k[1]) if k[0] == "rec" else None
                if rec and rec.get("kind") == "rootfs":
                    tmp = c.workdir("seed") / "rootfs.tar"
                    shutil.copyfile(s.path(k[1]), tmp)  # type: ignore[arg-type]
                    c.commit(k[1], rec, tmp)
        finally:
            s.close()
            c.close()
        p = profile_copy(src, work / f"hosts-{n}.yaml", extra, hosts=n)
        secs, stages = build(p, work / f"images-{n}", cache)
        if one is None:
            one = secs
        results.append(row(f"{n:>2} host(s) on one stick (root reused)", secs, one, "1 host",
                           "target < 2x" if n == 16 else ""))
        print(f"{'':<44}built: {', '.join(f'{k} {v[1]:.1f}s' for k, v in stages.items() if v[0] == 'built')}")
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(work / f"images-{n}", ignore_errors=True)
    return results


if __name__ == "__main__":
    sys.exit(main())
