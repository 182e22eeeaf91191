"""Boot timings under QEMU TCG, through the machine driver.

    python bench/boot_bench.py                       # the test kit: firmware × boot medium
    python bench/boot_bench.py --image images/dualnano/stick.img --board nano-itx \\
        --baseline plain-debian.img [--baseline-board nano-itx] [--internal]
    python bench/boot_bench.py --profile profiles/dual-nano-itx.yaml --host left [--runs 3]
    python bench/boot_bench.py --profile profiles/hybrid-cloud.yaml --cloud [--runs 3]

Without ``--image``: the busybox test kit on a UEFI board (nano-itx) and a BIOS board
(nano-itx-storage), booted by direct kernel load, from a USB stick and from an internal disk;
seconds to the kit's first event (firmware + loader + kernel) and to ``ready``, and the ratios
that show what firmware and medium cost. With ``--image``: seconds from power-on to ``ready``
for a built image against a plain Debian image's ``login:`` prompt, and their ratio.

With ``--profile`` and ``--host``: the host's installed system, as ``clusterctl build`` makes it
(a copy of the profile with one disk image of that host), booted as its board's internal disk to
``ready``; the floor is its plain-Debian twin: the same image with every clusterctl unit taken
out of its roots (same packages, kernel, loader and disk), booted to the serial ``login:``.

With ``--profile`` and ``--cloud``: the profile's cloud images (``type: cloud``), built as
``clusterctl build`` makes them (compressed qcow2), each booted as a provider boots it
(testdriver/provider.py): its board's internal disk larger than the image, DHCP from dnsmasq on
a guest-only network, a NoCloud seed disk; seconds from power-on to the ``cloud`` event (root
grown, hostname and keys applied) and to ``ready``, beside the stick's boot to ``ready``
(``--image``) in the same table of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.disk.ext4 import Ext4  # noqa: E402
from testdriver.board import load_board  # noqa: E402
from testdriver.provider import SEED_DISK, ProviderNet, attach_disk, make_nocloud_seed  # noqa: E402
from testdriver.qemu import Machine  # noqa: E402
from testdriver.testkit import TestKit, build_stick, ensure_testkit  # noqa: E402

BOARDS = {"uefi": "nano-itx", "bios": "nano-itx-storage"}


def kit_boot(kit: TestKit, stick: Path, board: str, medium: str, workdir: Path) -> tuple[float, float]:
    """(seconds to the first event, seconds to ready) for one boot of the kit."""
    options: dict[str, object] = {}
    if medium == "direct":
        options = {"kernel": kit.kernel, "initrd": kit.initrd, "append": kit.append()}
    else:
        options = {"boot_image": stick, "as_usb": medium == "usb"}
    with Machine(load_board(board), workdir, **options) as m:  # type: ignore[arg-type]
        return two_marks(m, "started", 300, 120)


def two_marks(m: Machine, first: str, first_timeout: float, ready_timeout: float) -> tuple[float, float]:
    """Power ``m`` on: (seconds to the event ``first``, seconds to ``ready``)."""
    began = time.monotonic()
    m.start()
    m.wait_for(first, timeout=first_timeout)
    mark = time.monotonic() - began
    m.wait_for("ready", timeout=ready_timeout)
    return mark, time.monotonic() - began


def bench_kit(runs: int) -> None:
    kit = ensure_testkit()
    with tempfile.TemporaryDirectory(prefix="clusterctl-bench-") as tmp:
        stick = build_stick(kit, Path(tmp) / "stick.img", kit.append())
        results: dict[tuple[str, str], list[tuple[float, float]]] = {}
        print(f"{'firmware':8} {'medium':8} {'to kernel up':>13} {'to ready':>9}   (median of {runs})")
        for firmware, board in BOARDS.items():
            for medium in ("direct", "usb", "internal"):
                samples = []
                for i in range(runs):
                    samples.append(kit_boot(kit, stick, board, medium, Path(tmp) / f"{board}-{medium}-{i}"))
                results[firmware, medium] = samples
                first = statistics.median(s[0] for s in samples)
                ready = statistics.median(s[1] for s in samples)
                print(f"{firmware:8} {medium:8} {first:12.1f}s {ready:8.1f}s", flush=True)

    def med(firmware: str, medium: str) -> float:
        return statistics.median(s[1] for s in results[firmware, medium])

    for medium in ("direct", "usb", "internal"):
        print(f"UEFI / BIOS, {medium}: {med('uefi', medium) / med('bios', medium):.2f}×")
    for firmware in BOARDS:
        print(f"{firmware}: USB stick / direct kernel {med(firmware, 'usb') / med(firmware, 'direct'):.2f}×, "
              f"internal disk / direct kernel {med(firmware, 'internal') / med(firmware, 'direct'):.2f}×")


def timed(board: str, image: Path, internal: bool, until_event: str | None, until_line: str | None) -> float:
    with tempfile.TemporaryDirectory(prefix="clusterctl-bench-") as tmp, \
            Machine(load_board(board), tmp, boot_image=image, as_usb=not internal) as m:  # fmt: skip
        began = time.monotonic()
        m.start()
        if until_event:
            m.wait_for(until_event, timeout=1800)
        else:
            assert until_line is not None
            m.wait_for_line(until_line, timeout=1800)
        return time.monotonic() - began


def build_copy(profile: Path, images: dict[str, dict[str, str]], work: Path, cache: Path | None
               ) -> tuple[dict[str, Any], Path]:
    """Build a copy of the profile whose images are ``images``: (its data, the cluster's output folder)."""
    data = yaml.safe_load(profile.read_text())
    data["include"] = [str((profile.parent / i).resolve()) for i in data.get("include") or []]
    data["images"] = images
    copy = work / profile.name
    copy.write_text(yaml.safe_dump(data, sort_keys=False))
    out = work / "images"
    argv = [sys.executable, "-m", "builder", "build", str(copy), "--out", str(out), "--quiet",
            "--ca-dir", str(work / "ca"), *(["--cache-dir", str(cache)] if cache else [])]
    t0 = time.monotonic()
    subprocess.run(argv, cwd=ROOT, check=True)
    print(f"built {', '.join(images)} in {time.monotonic() - t0:.0f} s", flush=True)
    return data, out / data["cluster"]["name"]


def build_host_disk(profile: Path, host: str, work: Path, cache: Path | None) -> tuple[Path, str]:
    """Build one disk image of ``host`` from a copy of the profile: (the image, the host's board)."""
    data, out = build_copy(profile, {f"bench-{host}": {"type": "disk", "host": host}}, work, cache)
    image = next(out.glob(f"bench-{host}.*img"))
    return image, str(data["hosts"][host]["board"])


def timed_cloud(board: str, image: Path, seed: Path) -> tuple[float, float, float]:
    """Seconds to the cloud event and to ready of a first boot as a provider boots a cloud VM,
    and to ready of the next boot of the same disk (the root already grown, the keys there)."""
    with tempfile.TemporaryDirectory(prefix="clusterctl-bench-") as tmp, ProviderNet("bench") as net, \
            Machine(load_board(board), tmp, boot_image=image, as_usb=False, lan=net.lan,
                    extra_disks=[SEED_DISK]) as m:  # fmt: skip
        attach_disk(m, 1, seed)
        cloud, ready = two_marks(m, "cloud", 1800, 1800)
        if not m.power_off(120):
            raise SystemExit(m.explain("the VM did not power off"))
        again = two_marks(m, "cloud", 1800, 1800)[1]
        return cloud, ready, again


def bench_cloud(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="clusterctl-bench-cloud-"))
    try:
        profile = yaml.safe_load(args.profile.read_text())
        clouds = {n: i for n, i in (profile.get("images") or {}).items() if i.get("type") == "cloud"}
        if not clouds:
            raise SystemExit(f"{args.profile}: no image of type cloud")
        data, out = build_copy(args.profile, clouds, work, args.cache_dir)
        for name, image in clouds.items():
            host = image["host"]
            board = str(data["hosts"][host]["board"])
            seed = make_nocloud_seed(work / f"{name}-seed.img", hostname=f"{host}-bench.provider.example")
            path = next(out.glob(f"{name}.*"))
            samples = []
            for _ in range(args.runs):
                samples.append(timed_cloud(board, path, seed))
                print(f"  {name}: cloud {samples[-1][0]:.1f} s, ready {samples[-1][1]:.1f} s; "
                      f"next boot ready {samples[-1][2]:.1f} s", flush=True)
            cloud, ready, again = (statistics.median(s[i] for s in samples) for i in range(3))
            print(f"{name} ({host} on {board}, {path.stat().st_size / 2**20:.0f} MiB {path.suffix[1:]}), median of "
                  f"{args.runs}: first boot: power-on to cloud (root grown, metadata applied) {cloud:.1f} s, "
                  f"to ready {ready:.1f} s; next boot to ready {again:.1f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def plain_twin(image: Path, dest: Path) -> Path:
    """A copy of ``image`` whose system roots start no clusterctl unit: the plain-Debian floor."""
    subprocess.run(["cp", "--sparse=always", str(image), str(dest)], check=True)
    table = json.loads(subprocess.run(["sfdisk", "--json", str(dest)], check=True, capture_output=True,
                                      text=True).stdout)["partitiontable"]  # fmt: skip
    roots = [p for p in table["partitions"] if str(p.get("name", "")).startswith("root-")]
    if not roots:
        raise SystemExit(f"{image}: no root-* partition")
    for part in roots:
        fs = Ext4(str(dest), part["start"] * table.get("sectorsize", 512), stage="bench")
        gone = []
        for folder, entries in ((d, fs.listdir(d)) for d in ("/etc/systemd/system", *(
                f"/etc/systemd/system/{w}" for w in ("multi-user.target.wants", "sysinit.target.wants",
                                                      "network-online.target.wants")))):  # fmt: skip
            gone += [f"{folder}/{e.name}" for e in entries or [] if e.name.startswith("clusterctl-")]
        fs.remove(gone)
        print(f"plain twin, {part['name']}: removed {len(gone)} clusterctl unit files and links", flush=True)
    return dest


def bench_host(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="clusterctl-bench-host-"))
    try:
        image, board = build_host_disk(args.profile, args.host, work, args.cache_dir)
        twin = plain_twin(image, work / "plain.img")
        readies, logins = [], []
        for _ in range(args.runs):  # interleaved, so a change in the machine's load hits both alike
            readies.append(timed(board, image, True, "ready", None))
            logins.append(timed(board, twin, True, None, r"login: ?$"))
            print(f"  ready {readies[-1]:.1f} s, plain login {logins[-1]:.1f} s", flush=True)
        ready, login = statistics.median(readies), statistics.median(logins)
        print(f"{args.host} on {board} (internal disk), median of {args.runs}: power-on to ready {ready:.1f} s; "
              f"plain Debian twin to login: {login:.1f} s; ratio {ready / login:.2f}× (target < 1.15×)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=1, help="boots per case (the median is shown)")
    p.add_argument("--image", type=Path, help="a built clusterctl image: time power-on to 'ready'")
    p.add_argument("--board", default="nano-itx")
    p.add_argument("--internal", action="store_true", help="images as internal disks, not USB sticks")
    p.add_argument("--baseline", type=Path, help="a plain Debian image: time power-on to 'login:'")
    p.add_argument("--baseline-board", help="board for the baseline (default: --board)")
    p.add_argument("--profile", type=Path, help="build this profile's --host as a disk image and time it")
    p.add_argument("--host", help="with --profile: the host to build and boot")
    p.add_argument("--cloud", action="store_true",
                   help="with --profile: build its cloud images and boot each as a provider does")
    p.add_argument("--cache-dir", type=Path, default=os.environ.get("CLUSTERCTL_CACHE_DIR"),
                   help="stage cache for --profile builds (default: the builder's)")
    args = p.parse_args()
    if args.profile and args.cloud:
        bench_cloud(args)
        return 0
    if args.profile:
        if not args.host:
            p.error("--profile needs --host or --cloud")
        bench_host(args)
        return 0
    if args.image is None:
        bench_kit(args.runs)
        return 0
    ready = statistics.median(timed(args.board, args.image, args.internal, "ready", None) for _ in range(args.runs))
    print(f"{args.image.name} on {args.board}: power-on to ready {ready:.1f} s")
    if args.baseline:
        board = args.baseline_board or args.board
        login = statistics.median(
            timed(board, args.baseline, args.internal, None, r"login: ?$") for _ in range(args.runs)
        )
        print(f"{args.baseline.name} on {board}: power-on to login: {login:.1f} s")
        print(f"ratio ready / plain Debian login: {ready / login:.2f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
