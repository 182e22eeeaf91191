"""Running the disk tools: one place that turns a failed command into a readable error."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence


class InstallError(RuntimeError):
    """A step of the install failed; ``stage`` names it for the ``error`` event."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


def run(stage: str, argv: Sequence[str], *, stdin: bytes | None = None, ok: Sequence[int] = (0,),
        env: dict[str, str] | None = None) -> str:
    """Run a tool; its stdout as text. Exit codes outside ``ok`` raise :class:`InstallError`."""
    full_env = {**os.environ, "LC_ALL": "C", **(env or {})}
    try:
        proc = subprocess.run(list(argv), input=stdin, capture_output=True, env=full_env)
    except FileNotFoundError:
        raise InstallError(stage, f"{argv[0]} is not installed on this system") from None
    if proc.returncode not in ok:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        tail = "; ".join(err[-3:]) or f"exit status {proc.returncode}"
        raise InstallError(stage, f"{' '.join(argv[:2])}: {tail}")
    return proc.stdout.decode("utf-8", "replace")


MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1", "MTOOLS_NO_VFAT": "0"}


def fat(disk: str, offset: int) -> str:
    """mtools' name for the FAT file system ``offset`` bytes into ``disk``."""
    return f"{disk}@@{offset}"


def ext4(disk: str, offset: int) -> str:
    """e2fsprogs' name for the ext4 file system ``offset`` bytes into ``disk`` (unix_io option)."""
    return f"{disk}?offset={offset}"
