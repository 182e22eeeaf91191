"""Placing overlay files into an ext4 image with debugfs keeps the file system clean.

debugfs 1.47.0's mkdir of a folder that already exists corrupts the file system (wrong link
counts, an unconnected inode): every image's root already has /etc, /usr/lib ..., so placing
an overlay must make only the folders that are missing.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from builder.stages.ext4edit import Put, place
from builder.tools import ToolError
from core.disk.tools import InstallError


def _fsck_clean(img: Path) -> bool:
    return subprocess.run(["e2fsck", "-fn", str(img)], capture_output=True).returncode == 0


def test_placing_into_existing_folders_twice_keeps_fsck_clean(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/lib/clusterctl").mkdir(parents=True)
    (root / "etc").mkdir()
    img = tmp_path / "fs.img"
    with open(img, "wb") as f:
        f.truncate(64 * 2**20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(root), str(img)], check=True)
    srcs = []
    for n in range(5):
        src = tmp_path / f"m{n}.py"
        src.write_text(f"# {n}\n" * 500)
        srcs.append(Put(f"/usr/lib/clusterctl/agent/firstboot/m{n}.py", "file", src=src))
    puts = [Put("/usr/lib/clusterctl/agent", "dir"), *srcs, Put("/etc/clusterctl", "dir", mode=0o700),
            Put("/etc/clusterctl/link", "link", target="/usr/lib/clusterctl")]
    for _ in range(2):
        place(img, 0, puts, tmp_path / "log")
        assert _fsck_clean(img)
    out = subprocess.run(["debugfs", "-R", "cat /usr/lib/clusterctl/agent/firstboot/m4.py", str(img)],
                         capture_output=True, text=True, check=True).stdout
    assert out == "# 4\n" * 500
    stat = subprocess.run(["debugfs", "-R", "stat /etc/clusterctl", str(img)], capture_output=True, text=True,
                          check=True).stdout
    assert "Mode:  0700" in stat


def test_one_debugfs_wrapper_the_installers() -> None:
    """The builder's placing goes through core.disk.ext4 (quoting, benign complaints, running
    debugfs); ext4edit keeps only what is the builder's own."""
    import ast

    import builder.stages.ext4edit as ext4edit
    from core.disk import ext4

    src = Path(ext4edit.__file__).read_text()
    names = {n.id for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Name)}
    assert "subprocess" not in names and "_BENIGN" not in src and "def _q" not in src
    assert ext4edit.Put is ext4.Put
    assert ext4.quote("/etc/x y") == '"/etc/x y"'
    with pytest.raises(InstallError, match="quotes"):
        ext4.quote('/etc/"x"')
    for line in ("debugfs 1.47.0 (5-Feb-2023)", "rm: File not found by ext2_lookup while trying to resolve filename",
                 "unlink: File not found by ext2_lookup while unlinking x", "Allocated inode: 12", ""):
        assert ext4.BENIGN.match(line), line
    assert not ext4.BENIGN.match("write: Could not allocate block in ext2 filesystem while writing file")


def test_a_failed_placement_names_the_stage_log(tmp_path: Path) -> None:
    img = tmp_path / "not-ext4.img"
    with open(img, "wb") as f:
        f.truncate(8 * 2**20)
    log = tmp_path / "log"
    with pytest.raises(ToolError, match="debugfs could not place the overlay") as err:
        place(img, 0, [Put("/etc/x", "dir")], log)
    assert err.value.log == log and "Bad magic number" in log.read_text()
