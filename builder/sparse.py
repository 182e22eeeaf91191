"""Sparse files: where the data is, and copying only that (holes stay holes)."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator


def data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) byte ranges holding data, from the file system's own map (SEEK_DATA/HOLE)."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as err:
            if err.errno == errno.ENXIO:  # only a hole remains
                return
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end
        pos = end


def copy_sparse(src_path: str, dst_fd: int, dst_offset: int) -> int:
    """Copy a (sparse) file into ``dst_fd`` at ``dst_offset``; returns bytes of data copied."""
    copied = 0
    with open(src_path, "rb") as src:
        sfd = src.fileno()
        size = os.fstat(sfd).st_size
        for start, end in data_extents(sfd, size):
            off = start
            while off < end:
                n = os.copy_file_range(sfd, dst_fd, end - off, off, dst_offset + off)
                if n == 0:
                    raise OSError(f"{src_path}: short copy at {off}")
                off += n
            copied += end - start
    return copied
