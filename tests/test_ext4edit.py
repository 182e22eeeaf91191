"""Placing overlay files into an ext4 image with debugfs keeps the file system clean.

debugfs 1.47.0's mkdir of a folder that already exists corrupts the file system (wrong link
counts, an unconnected inode): every image's root already has /etc, /usr/lib ..., so placing
an overlay must make only the folders that are missing.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from builder.stages.ext4edit import Put, place


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
