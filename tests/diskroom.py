"""Keeping the suite's disk use small: a full run builds several GiB of images, caches and guest
disks, and CI's disk is shared and sometimes nearly full.

- pyproject keeps no earlier run's temporary directory and removes a passed test's own.
- A module's build (its cache, images and guest disks) is pruned when the module ends,
  through :func:`module_workdir`, rather than at the end of the whole session.
- A failed test keeps its directory for a post-mortem, but without its big files: the logs and
  consoles that explain a failure are small, the disks are not.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

BIG = 8 * 1024**2  # bytes: images, disks, cache values; logs and consoles stay well under this
ROOM_FOR_SLOW = 12 * 1024**3  # bytes free the slow tests need under the temporary directory (peak measured: 8.9 GiB)


def prune_big_files(root: Path) -> int:
    """Removes the regular files of BIG bytes or more (by the blocks they hold) under ``root``;
    returns the bytes freed."""
    freed = 0
    for folder, _, files in os.walk(root):
        for name in files:
            p = os.path.join(folder, name)
            try:
                st = os.lstat(p)
                if stat.S_ISREG(st.st_mode) and st.st_blocks * 512 >= BIG:
                    os.unlink(p)
                    freed += st.st_blocks * 512
            except OSError:
                pass
    return freed


@contextmanager
def module_workdir(factory: pytest.TempPathFactory, name: str) -> Iterator[Path]:
    """A directory for a module's shared build: its big files go when the module is done."""
    base = factory.mktemp(name)
    try:
        yield base
    finally:
        prune_big_files(base)


def link_tree(src: Path, dest: Path) -> None:
    """A copy of a stage cache in which the value files are hard links: they are written once
    under a new name and only ever unlinked, so both caches can share them; the index (SQLite,
    changed in place) is copied."""
    def place(s: str, d: str) -> None:
        if s.endswith(".val"):
            os.link(s, d)
        else:
            shutil.copy2(s, d)

    shutil.copytree(src, dest, copy_function=place)
