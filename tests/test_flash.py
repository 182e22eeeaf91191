"""Block maps and flashing, against bmap-tools and real files and devices (no image build)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from builder.bmap import BmapError, compute_bmap, read_bmap, write_bmap
from builder.flash import FlashRefused, flash, inspect_target

ROOT = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024


def _sparse_image(path: Path) -> bytes:
    """A 64 MiB file with three islands of data; returns its full content for comparison."""
    with open(path, "wb") as f:
        f.truncate(64 * MiB)
        for off, byte in ((0, b"A"), (5 * MiB + 4096, b"B"), (63 * MiB, b"C")):
            f.seek(off)
            f.write(byte * (3 * 4096 + 17))
    return path.read_bytes()


def _quiet() -> Console:
    return Console(file=open(os.devnull, "w"), force_terminal=False)


def test_bmap_is_read_by_bmaptool(tmp_path: Path) -> None:
    img = tmp_path / "x.img"
    content = _sparse_image(img)
    bmap = write_bmap(img, tmp_path / "x.img.bmap")
    assert bmap.mapped_blocks * 4096 < 1 * MiB  # the holes are not in the map
    target = tmp_path / "copy.img"
    subprocess.run(["bmaptool", "copy", "--bmap", str(tmp_path / "x.img.bmap"), str(img), str(target)],
                   check=True, capture_output=True)
    assert target.read_bytes() == content
    # Our reader accepts what we wrote and checks the file's own checksum.
    assert read_bmap(tmp_path / "x.img.bmap") == bmap


def test_damaged_bmap_is_refused(tmp_path: Path) -> None:
    img = tmp_path / "x.img"
    _sparse_image(img)
    write_bmap(img, tmp_path / "x.img.bmap")
    text = (tmp_path / "x.img.bmap").read_text().replace("<ImageSize> ", "<ImageSize> 1", 1)
    (tmp_path / "x.img.bmap").write_text(text)
    with pytest.raises(BmapError, match="own checksum"):
        read_bmap(tmp_path / "x.img.bmap")
    # bmaptool agrees that it is damaged.
    r = subprocess.run(["bmaptool", "copy", "--bmap", str(tmp_path / "x.img.bmap"), str(img),
                        str(tmp_path / "t.img")], capture_output=True, text=True)
    assert r.returncode != 0


def test_flash_to_a_file_needs_force_and_verifies(tmp_path: Path) -> None:
    img = tmp_path / "x.img"
    content = _sparse_image(img)
    write_bmap(img, tmp_path / "x.img.bmap")
    target = tmp_path / "stick.img"
    with pytest.raises(FlashRefused, match="--force"):
        flash(img, target, assume_yes=True, console=_quiet())
    assert not target.exists()
    target.write_bytes(b"old data " * 100000)  # something already there: must be replaced whole
    flash(img, target, force=True, assume_yes=True, console=_quiet())
    assert target.read_bytes() == content


def test_flash_refuses_a_damaged_image(tmp_path: Path) -> None:
    img = tmp_path / "x.img"
    _sparse_image(img)
    write_bmap(img, tmp_path / "x.img.bmap")
    with open(img, "r+b") as f:
        f.seek(5 * MiB + 4096 + 10)
        f.write(b"Z")
    with pytest.raises(Exception, match="damaged"):
        flash(img, tmp_path / "t.img", force=True, assume_yes=True, console=_quiet())


def _fixed_disk() -> Path | None:
    """A whole, non-removable disk of this machine (never written: refusal is what is tested)."""
    for name in sorted(os.listdir("/sys/block")):
        sysdir = Path("/sys/block") / name
        if name.startswith(("loop", "ram", "zram", "sr", "dm-", "md")):
            continue
        fixed = (sysdir / "removable").read_text().strip() == "0" and "/usb" not in str(sysdir.resolve())
        if fixed and Path(f"/dev/{name}").exists():
            return Path(f"/dev/{name}")
    return None


def test_flash_refuses_a_fixed_disk(tmp_path: Path) -> None:
    disk = _fixed_disk()
    if disk is None:
        pytest.skip("this machine shows no fixed disk")
    img = tmp_path / "x.img"
    _sparse_image(img)
    target = inspect_target(disk)
    assert target.kind == "disk" and not target.removable
    assert target.size > 0
    # Through the command, as a person would type it: exit 2 and a reason, nothing written.
    r = subprocess.run([sys.executable, "-m", "builder", "flash", str(img), str(disk), "--yes"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2, r.stderr
    assert "not a removable disk" in r.stderr or "in use" in r.stderr
    assert "Traceback" not in r.stderr


def test_flash_refuses_a_qcow2(tmp_path: Path) -> None:
    img = tmp_path / "x.img"
    _sparse_image(img)
    q = tmp_path / "x.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(img), str(q)], check=True)
    r = subprocess.run([sys.executable, "-m", "builder", "flash", str(q), str(tmp_path / "t"), "--force", "--yes"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "qcow2" in r.stderr


def test_compute_bmap_matches_the_data(tmp_path: Path) -> None:
    img = tmp_path / "x.img"
    _sparse_image(img)
    ranges = [(a, b) for a, b, _ in compute_bmap(img).ranges]
    # 3 blocks and 17 bytes at each island: 4 blocks each, nothing else.
    assert ranges == [(0, 3), (5 * 256 + 1, 5 * 256 + 4), (63 * 256, 63 * 256 + 3)]
