"""Content digests of large input files (a user's ISOs), hashed once per version of the file.

A stage's key is made from what its inputs hold, so an ISO's sha256 is one of them; hashing
several GB on every plan would make a no-op rebuild slow. As git's index does, the digest is
kept beside the file's identity and stat (device, inode, size, mtime, ctime): any write to the
file changes its ctime, and the file is hashed again.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from builder.cache import DEFAULT_DIR
from builder.tools import read_memo, write_memo

MEMO = DEFAULT_DIR / "file-digests.json"


def _identity(path: Path) -> str:
    st = os.stat(path)
    return f"{os.path.realpath(path)}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"


def file_digest(path: Path, memo: Path = MEMO) -> str:
    """The file's sha256 (hex); read from the memo when the file is unchanged since."""
    ident = _identity(path)
    known = read_memo(memo)
    if ident in known:
        return known[ident]
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if _identity(path) != ident:  # written while we read it: nothing to remember
        return digest
    here = ident.split("|", 1)[0]
    # Older versions of this file and files that are gone are forgotten.
    live = {k: v for k, v in known.items() if (p := k.split("|", 1)[0]) != here and os.path.exists(p)}
    live[ident] = digest
    write_memo(memo, live)
    return digest
