"""Mounting a peer at <namespace>/<peer> on an authenticated socket, and forcing it down.

Two ways, one interface:

- ``KernelMount``: the kernel's v9fs, ``mount -t 9p -o trans=fd,rfdno=N,wfdno=N,...`` with the
  socket inherited (agent.peer.kernel_mount_argv). The agent keeps its copy of the socket:
  forcing the mount down shuts that socket (v9fs then fails every pending and later request
  with EIO at once), then ``umount -f`` and ``umount -l`` detach it even while files are open.
- ``FuseMount``: where the kernel has no 9p (this build machine, some distributions), the
  agent's own FUSE client (agent.fuse9p) in a child process, on the same inherited socket.
  Forcing it down kills the child (the kernel answers pending FUSE requests ENOTCONN) and
  detaches the mount with ``fusermount3 -u -z``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent.peer import kernel_mount_argv

MSIZE = 1 << 20
MOUNT_TIMEOUT = 30.0


class MountError(RuntimeError):
    pass


def unescape(field_: str) -> str:
    # /proc/mounts writes space, tab, newline and backslash as octal escapes.
    out, i = [], 0
    while i < len(field_):
        if field_[i] == "\\" and i + 4 <= len(field_) and field_[i + 1:i + 4].isdigit():
            out.append(chr(int(field_[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field_[i])
            i += 1
    return "".join(out)


def mounts_under(top: Path, mounts: str = "/proc/mounts") -> list[tuple[str, str]]:
    """(mount point, type) of every mount strictly below ``top``, deepest first."""
    out = []
    prefix = str(top).rstrip("/") + "/"
    with open(mounts, encoding="utf-8", errors="replace") as f:
        for line in f:
            cols = line.split()
            if len(cols) >= 3:
                point = unescape(cols[1])
                if point.startswith(prefix):
                    out.append((point, cols[2]))
    return sorted(out, key=lambda m: -len(m[0]))


def is_mounted(path: Path, mounts: str = "/proc/mounts") -> bool:
    return any(point == str(path) for point, _t in mounts_under(path.parent, mounts))


def _quiet(argv: list[str], timeout: float = 10.0) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=timeout, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def clear_stale(namespace: Path) -> list[str]:
    """Detach 9P mounts (kernel or FUSE) a previous agent left below the namespace: their
    sockets died with it."""
    gone = []
    try:
        found = mounts_under(namespace)
    except OSError:
        return gone
    for point, kind in found:
        if kind == "9p":
            _quiet(["umount", "-f", point])
            if _quiet(["umount", "-l", point]):
                gone.append(point)
        elif kind == "fuse.9p" and _quiet(["fusermount3", "-u", "-z", point]):
            gone.append(point)
    return gone


@dataclass
class Mounted:
    peer: str
    path: Path
    sock: socket.socket
    backend: str
    child: subprocess.Popen[bytes] | None = field(default=None, repr=False)


class KernelMount:
    name = "v9fs"

    @staticmethod
    def available() -> bool:
        _quiet(["modprobe", "-a", "9pnet_fd", "9p"])
        try:
            with open("/proc/filesystems", encoding="utf-8") as f:
                return any(line.split()[-1:] == ["9p"] for line in f)
        except OSError:
            return False

    def mount(self, sock: socket.socket, peer: str, path: Path, msize: int = MSIZE) -> Mounted:
        path.mkdir(parents=True, exist_ok=True)
        fd = sock.fileno()
        argv = kernel_mount_argv(fd, peer, msize=msize, mountpoint=str(path))
        try:
            proc = subprocess.run(argv, pass_fds=(fd,), capture_output=True, text=True, timeout=MOUNT_TIMEOUT,
                                  check=False)
        except subprocess.TimeoutExpired:
            raise MountError(f"mount of {peer} at {path} did not finish in {MOUNT_TIMEOUT:.0f} s") from None
        if proc.returncode != 0:
            raise MountError(f"mount of {peer} at {path}: {proc.stderr.strip() or f'exit {proc.returncode}'}")
        return Mounted(peer, path, sock, self.name)

    def force_down(self, m: Mounted) -> None:
        with contextlib.suppress(OSError):
            m.sock.shutdown(socket.SHUT_RDWR)
        _quiet(["umount", "-f", str(m.path)])
        _quiet(["umount", "-l", str(m.path)])
        m.sock.close()


class FuseMount:
    name = "fuse"

    @staticmethod
    def available() -> bool:
        try:
            import pyfuse3  # noqa: F401
        except ImportError:
            return False
        return os.path.exists("/dev/fuse")

    def mount(self, sock: socket.socket, peer: str, path: Path, msize: int = MSIZE) -> Mounted:
        path.mkdir(parents=True, exist_ok=True)
        fd = sock.fileno()
        child = subprocess.Popen([sys.executable, "-m", "agent.mesh.mounts", str(fd), peer, str(path), str(msize)],
                                 pass_fds=(fd,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE)
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not is_mounted(path):
            if child.poll() is not None:
                err = child.stderr.read().decode(errors="replace").strip() if child.stderr else ""
                raise MountError(f"FUSE mount of {peer} at {path} failed: {err or f'exit {child.returncode}'}")
            if time.monotonic() > deadline:
                child.kill()
                child.wait()
                raise MountError(f"FUSE mount of {peer} at {path} did not come up in {MOUNT_TIMEOUT:.0f} s")
            time.sleep(0.05)
        return Mounted(peer, path, sock, self.name, child)

    def force_down(self, m: Mounted) -> None:
        with contextlib.suppress(OSError):
            m.sock.shutdown(socket.SHUT_RDWR)
        if m.child is not None and m.child.poll() is None:
            m.child.kill()
            m.child.wait()
        if m.child is not None and m.child.stderr is not None:
            m.child.stderr.close()
        _quiet(["fusermount3", "-u", "-z", str(m.path)])
        m.sock.close()


def pick_backend(prefer: str = "auto") -> KernelMount | FuseMount:
    if prefer in ("auto", "v9fs") and KernelMount.available():
        return KernelMount()
    if prefer in ("auto", "fuse") and FuseMount.available():
        return FuseMount()
    raise MountError("no way to mount peers: no 9p kernel module and no FUSE (python3-pyfuse3, /dev/fuse)")


def _fuse_child(argv: list[str]) -> int:
    """The FUSE backend's child: serve the mount on the inherited, authenticated socket."""
    from agent.fuse9p import mount

    fd, peer, path, msize = int(argv[0]), argv[1], argv[2], int(argv[3])
    sock = socket.socket(fileno=fd)
    return mount(f"mesh:{peer}", path, msize=msize, sock=sock)


if __name__ == "__main__":
    sys.exit(_fuse_child(sys.argv[1:]))
