"""The content-addressed stage cache, on ``diskcache``.

Each finished stage is one entry: its output file (moved in, not copied: partitions are
hundreds of MB) and a small record (what it was made from, what the manifest needs). An
entry is written in one transaction after the output is whole, so an interrupted stage
leaves nothing behind but scratch files under ``work/`` that the next run removes.

Per-host secrets never come here: they live beside the build output (see builder/secrets.py).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diskcache

SHM = Path("/dev/shm")
DEFAULT_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "clusterctl"
LIMIT = 64 * 1024**3  # root tarballs and partitions are large; evict least recently used past this


@dataclass(frozen=True)
class MoveIn:
    """A finished file to be renamed into the cache (it must be on the cache's file system)."""

    path: Path


class _MoveDisk(diskcache.Disk):
    """diskcache's storage, taught to take a file by rename instead of copying its bytes."""

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> tuple[Any, ...]:
        if isinstance(value, MoveIn):
            filename, full_path = self.filename(key, value)
            Path(full_path).parent.mkdir(parents=True, exist_ok=True)
            os.rename(value.path, full_path)
            return os.path.getsize(full_path), diskcache.core.MODE_BINARY, filename, None
        return super().store(value, read, key)


class StageCache:
    def __init__(self, directory: Path | None = None) -> None:
        self.dir = Path(directory) if directory else DEFAULT_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cache = diskcache.Cache(str(self.dir / "stages"), disk=_MoveDisk, size_limit=LIMIT,
                                     eviction_policy="least-recently-used")
        self.work_root = self.dir / "work"
        self.work_root.mkdir(exist_ok=True)

    def close(self) -> None:
        self.cache.close()

    # -- entries ------------------------------------------------------------------------
    def has(self, key: str) -> bool:
        rec = self.cache.get(("rec", key))
        if rec is None:
            return False
        if rec.get("file"):
            return self.path(key) is not None
        return True

    def record(self, key: str) -> dict[str, Any] | None:
        rec = self.cache.get(("rec", key))
        return rec if isinstance(rec, dict) else None

    def path(self, key: str) -> Path | None:
        """Where the stage's output file lies inside the cache (read-only use)."""
        handle = self.cache.get(("out", key), read=True)
        if handle is None:
            return None
        try:
            return Path(handle.name)
        finally:
            handle.close()

    def commit(self, key: str, record: dict[str, Any], output: Path | None) -> None:
        """Store a finished stage: its file (moved in) and record, together or not at all."""
        with self.cache.transact():
            if output is not None:
                self.cache.set(("out", key), MoveIn(output), read=True)
            self.cache.set(("rec", key), {**record, "file": output is not None})

    # -- what ran last, per stage name, for --explain ---------------------------------------
    def last(self, scope: str, name: str) -> dict[str, Any] | None:
        value = self.cache.get(("last", scope, name))
        return value if isinstance(value, dict) else None

    def remember(self, scope: str, name: str, value: dict[str, Any]) -> None:
        self.cache.set(("last", scope, name), value)

    # -- scratch space on the cache's file system (so outputs can be renamed in) ------------
    def workdir(self, label: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{label.replace('/', '_').replace(':', '_')}.",
                                     dir=self.work_root))

    @property
    def tag(self) -> str:
        """Names scratch kept outside the cache (in RAM) as this cache's, for clean_stale_work."""
        return hashlib.sha256(str(self.dir.resolve()).encode()).hexdigest()[:10]

    def ram_scratch(self) -> Path | None:
        """A scratch folder in /dev/shm when it has room (unpacking a root there is twice as fast)."""
        try:
            st = os.statvfs(SHM)
            if st.f_bavail * st.f_frsize > 6 * 1024**3:
                return Path(tempfile.mkdtemp(prefix=f"clusterctl-{self.tag}.", dir=SHM))
        except OSError:
            pass
        return None

    def clean_stale_work(self) -> None:
        """Remove scratch left by builds that were killed (called under the build lock, so no
        other build of this cache is running)."""
        stale = list(self.work_root.iterdir())
        if SHM.is_dir():
            stale += list(SHM.glob(f"clusterctl-{self.tag}.*"))
        for p in stale:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
