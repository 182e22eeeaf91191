"""What an overlay folder may not be: its tree is copied into every image it applies to.

A profile that names ``/``, ``~``, a system folder, the build's own output or cache, or the
cluster CA's folder would copy the build machine's files (secrets included) into images; a
tree holding device nodes, sockets or FIFOs is not a file tree at all. Each is refused with the
reason, before anything is built.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

# Folders that are the build machine's own system: never an overlay, and nothing above them.
SYSTEM_FOLDERS = ("/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32",
                  "/media", "/mnt", "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp",
                  "/usr", "/var")
# Folders whose insides are live state or secrets: nothing inside them either.
SEALED_FOLDERS = ("/boot", "/dev", "/etc", "/proc", "/run", "/sys")
# Under a home folder: where keys and credentials live (.config holds the cluster CA), and the
# default stage cache.
PRIVATE_IN_HOME = (".ssh", ".gnupg", ".config", ".local/share/keyrings", ".password-store", ".aws", ".kube",
                   ".cache/clusterctl")
SPECIAL_SHOWN = 3  # special files named in the message; the rest are counted
SPECIAL_KINDS = {stat.S_IFCHR: "a device", stat.S_IFBLK: "a device", stat.S_IFSOCK: "a socket",
                 stat.S_IFIFO: "a FIFO"}


def _home() -> str | None:
    home = os.path.expanduser("~")  # $HOME, else the password database
    return os.path.realpath(home) if home != "~" else None


def guarded_folders(extra: Iterable[str | os.PathLike[str]] = ()) -> list[str]:
    """The folders an overlay may neither be, sit in, nor hold: the home folder's private ones,
    and ``extra`` (the build's output, its cache, the CA folder)."""
    out = [os.path.realpath(os.fspath(p)) for p in extra]
    home = _home()
    if home:
        out += [os.path.join(home, p) for p in PRIVATE_IN_HOME]
    return out


def refusal(folder: str, guarded: Sequence[str]) -> str | None:
    """Why ``folder`` (an existing folder, absolute) can't be an overlay, or None."""
    real = os.path.realpath(folder)
    shown = f"{folder} (the link leads to {real})" if real != os.path.normpath(folder) else folder
    home = _home()
    if real in SYSTEM_FOLDERS or real == home:
        what = "your home folder" if real == home else "a system folder"
        return f"{shown} is {what}: an overlay's whole tree is copied into the image (make a folder with " \
               "only the files the hosts need)"
    sealed = next((s for s in SEALED_FOLDERS if Path(real).is_relative_to(s)), None)
    if sealed:
        return f"{shown} is inside {sealed}, the build machine's own live system or secrets: copy the " \
               "files the hosts need into a folder of their own"
    for g in guarded:
        if Path(real).is_relative_to(g):
            return f"{shown} is inside {g}, which holds the build's output, cache or keys"
        if Path(g).is_relative_to(real):
            return f"{shown} holds {g} (the build's output, cache or keys), which would be copied into the image"
    return _special_files(real, shown)


def _special_files(real: str, shown: str) -> str | None:
    """Device nodes, sockets and FIFOs in the tree (symbolic links are copied as links, not followed)."""
    found: list[str] = []
    count = 0
    for top, dirs, files in os.walk(real):
        for name in dirs + files:
            path = os.path.join(top, name)
            try:
                kind = SPECIAL_KINDS.get(stat.S_IFMT(os.lstat(path).st_mode))
            except OSError:
                continue
            if kind:
                count += 1
                if len(found) < SPECIAL_SHOWN:
                    found.append(f"{Path(path).relative_to(real)} ({kind})")
    if not count:
        return None
    more = f" and {count - len(found)} more" if count > len(found) else ""
    return f"{shown} holds {', '.join(found)}{more}: an overlay holds only files, folders and links"
