"""Acting as the attaching person: which credentials a 9P request runs with, and switching to them.

A peer's kernel client mounted with ``access=user`` attaches once per local user, naming that
user's uid (``n_uname``). Every person of the cluster has one uid on every host (core.ids), so
the server runs that user's requests with the same uid here: with the uid as fsuid, the user's
own group as fsgid and the user's groups on this host, and so without root's file-system
capabilities. The kernel then checks permissions exactly as for a local login.

Who maps to whom (``People.creds``):

- a person of the profile: that person;
- root (uid 0): root only in an export that trusts a peer's root (the role's ``trust_root``),
  otherwise nobody;
- anyone else (a system account, whose uid differs from host to host, or an unknown uid):
  nobody.

Why raw per-thread syscalls: setfsuid and setfsgid are per thread already, but glibc's
setgroups changes every thread of the process (it broadcasts the change), and the agent's other
threads (discovery, mounts) must keep running as root. The kernel's setgroups syscall changes
the calling thread only. Switching is cheap (three syscalls), and done only when the request's
credentials differ from the thread's current ones.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import pwd
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

NOBODY_UID = 65534
NOBODY_GID = 65534
# The kernel's setgroups per architecture (the 32-bit-id setgroups16 on i386 is not it).
_SYS_SETGROUPS = {"x86_64": 116, "aarch64": 159, "riscv64": 159, "armv7l": 206, "i686": 206}


@dataclass(frozen=True)
class Creds:
    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    who: str = ""  # a name for events and messages

    def describe(self) -> str:
        return self.who or str(self.uid)


NOBODY = Creds(NOBODY_UID, NOBODY_GID, (), "nobody")


class CredsError(OSError):
    pass


class _Libc:
    def __init__(self) -> None:
        self.lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self.lib.setfsuid.argtypes = [ctypes.c_uint]
        self.lib.setfsgid.argtypes = [ctypes.c_uint]
        self.lib.syscall.restype = ctypes.c_long
        self.nr_setgroups = _SYS_SETGROUPS.get(platform.machine())

    def setgroups(self, groups: tuple[int, ...]) -> None:
        if self.nr_setgroups is None:
            raise CredsError(0, f"no setgroups syscall number known for {platform.machine()}")
        arr = (ctypes.c_uint * max(1, len(groups)))(*groups)
        if self.lib.syscall(ctypes.c_long(self.nr_setgroups), ctypes.c_long(len(groups)), arr) != 0:
            err = ctypes.get_errno()
            raise CredsError(err, f"setgroups: {os.strerror(err)}")

    def setfsuid(self, uid: int) -> None:
        self.lib.setfsuid(uid)
        if self.lib.setfsuid(0xFFFFFFFF) != uid:  # setfsuid reports no error: read it back
            raise CredsError(1, f"setfsuid({uid}) did not take")

    def setfsgid(self, gid: int) -> None:
        self.lib.setfsgid(gid)
        if self.lib.setfsgid(0xFFFFFFFF) != gid:
            raise CredsError(1, f"setfsgid({gid}) did not take")


_libc: _Libc | None = None
_state = threading.local()


def _lib() -> _Libc:
    global _libc
    if _libc is None:
        _libc = _Libc()
    return _libc


def switch(creds: Creds | None) -> None:
    """Make the calling thread's file-system credentials ``creds`` (None: the process's own)."""
    current = getattr(_state, "creds", None)
    if creds == current:
        return
    lib = _lib()
    if current is None:
        # The thread's own groups, read while they are its own (getgroups is per thread too).
        _state.own_groups = tuple(os.getgroups())
    if creds is None:
        # Back to the process's own: fsuid first, which gives back root's capabilities.
        lib.setfsuid(os.geteuid())
        lib.setfsgid(os.getegid())
        lib.setgroups(_state.own_groups)
    else:
        # CAP_SETUID and CAP_SETGID are not file-system capabilities: they survive a switch.
        lib.setgroups(creds.groups)
        lib.setfsgid(creds.gid)
        lib.setfsuid(creds.uid)  # last: this drops the file-system capabilities
    _state.creds = creds


def can_switch() -> bool:
    """Switching needs CAP_SETUID and CAP_SETGID: in practice, running as root."""
    return os.geteuid() == 0 and platform.machine() in _SYS_SETGROUPS


class People:
    """The cluster's people (uid → name) and the exports that trust a peer's root."""

    def __init__(self, people: Mapping[int, str], trust_root: Iterable[str] = ()) -> None:
        self.people = dict(people)
        self.trust_root = frozenset(trust_root)
        self._cache: dict[int, Creds] = {}

    def creds(self, n_uname: int, export: str | None) -> Creds | None:
        """Who a request of ``n_uname`` runs as in ``export`` (None: the server's own, root)."""
        if n_uname == 0:
            return None if export is not None and export in self.trust_root else NOBODY
        name = self.people.get(n_uname)
        if name is None:
            return NOBODY
        found = self._cache.get(n_uname)
        if found is None:
            found = self._cache[n_uname] = person_creds(name, n_uname)
        return found


def person_creds(name: str, uid: int) -> Creds:
    """The person's groups as this host has them (the build made their accounts with gid =
    uid); a person this host has no account for still gets their own group."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return Creds(uid, uid, (uid,), name)
    gid = entry.pw_gid if entry.pw_uid == uid else uid
    try:
        groups = tuple(sorted(set(os.getgrouplist(name, gid))))
    except OSError:
        groups = (gid,)
    return Creds(uid, gid, groups, name)
