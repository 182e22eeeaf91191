"""The FUSE 9P client (``clusterctl agent mount``) as a file system: create, write, read
back, rename, remove, links, attributes, a large file's checksum, and the state trees; against
our server, and the basics against diod too."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.ninep.localfs import Export
from core.events import parse_line
from testdriver.ninep_servers import OurServer, diod_path, diod_server

REPO = Path(__file__).resolve().parents[1]


def fuse_available() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    try:
        import pyfuse3  # noqa: F401
    except ImportError:
        return "pyfuse3 is not installed (python3-pyfuse3)"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is missing (fuse3)"
    return None


pytestmark = pytest.mark.skipif(fuse_available() is not None, reason=str(fuse_available()))


class Mount:
    def __init__(self, address: str, mountpoint: Path, aname: str) -> None:
        self.mountpoint = mountpoint
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "builder.cli", "agent", "mount", address, str(mountpoint), "--aname", aname],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the "mounted" event, or EOF on failure
        ev = parse_line(line)
        if ev is None or ev["event"] != "mounted":
            self.proc.kill()
            raise RuntimeError(f"mount failed: {line!r} {self.proc.stderr.read() if self.proc.stderr else ''}")
        deadline = time.monotonic() + 10
        while not os.path.ismount(mountpoint):
            if time.monotonic() > deadline:
                raise RuntimeError("mount point never appeared")
            time.sleep(0.05)

    def close(self) -> None:
        subprocess.run(["fusermount3", "-u", str(self.mountpoint)], check=False, capture_output=True)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            subprocess.run(["fusermount3", "-uz", str(self.mountpoint)], check=False, capture_output=True)


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, Path]]:
    base = tmp_path_factory.mktemp("fuse")
    export, mnt, hostmnt = base / "export", base / "mnt", base / "host"
    for p in (export, mnt, hostmnt):
        p.mkdir()
    server = OurServer([Export("data", str(export))], ctl_allow=["event"]).start()
    m = Mount(server.address, mnt, "data")
    h = Mount(server.address, hostmnt, "")
    try:
        yield export, mnt, hostmnt
    finally:
        m.close()
        h.close()
        server.stop()


def exercise(export: Path, mnt: Path) -> None:
    """The common file-system round: what any 9P2000.L server should pass through FUSE."""
    f = mnt / "hello.txt"
    f.write_bytes(b"hello over 9p\n")
    assert (export / "hello.txt").read_bytes() == b"hello over 9p\n"
    assert f.read_bytes() == b"hello over 9p\n"
    with open(f, "ab") as fh:
        fh.write(b"more\n")
    assert (export / "hello.txt").read_bytes() == b"hello over 9p\nmore\n"
    os.rename(f, mnt / "renamed.txt")
    assert not (export / "hello.txt").exists() and (export / "renamed.txt").exists()
    (mnt / "dir").mkdir()
    os.rename(mnt / "renamed.txt", mnt / "dir" / "moved.txt")
    assert sorted(os.listdir(mnt / "dir")) == ["moved.txt"]
    assert (mnt / "dir" / "moved.txt").stat().st_size == len(b"hello over 9p\nmore\n")
    assert (mnt / "dir" / "moved.txt").read_bytes() == b"hello over 9p\nmore\n"  # opened after the move
    os.unlink(mnt / "dir" / "moved.txt")
    os.rmdir(mnt / "dir")
    assert not (export / "dir").exists()
    with pytest.raises(OSError):
        (mnt / "missing").read_bytes()


def test_file_system_round(ours: tuple[Path, Path, Path]) -> None:
    export, mnt, _host = ours
    exercise(export, mnt)


def test_large_file_checksum(ours: tuple[Path, Path, Path]) -> None:
    export, mnt, _host = ours
    data = os.urandom(24 << 20)
    digest = hashlib.sha256(data).hexdigest()
    with open(mnt / "big.bin", "wb") as fh:
        for i in range(0, len(data), 1 << 20):
            fh.write(data[i:i + (1 << 20)])
    assert hashlib.sha256((export / "big.bin").read_bytes()).hexdigest() == digest
    h = hashlib.sha256()
    with open(mnt / "big.bin", "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    assert h.hexdigest() == digest
    os.unlink(mnt / "big.bin")


def test_attributes_links_and_listing(ours: tuple[Path, Path, Path]) -> None:
    export, mnt, _host = ours
    (mnt / "a").write_bytes(b"0123456789")
    os.chmod(mnt / "a", 0o600)
    assert stat.S_IMODE((export / "a").stat().st_mode) == 0o600
    os.truncate(mnt / "a", 3)
    assert (export / "a").read_bytes() == b"012"
    os.utime(mnt / "a", ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))
    assert (export / "a").stat().st_mtime_ns == 1_500_000_000_000_000_000
    os.symlink("a", mnt / "ln")
    assert os.readlink(mnt / "ln") == "a" and os.readlink(export / "ln") == "a"
    assert (mnt / "ln").read_bytes() == b"012"  # followed by the client, inside the mount
    os.link(mnt / "a", mnt / "hard")
    assert (export / "hard").stat().st_ino == (export / "a").stat().st_ino
    assert (mnt / "a").stat().st_nlink == 2
    for i in range(300):
        (export / f"many{i:03d}").write_bytes(b"")
    names = os.listdir(mnt)
    assert {f"many{i:03d}" for i in range(300)} <= set(names) and {"a", "ln", "hard"} <= set(names)
    sv, real = os.statvfs(mnt), os.statvfs(export)
    assert sv.f_blocks * sv.f_frsize == real.f_blocks * real.f_frsize
    with pytest.raises(PermissionError):
        os.mkfifo(mnt / "fifo")  # mknod is refused by the server


def test_state_trees_through_fuse(ours: tuple[Path, Path, Path]) -> None:
    _export, _mnt, host = ours
    assert {"fs", "hw", "os", "svc", "status", "events", "ctl"} <= set(os.listdir(host))
    status = json.loads((host / "status").read_text())
    assert status["exports"][0]["name"] == "data"
    assert (host / "os" / "kernel" / "release").read_text().strip() == os.uname().release
    assert json.loads((host / "hw" / "json").read_text())
    assert "hello" not in os.listdir(host / "fs" / "data")
    with open(host / "events", "rb", buffering=0) as ev:
        (host / "ctl").write_text("event from-fuse\n")
        line = ev.read(4096).decode()
    parsed = parse_line(line)
    assert parsed is not None and parsed["event"] == "from-fuse"


@pytest.mark.skipif(diod_path() is None, reason="diod is not installed")
def test_file_system_round_against_diod(tmp_path: Path) -> None:
    export, mnt = tmp_path / "export", tmp_path / "mnt"
    export.mkdir()
    mnt.mkdir()
    with diod_server(str(export)) as address:
        m = Mount(address, mnt, str(export))
        try:
            exercise(export, mnt)
        finally:
            m.close()


def test_mount_goes_away_with_the_server(tmp_path: Path) -> None:
    export, mnt = tmp_path / "export", tmp_path / "mnt"
    export.mkdir()
    mnt.mkdir()
    server = OurServer([Export("data", str(export))]).start()
    m = Mount(server.address, mnt, "data")
    try:
        (mnt / "f").write_bytes(b"x")
        server.stop()  # the server hangs up: the client unmounts instead of hanging callers
        assert m.proc.wait(10) == 0
        assert not os.path.ismount(mnt)
    finally:
        m.close()
