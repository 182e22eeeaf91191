"""Building a real image from the smallest example profile, reading it back, and booting it.

One image per test run (session fixture). The profile is profiles/vesa-wall.yaml: one Debian
suite (bookworm) whose root the rescue system reuses, so the run costs one mmdebstrap; the
two-suite example (dual-nano-itx: bookworm + trixie) would double that, and what it adds
(a second root partition) is covered by the plan tests and bench/build_bench.py.

Before the real build, two cold builds are interrupted while mmdebstrap runs (SIGKILL, then
SIGINT); later stages are interrupted in test_interrupted_stages on a copy of the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from builder.bmap import read_bmap
from builder.cache import StageCache
from builder.plan import describe_plan
from builder.profile import load_profile
from builder.stages.isoboot import pe_signed
from testdriver.testkit import TestKit
from tests.diskroom import link_tree, module_workdir

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiles" / "vesa-wall.yaml"
GPTMBR = Path("/usr/lib/SYSLINUX/gptmbr.bin")
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
ROOT_TYPE = "4F68BCE3-E8CD-4C1D-96E7-FBCAF984B709"
BASIC_DATA_TYPE = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"


class BuildRun:
    """``clusterctl build --json`` as a child process whose stage events can be awaited."""

    def __init__(self, profile: Path, out: Path, cache: Path) -> None:
        # Ctrl-C as a person's terminal sends it: a suite started in the background (`cmd &` from a
        # script) ignores SIGINT, and a Python started so keeps ignoring it; the build must not.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "builder", "build", str(profile), "--out", str(out), "--cache-dir", str(cache),
             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.events: list[dict[str, Any]] = []

    def wait_start(self, kind: str, timeout: float = 900) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        for line in self.proc.stdout:
            ev = json.loads(line)
            self.events.append(ev)
            if ev.get("state") == "start" and ev["stage"].split(":")[0] == kind:
                return ev
            if time.monotonic() > deadline:
                break
        raise AssertionError(f"no {kind} stage started; events: {self.events}; stderr: {self.proc.stderr.read()}")

    def finish(self, timeout: float = 1500) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err


def _wait_log(path: Path, needle: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_text(errors="replace"):
            return
        time.sleep(0.5)
    raise AssertionError(f"{needle!r} never appeared in {path}")


def _forget(cache: Path, kinds: set[str]) -> None:
    """Drop the cache entries of stages of these kinds, so the next build makes them again."""
    c = StageCache(cache)
    try:
        for k in list(c.cache.iterkeys()):
            if k[0] == "rec" and (c.record(k[1]) or {}).get("kind") in kinds:
                c.cache.delete(("rec", k[1]))
                c.cache.delete(("out", k[1]))
    finally:
        c.close()


def _cached(profile: Path, cache: Path, out: Path) -> dict[str, bool]:
    return {r["name"]: r["cached"] for r in describe_plan(load_profile(profile), cache_dir=cache, out_dir=out)}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with module_workdir(tmp_path_factory, "build") as base:
        yield _build_after_interruptions(base)


def _build_after_interruptions(base: Path) -> dict[str, Any]:
    cache, out = base / "cache", base / "images"
    interrupted = []
    for sig in (signal.SIGKILL, signal.SIGINT):
        run = BuildRun(PROFILE, out, cache)
        run.wait_start("rootfs")
        # In the middle of it: mmdebstrap is unpacking packages.
        _wait_log(out / "vesawall" / "logs" / "rootfs_stable.log", "Unpacking ")
        run.proc.send_signal(sig)
        rc, _, err = run.finish()
        interrupted.append({"signal": sig.name, "rc": rc, "stderr": err,
                            "image": (out / "vesawall" / "stick.img").exists(),
                            "cached": _cached(PROFILE, cache, out)})
    t0 = time.monotonic()
    run = BuildRun(PROFILE, out, cache)
    rc, stdout, err = run.finish()
    assert rc == 0, err
    return {"cache": cache, "out": out, "image": out / "vesawall" / "stick.img", "seconds": time.monotonic() - t0,
            "events": [json.loads(line) for line in stdout.splitlines()], "interrupted": interrupted,
            "manifest": json.loads((out / "vesawall" / "manifest.json").read_text())}


def _partitions(image: Path) -> list[dict[str, Any]]:
    table = json.loads(subprocess.run(["sfdisk", "--json", str(image)], check=True, capture_output=True,
                                      text=True).stdout)["partitiontable"]
    assert table["label"] == "gpt"
    return table["partitions"]


def _offset(image: Path, name: str) -> int:
    return next(p["start"] for p in _partitions(image) if p["name"] == name) * 512


def _debugfs(image: Path, offset: int, cmd: str) -> str:
    return subprocess.run(["debugfs", "-R", cmd, f"{image}?offset={offset}"], check=True, capture_output=True,
                          text=True).stdout


def _mtools(tool: str, image: Path, *args: str) -> str:
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    return subprocess.run([tool, "-i", f"{image}@@{_offset(image, 'ESP')}", *args], check=True, capture_output=True,
                          text=True, env=env).stdout


def _mtools_bytes(image: Path, path: str) -> bytes:
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    return subprocess.run(["mtype", "-i", f"{image}@@{_offset(image, 'ESP')}", path], check=True,
                          capture_output=True, env=env).stdout


def test_interrupted_cold_builds_leave_no_image_and_no_entry(built: dict[str, Any]) -> None:
    for r in built["interrupted"]:
        assert r["rc"] != 0, r
        assert not r["image"], r
        assert not any(r["cached"].values()), r  # the root was mid-way: nothing may claim to be done
    assert built["interrupted"][1]["rc"] == 130  # SIGINT: "interrupted", not a traceback
    assert "Traceback" not in built["interrupted"][1]["stderr"]
    assert not list((built["cache"] / "work").iterdir())  # the next build cleared the scratch


def test_partition_table(built: dict[str, Any]) -> None:
    parts = _partitions(built["image"])
    assert [(p["name"], p["type"]) for p in parts] == [("ESP", ESP_TYPE), ("root-stable", ROOT_TYPE),
                                                       ("CLUSTER", BASIC_DATA_TYPE)]
    assert parts[0]["attrs"] == "LegacyBIOSBootable"
    # The claim ledger's partition: an empty FAT labelled CLUSTER (first boot writes claims.json).
    cluster = f"{built['image']}@@{_offset(built['image'], 'CLUSTER')}"
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    assert "CLUSTER" in subprocess.run(["mlabel", "-s", "-i", cluster, "::"], capture_output=True, text=True,
                                       env=env, check=True).stdout
    assert subprocess.run(["mdir", "-b", "-i", cluster, "::"], capture_output=True, text=True,
                          env=env).stdout.strip() == ""
    assert parts[0]["start"] == 2048
    with open(built["image"], "rb") as f:
        mbr = f.read(512)
    assert mbr[:440] == GPTMBR.read_bytes()[:440]
    assert mbr[510:] == b"\x55\xaa" and mbr[450] == 0xEE  # protective MBR kept


def test_esp_has_both_boot_loaders_and_one_entry_per_os(built: dict[str, Any]) -> None:
    img = built["image"]
    listing = _mtools("mdir", img, "-a", "-/", "-b", "::/")
    for needed in ("::/EFI/BOOT/BOOTX64.EFI", "::/syslinux/ldlinux.sys", "::/syslinux/ldlinux.c32",
                   "::/stable/vmlinuz", "::/stable/initrd.img", "::/rescue/vmlinuz", "::/rescue/initrd.img"):
        assert needed in listing, listing
    # UEFI: Debian's signed chain, so Secure Boot boxes start it (shim as the removable-media loader).
    chain = {n: _mtools_bytes(img, f"::/EFI/BOOT/{n}") for n in ("BOOTX64.EFI", "grubx64.efi", "mmx64.efi")}
    assert all(pe_signed(data) for data in chain.values())
    assert b"shim" in chain["BOOTX64.EFI"] and b"GNU GRUB" in chain["grubx64.efi"]
    assert pe_signed(_mtools_bytes(img, "::/stable/vmlinuz"))  # Debian's kernel: GRUB checks it under shim
    grub = _mtools("mtype", img, "::/EFI/debian/grub.cfg")
    assert "set default=0" in grub and grub.index("--id 'stable' --hotkey=1") < grub.index("--id 'rescue' --hotkey=2")
    stable = _mtools("mtype", img, "::/loader/entries/10-stable.conf")
    rescue = _mtools("mtype", img, "::/loader/entries/20-rescue.conf")
    root_uuid = next(p["uuid"] for p in _partitions(img) if p["name"] == "root-stable").lower()
    assert f"root=PARTUUID={root_uuid}" in stable
    for entry in (stable, rescue):
        assert "console=tty0 console=ttyS0,115200" in entry and "systemd.firstboot=no" in entry
    assert "rdinit=/sbin/init" in rescue and "root=" not in rescue
    cfg = _mtools("mtype", img, "::/syslinux/syslinux.cfg")
    assert "DEFAULT stable" in cfg and "LABEL rescue" in cfg and "SERIAL 0 115200" in cfg


def test_root_partition_contents(built: dict[str, Any]) -> None:
    img, off = built["image"], _offset(built["image"], "root-stable")
    host = json.loads(_debugfs(img, off, "cat /etc/clusterctl/host.json"))
    assert host["host"] is None and host["os"] == "stable" and host["candidates"] == ["wall-1", "wall-2", "wall-3",
                                                                                      "vault"]
    assert "def emit" in _debugfs(img, off, "cat /usr/lib/clusterctl/core/events.py")
    assert "exec /usr/bin/python3 -m agent" in _debugfs(img, off, "cat /usr/bin/clusterctl")
    assert "exec /usr/bin/clusterctl " in _debugfs(img, off, "cat /usr/bin/clusterctl-agent")
    for program in ("clusterctl", "clusterctl-agent"):
        assert "Mode:  0755" in _debugfs(img, off, f"stat /usr/bin/{program}")
    passwd = _debugfs(img, off, "cat /etc/passwd")
    assert "admin:x:1000:1000:admin:/home/admin:/bin/bash" in passwd
    keys = _debugfs(img, off, "stat /home/admin/.ssh/authorized_keys")
    assert "Mode:  0600" in keys and "User:  1000" in keys
    assert "ssh-ed25519 " in _debugfs(img, off, "cat /home/admin/.ssh/authorized_keys")
    assert "clusterctl-ready.service" in _debugfs(img, off, "ls /etc/systemd/system/multi-user.target.wants")
    assert _debugfs(img, off, "cat /etc/hostname").strip() == "vesawall-installer"
    # What first boot lays over the installed system of each host, rendered for that host.
    tree = "/usr/lib/clusterctl/hosts/vault/root"
    vault = json.loads(_debugfs(img, off, f"cat {tree}/etc/clusterctl/host.json"))
    assert (vault["host"], vault["role"], vault["os"]) == ("vault", "storage", "stable")
    assert _debugfs(img, off, f"cat {tree}/etc/hostname").strip() == "vault"
    assert "Address=10.44.0." in _debugfs(img, off, f"cat {tree}/etc/systemd/network/50-clusterctl-lan0.network")
    # Per-host secrets: each host's own, readable by root only; none shared from the root's build.
    secret = _debugfs(img, off, "stat /var/lib/clusterctl/hosts/vault/ssh/ssh_host_ed25519_key")
    assert "Mode:  0600" in secret and "User:     0" in secret
    # The stick's sshd has keys of its own (its own secrets folder), not any host's.
    stick_key = _debugfs(img, off, "cat /etc/ssh/ssh_host_ed25519_key.pub")
    own = (built["out"] / "vesawall" / ".secrets" / "stick.installer" / "ssh_host_ed25519_key.pub").read_text()
    assert stick_key.strip() == own.strip()
    assert "Mode:  0600" in _debugfs(img, off, "stat /etc/ssh/ssh_host_ed25519_key")


def build_machine_modules() -> set[str]:
    """Paths (relative to a package root) of every module that must never be in an image: the
    build machine's layer, the tests and the benches."""
    return {p.relative_to(ROOT).as_posix() for top in ("builder", "testdriver", "tests", "bench")
            for p in (ROOT / top).rglob("*.py")}


def test_root_carries_host_code_only(built: dict[str, Any], tmp_path: Path) -> None:
    """Every Python file in the built root, read back out of the image: only the host layer and
    the core, each file the repository's own; no build-machine module and no test helper."""
    img, off = built["image"], _offset(built["image"], "root-stable")
    dump = tmp_path / "root"
    dump.mkdir()
    for folder in ("/usr/lib/clusterctl", "/usr/local", "/usr/lib/python3/dist-packages", "/root", "/opt"):
        (dump / folder.strip("/")).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["debugfs", "-R", f"rdump {folder} {(dump / folder.strip('/')).parent}",
                        f"{img}?offset={off}"], check=True, capture_output=True)
    shipped = dump / "usr" / "lib" / "clusterctl"
    ours = sorted(p.relative_to(shipped).as_posix() for p in shipped.rglob("*.py")
                  if not p.relative_to(shipped).as_posix().startswith("hosts/"))
    assert {f.split("/")[0] for f in ours} == {"core", "hardware", "agent"}, ours
    for f in ours:  # each one is the repository's file, byte for byte
        assert (ROOT / f).read_bytes() == (shipped / f).read_bytes(), f
    forbidden = build_machine_modules()
    helper_names = {p.name for p in (ROOT / "testdriver").rglob("*.py")} - {"__init__.py"}
    bad = [f for f in ours if f in forbidden or f.split("/")[-1] in helper_names]
    # Nor anywhere Python looks for packages: a pip-installed copy of ours would be one there.
    sites = [dump / "usr/lib/python3/dist-packages", *dump.glob("usr/local/lib/python3*/*-packages")]
    assert any(sites[0].iterdir())  # the dump did read Debian's Python packages
    for site in sites:
        bad += [f"{site.relative_to(dump)}/{d.name}" for d in site.iterdir()
                if d.name in ("builder", "testdriver", "tests", "bench", "clusterctl")]
    assert not bad, bad


def test_secrets_stay_out_of_the_cache(built: dict[str, Any]) -> None:
    key_file = built["out"] / "vesawall" / ".secrets" / "vault" / "ssh_host_ed25519_key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert key_file.parent.stat().st_mode & 0o777 == 0o700
    needle = key_file.read_text().splitlines()[1].encode()  # a line of the private key's base64
    for p in built["cache"].rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                while chunk := f.read(64 << 20):
                    assert needle not in chunk, p


def test_manifest(built: dict[str, Any]) -> None:
    m = built["manifest"]
    img = m["images"]["stick"]
    assert img["size"] == 6 * 1024**3 == built["image"].stat().st_size
    assert img["hosts"] == ["wall-1", "wall-2", "wall-3", "vault"]
    stable = next(o for o in img["oses"] if o["name"] == "stable")
    for pkg in ("linux-image-amd64", "systemd", "udev", "python3-pyudev", "python3-rich", "python3-yaml",
                "openssh-server", "smartmontools"):
        assert pkg in stable["packages"], pkg
    assert stable["kernel"] and stable["kernel"] in stable["kernels"]
    assert m["onhost_version"].startswith("0.")
    plan_keys = {r["name"]: r["key"] for r in describe_plan(load_profile(PROFILE), cache_dir=built["cache"],
                                                              out_dir=built["out"])}
    assert m["stages"] == plan_keys


def test_noop_rebuild_reuses_everything(built: dict[str, Any]) -> None:
    mtime = built["image"].stat().st_mtime_ns
    t0 = time.monotonic()
    rc, out, err = BuildRun(PROFILE, built["out"], built["cache"]).finish()
    seconds = time.monotonic() - t0
    assert rc == 0, err
    states = {e["stage"]: e["state"] for e in map(json.loads, out.splitlines()) if e.get("event") == "stage"}
    assert set(states.values()) == {"reused"}, states
    assert built["image"].stat().st_mtime_ns == mtime
    assert seconds < 10, seconds  # the bench holds the real target (2 s); CI machines are noisy


def test_bmaptool_flashes_it(built: dict[str, Any], tmp_path: Path) -> None:
    img = built["image"]
    target = tmp_path / "stick.raw"
    subprocess.run(["bmaptool", "copy", "--bmap", f"{img}.bmap", str(img), str(target)], check=True,
                   capture_output=True)
    bmap = read_bmap(Path(f"{img}.bmap"))
    with open(target, "rb") as f:
        for first, last, digest in bmap.ranges:
            f.seek(first * 4096)
            assert hashlib.sha256(f.read((last - first + 1) * 4096)).hexdigest() == digest
    assert _partitions(target) == [{**p, "node": p["node"].replace(str(img), str(target))}
                                   for p in _partitions(img)]


def test_clusterctl_flash_to_a_file(built: dict[str, Any], tmp_path: Path) -> None:
    target = tmp_path / "stick.raw"
    r = subprocess.run([sys.executable, "-m", "builder", "flash", str(built["image"]), str(target), "--force",
                        "--yes"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "verified" in r.stderr
    assert target.stat().st_size == built["image"].stat().st_size


def test_interrupted_stages(built: dict[str, Any], tmp_path: Path) -> None:
    """SIGINT and SIGKILL at each later stage; then the build completes."""
    cache = tmp_path / "cache"
    link_tree(built["cache"], cache)
    order = ("overlay", "rootpart", "rescue", "esp", "image")
    data = yaml.safe_load(PROFILE.read_text())
    data["include"] = [str(PROFILE.parent / i) for i in data.get("include", [])]
    profile = tmp_path / "vesa-wall.yaml"
    profile.write_text(yaml.safe_dump(data))
    out = tmp_path / "images"
    for i, kind in enumerate(order):
        for sig in (signal.SIGINT, signal.SIGKILL):
            # Stages of this kind and later are made again (the root file system and earlier stages are
            # kept): a fast machine may have finished them before an earlier run's signal landed.
            _forget(cache, set(order[i:]))
            run = BuildRun(profile, out, cache)
            run.wait_start(kind)
            time.sleep(0.3)
            run.proc.send_signal(sig)
            rc, _, _ = run.finish()
            assert rc != 0, (kind, sig)
            assert not (out / "vesawall" / "stick.img").exists(), (kind, sig)
    final = BuildRun(profile, out, cache)
    rc, stdout, err = final.finish()
    assert rc == 0, err
    done = {e["stage"]: e["key"] for e in map(json.loads, stdout.splitlines()) if e.get("state") in ("built", "reused")}
    assert done == {r["name"]: r["key"] for r in describe_plan(load_profile(profile), cache_dir=cache, out_dir=out)}
    assert (out / "vesawall" / "stick.img").exists()
    assert not list((cache / "work").iterdir())


def _boot(built: dict[str, Any], board: str, workdir: Path, prompt: str | None = None,
          keys: str = "", until: str = "ready") -> dict[str, Any]:
    from testdriver.board import load_board
    from testdriver.qemu import Machine

    workdir.mkdir()
    with Machine(load_board(board), workdir, boot_image=built["image"]) as m:
        m.start()
        if prompt:
            m.wait_for_line(prompt, timeout=400)
            m.send_serial(keys)
        return m.wait_for(until, timeout=600)


def test_uefi_boots_the_default_entry(built: dict[str, Any], tmp_path: Path) -> None:
    ev = _boot(built, "vesa-mini-pc", tmp_path / "vm")  # firmware: uefi-secure (OVMF, Secure Boot enforced)
    assert ev["os"] == "stable" and ev["host"] is None  # an installer stick: first boot names the host
    assert ev["firmware"] == {"mode": "uefi", "secure_boot": True, "setup_mode": False}
    assert ev["os_release"]["VERSION_CODENAME"] == "bookworm"


def test_uefi_menu_picks_the_second_entry(built: dict[str, Any], tmp_path: Path) -> None:
    # In GRUB's menu (drawn on the screen and the serial console) digit N boots entry N.
    ev = _boot(built, "vesa-mini-pc", tmp_path / "vm", prompt=r"runs from RAM", keys="2")
    assert ev["os"] == "rescue" and ev["os_release"]["VERSION_CODENAME"] == "bookworm"


def test_bios_boots_the_entry_typed_at_the_prompt(built: dict[str, Any], tmp_path: Path) -> None:
    ev = _boot(built, "storage-box", tmp_path / "vm", prompt=r"boot:", keys="rescue\r")  # firmware: bios
    assert ev["os"] == "rescue"


def _guest_bytes(disk: Path, offset: int, length: int, tmp: Path) -> bytes:
    """Bytes of a machine's disk as the guest sees it (its qcow2 overlay over the image)."""
    out = tmp / "dd.out"
    # qemu-img dd counts the skipped blocks in count.
    subprocess.run(["qemu-img", "dd", "-f", "qcow2", "-O", "raw", "bs=512", f"skip={offset // 512}",
                    f"count={(offset + length) // 512}", f"if={disk}", f"of={out}"], check=True, capture_output=True)
    data = out.read_bytes()
    out.unlink()
    assert len(data) == length, f"read {len(data)} of {length} bytes at {offset}"
    return data


@pytest.mark.parametrize("board", ["vesa-mini-pc", "storage-box"])
def test_the_next_boot_only_runs_the_os_named_and_the_loader_clears_it(built: dict[str, Any], tmp_path: Path,
                                                                      board: str) -> None:
    """``boot rescue`` as the agent sets it (core/disk/bootonce.py) on a copy of the stick: GRUB
    under Secure Boot (UEFI) and syslinux (BIOS) boot the rescue system without a key pressed,
    and each has cleared the one-shot on the disk it booted from, so the next boot is the default."""
    from core.disk import bootonce
    from testdriver.board import load_board
    from testdriver.qemu import Machine

    copy = tmp_path / "stick.img"
    subprocess.run(["cp", "--sparse=always", str(built["image"]), str(copy)], check=True)
    uefi = load_board(board).firmware != "bios"
    bootonce.set_next_boot(str(copy), "rescue", uefi)
    where = bootonce.EspLocator(str(copy)).tail_offsets(bootonce.GRUBENV if uefi else bootonce.LDLINUX, 2)
    (tmp_path / "vm").mkdir()
    try:
        with Machine(load_board(board), tmp_path / "vm", boot_image=copy) as m:
            m.start()
            ev = m.wait_for("ready", timeout=600)
            assert ev["os"] == "rescue", ev
        overlay = tmp_path / "vm" / "stick.qcow2"
        after = b"".join(_guest_bytes(overlay, at, 512, tmp_path) for at in where)
        if uefi:
            assert after.startswith(bootonce.GRUBENV_HEAD), after[:80]
            assert bootonce.parse_grubenv(after).get("next_entry", "") == "", after[:80]
        else:
            assert bootonce.parse_adv(after) == {}, "syslinux did not clear its boot-once command"
    finally:
        copy.unlink(missing_ok=True)


def test_a_failed_stage_is_named_with_its_log(tmp_path: Path) -> None:
    data = yaml.safe_load(PROFILE.read_text())
    data["include"] = [str(PROFILE.parent / i) for i in data.get("include", [])]
    data["oses"]["stable"]["mirror"] = "http://127.0.0.1:9/debian"  # nothing listens there: fails at once
    profile = tmp_path / "bad.yaml"
    profile.write_text(yaml.safe_dump(data))
    r = subprocess.run([sys.executable, "-m", "builder", "build", str(profile), "--out", str(tmp_path / "o"),
                        "--cache-dir", str(tmp_path / "c")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1
    assert "stage rootfs:stable failed" in r.stderr and "Traceback" not in r.stderr
    log = tmp_path / "o" / "vesawall" / "logs" / "rootfs_stable.log"
    assert str(log) in r.stderr.replace("\n", "")
    assert "127.0.0.1:9" in log.read_text()
    assert not (tmp_path / "o" / "vesawall" / "stick.img").exists()


# -- ISO files on the stick (builder/stages/isoboot.py) ---------------------------------------


@pytest.fixture(scope="module")
def iso_stick(built: dict[str, Any], testkit: TestKit,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The same stick with an ISO OS for the screens and one more ISO file on its menu, built on
    the first build's cache: only the overlays, the ESP, the ISO partition and the image are made."""
    with module_workdir(tmp_path_factory, "isos") as base:
        yield _build_with_isos(base, built["cache"], testkit)


def _build_with_isos(base: Path, cache: Path, testkit: TestKit) -> dict[str, Any]:
    testkit.make_iso(base / "kit.iso")
    testkit.make_iso(base / "No Loopback.iso", loopback=False)
    testkit.make_iso(base / "Unsigned Kit.iso", signed=False)
    data = yaml.safe_load(PROFILE.read_text())
    data["include"] = [str(PROFILE.parent / i) for i in data.get("include", [])]
    data["oses"]["kit"] = {"kind": "iso", "path": str(base / "kit.iso"), "label": "the test kit, from an ISO"}
    data["roles"]["screen"]["os"].append("kit")
    data["images"]["stick"]["isos"] = [str(base / "No Loopback.iso"), str(base / "Unsigned Kit.iso")]
    profile = base / "isos.yaml"
    profile.write_text(yaml.safe_dump(data))
    rc, stdout, err = BuildRun(profile, base / "images", cache).finish()
    assert rc == 0, err
    return {"image": base / "images" / "vesawall" / "stick.img", "events": list(map(json.loads, stdout.splitlines())),
            "manifest": json.loads((base / "images" / "vesawall" / "manifest.json").read_text())}


def test_isos_are_files_in_their_own_partition_with_an_entry_each(iso_stick: dict[str, Any]) -> None:
    image = iso_stick["image"]
    ran = {e["stage"] for e in iso_stick["events"] if e.get("state") == "built"}
    assert {"isos:stick", "esp:stick", "image:stick"} <= ran and not any(s.startswith(("rootfs:", "rootpart:"))
                                                                       for s in ran)
    parts = _partitions(image)
    assert [p["name"] for p in parts] == ["ESP", "root-stable", "CLUSTER", "isos"]
    listing = _debugfs(image, _offset(image, "isos"), "ls -l /")
    assert "kit.iso" in listing and "no-loopback.iso" in listing
    assert sorted(_mtools("mdir", image, "-b", "::/isoboot").split()) == [
        "::/isoboot/kit.cfg", "::/isoboot/kit.lnx", "::/isoboot/no-loopback.cfg", "::/isoboot/no-loopback.lnx",
        "::/isoboot/unsigned-kit.cfg", "::/isoboot/unsigned-kit.lnx"]
    grub = _mtools("mtype", image, "::/EFI/debian/grub.cfg")
    assert "menuentry 'the test kit, from an ISO' --id 'kit' --hotkey=3 {\n  configfile /isoboot/kit.cfg\n}" in grub
    # The kit's kernel is Debian's, signed; the stripped one's menu line says what it needs.
    assert "menuentry 'unsigned-kit (ISO Unsigned Kit.iso) [unsigned: Secure Boot off]'" in grub
    assert "lockdown" in _mtools("mtype", image, "::/isoboot/unsigned-kit.cfg")
    assert "lockdown" not in _mtools("mtype", image, "::/isoboot/kit.cfg")
    assert "LABEL no-loopback\n  KERNEL /isoboot/no-loopback.lnx\n" in _mtools("mtype", image,
                                                                               "::/syslinux/syslinux.cfg")
    isos = iso_stick["manifest"]["images"]["stick"]["isos"]
    assert [(i["entry"], i["file"]) for i in isos] == [("kit", "kit.iso"), ("no-loopback", "No Loopback.iso"),
                                                       ("unsigned-kit", "Unsigned Kit.iso")]


def test_uefi_boots_an_iso_file_through_its_loopback_cfg(iso_stick: dict[str, Any], tmp_path: Path) -> None:
    # vesa-mini-pc boots with Secure Boot on: the kit's kernel is Debian's, which shim trusts.
    ev = _boot(iso_stick, "vesa-mini-pc", tmp_path / "vm", prompt=r"runs from RAM", keys="3")
    assert (ev["os"], ev["role"], ev["host"]) == ("testkit", "iso", "/kit.iso")  # iso_path reached its kernel


def test_secure_boot_refuses_an_unsigned_iso_and_says_why(iso_stick: dict[str, Any], tmp_path: Path) -> None:
    ev = _boot(iso_stick, "vesa-mini-pc", tmp_path / "vm", prompt=r"runs from RAM", keys="5", until="error")
    assert ev["stage"] == "iso" and ev["os"] == "unsigned-kit"
    assert "Secure Boot is on and /unsigned-kit.iso's kernel is not signed" in ev["message"]


def test_bios_boots_an_iso_file_by_its_label(iso_stick: dict[str, Any], tmp_path: Path) -> None:
    ev = _boot(iso_stick, "storage-box", tmp_path / "vm", prompt=r"boot:", keys="kit\r")
    assert (ev["os"], ev["role"], ev["host"]) == ("testkit", "iso", "/kit.iso")


def test_an_iso_without_loopback_cfg_says_so_on_the_console(iso_stick: dict[str, Any], tmp_path: Path) -> None:
    ev = _boot(iso_stick, "storage-box", tmp_path / "vm", prompt=r"boot:", keys="no-loopback\r", until="error")
    assert ev["stage"] == "iso" and ev["os"] == "no-loopback"
    assert "/no-loopback.iso has no /boot/grub/loopback.cfg" in ev["message"]
