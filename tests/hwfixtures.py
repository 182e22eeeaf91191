"""Replaying recorded machines: run hardware.detect.collect() under umockdev on Debian's python3.

Shared by the detection tests and the inventory CLI tests. umockdev redirects /sys and /dev
(LD_PRELOAD, so it must wrap a fresh interpreter); /proc and /run come from a per-shape folder
that the caller fills, because umockdev does not fake them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
UMOCKDEV = ROOT / "tests" / "fixtures" / "umockdev"
INVENTORIES = ROOT / "tests" / "fixtures" / "inventory"
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, with python3-pyudev: what the images run

CPUINFO = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: {model}\nflags\t\t: fpu vme\n\n"
MEMINFO = "MemTotal:        {kib} kB\nMemFree:         1000000 kB\n"
MOUNTINFO = "22 1 {devnum} / / rw,relatime shared:1 - {fs} /dev/root rw\n23 22 0:21 / /proc rw - proc proc rw\n"

# What each recorded shape's /proc and /run say (see tests/fixtures/umockdev/README.md).
SHAPES: dict[str, dict[str, Any]] = {
    "nano-itx-desktop": {"cpu": "Intel(R) Celeron(R) CPU J1900 @ 1.99GHz", "mem_kib": 3890000,
                         "root": ("0:1", "tmpfs"), "marker": None, "secure_boot": False},
    "storage-box": {"cpu": "Intel(R) Celeron(R) CPU J1900 @ 1.99GHz", "mem_kib": 7900000,
                    "root": ("8:50", "ext4"), "marker": None, "secure_boot": None},  # legacy BIOS
    "laptop": {"cpu": "11th Gen Intel(R) Core(TM) i7-1165G7 @ 2.80GHz", "mem_kib": 16000000,
               "root": ("0:1", "overlay"), "marker": "/dev/sda2\n", "secure_boot": True},
    "cloud-vm": {"cpu": "AMD EPYC", "mem_kib": 2010000, "root": ("254:0", "ext4"), "marker": None,
                 "secure_boot": False},
}
EFI_GLOBAL = "8be4df61-93ca-11d2-aa0d-00e098032b8c"


def need_umockdev() -> None:
    if shutil.which("umockdev-run") is None or not Path(SYSTEM_PYTHON).exists():
        pytest.skip("umockdev-run (Debian package umockdev) and /usr/bin/python3 are needed")


def fake_roots(shape: str, base: Path) -> tuple[Path, Path, Path]:
    """A /proc, a /run and the firmware part of /sys for ``shape`` under ``base`` (umockdev's
    recordings have no /sys/firmware)."""
    spec = SHAPES[shape]
    proc, run, sys_root = base / "proc", base / "run", base / "sys"
    sys_root.mkdir(parents=True, exist_ok=True)
    if spec["secure_boot"] is not None:  # UEFI: efivarfs files are 4 bytes of attributes, then the value
        efivars = sys_root / "firmware" / "efi" / "efivars"
        efivars.mkdir(parents=True, exist_ok=True)
        (efivars / f"SecureBoot-{EFI_GLOBAL}").write_bytes(b"\x06\0\0\0" + bytes([spec["secure_boot"]]))
        (efivars / f"SetupMode-{EFI_GLOBAL}").write_bytes(b"\x06\0\0\0\0")
    (proc / "self").mkdir(parents=True, exist_ok=True)
    (run / "clusterctl").mkdir(parents=True, exist_ok=True)
    (proc / "cpuinfo").write_text(CPUINFO.format(model=spec["cpu"]))
    (proc / "meminfo").write_text(MEMINFO.format(kib=spec["mem_kib"]))
    devnum, fs = spec["root"]
    (proc / "self" / "mountinfo").write_text(MOUNTINFO.format(devnum=devnum, fs=fs))
    if spec["marker"]:
        (run / "clusterctl" / "medium").write_text(spec["marker"])
    return proc, run, sys_root


def run_under_umockdev(shape: str, code: str, *args: str, python: str = SYSTEM_PYTHON,
                       timeout: float = 60) -> subprocess.CompletedProcess[str]:
    need_umockdev()
    return subprocess.run(
        ["umockdev-run", "-d", str(UMOCKDEV / f"{shape}.umockdev"), "--", python, "-c", code, *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False,
    )


def detect(shape: str, base: Path) -> dict[str, Any]:
    """collect() on the recorded ``shape``, run by Debian's python3 under umockdev."""
    proc, run, sys_root = fake_roots(shape, base)
    code = ("import json, sys; sys.path.insert(0, '.'); from hardware.detect import collect; "
            "print(json.dumps(collect(proc_root=sys.argv[1], run_root=sys.argv[2], sys_root=sys.argv[3])))")
    done = run_under_umockdev(shape, code, str(proc), str(run), str(sys_root))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def load_inventory(name: str) -> dict[str, Any]:
    return json.loads((INVENTORIES / f"{name}.json").read_text())
