"""Exports are jails: '..', symlinks (absolute, relative, swapped in mid-use), device files
and cross-export links never reach outside; read-only exports refuse every change."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.ninep import proto
from agent.ninep.client import Client
from agent.ninep.localfs import Export
from testdriver.ninep_servers import OurServer, run

ROOT = 1


@pytest.fixture(scope="module")
def jail(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OurServer, Path]]:
    base = tmp_path_factory.mktemp("jail")
    (base / "secret").write_bytes(b"SECRET outside every export")
    for name in ("rw", "ro", "other"):
        (base / name).mkdir()
    (base / "ro" / "kept").write_bytes(b"read-only data")
    (base / "ro" / "dir").mkdir()
    server = OurServer([Export("rw", str(base / "rw")), Export("ro", str(base / "ro"), readonly=True),
                        Export("other", str(base / "other"))]).start()
    try:
        yield server, base
    finally:
        server.stop()


async def err(aw: object) -> int:
    try:
        result = await aw  # type: ignore[misc]
    except OSError as exc:
        return exc.errno or 0
    raise AssertionError(f"expected an error, got {result!r}")


async def connect(server: OurServer, aname: str) -> Client:
    c = await Client.connect(server.address)
    await c.attach(ROOT, aname)
    return c


def test_dotdot_stops_at_the_export_root(jail: tuple[OurServer, Path]) -> None:
    server, _base = jail

    async def go() -> None:
        c = await connect(server, "rw")
        root_qid = (await c.getattr(ROOT))["qid"]
        qids = await c.walk(ROOT, 2, ["..", "..", ".."])
        assert qids == [root_qid] * 3
        # up then down again names the export's own children, never its parent's
        assert await c.walk(ROOT, 3, ["..", "secret"]) == [root_qid]  # stops: no such name
        assert await c.walk(ROOT, 4, ["..", "..", "secret"]) == [root_qid, root_qid]
        assert await err(c.getattr(4)) == errno.EBADF
        assert await err(c.walk(ROOT, 5, ["../secret"])) == errno.EINVAL
        assert await err(c.walk(ROOT, 6, ["/"])) == errno.EINVAL
        await c.close()

    run(go())


def test_symlinks_are_never_followed(jail: tuple[OurServer, Path]) -> None:
    server, base = jail
    rw = base / "rw"
    os.symlink("/", rw / "to-root")
    os.symlink("../secret", rw / "to-secret")
    os.symlink(str(base / "secret"), rw / "abs-secret")
    os.symlink("../..", rw / "up")

    async def go() -> None:
        c = await connect(server, "rw")
        for name, inside in (("to-root", "etc"), ("up", "secret")):
            qids = await c.walk(ROOT, 2, [name, inside])  # stops at the link itself
            assert len(qids) == 1 and qids[0].type == proto.QTSYMLINK
            assert await err(c.walk(ROOT, 2, [name, inside, "passwd"][1:])) == errno.ENOENT
        for name in ("to-secret", "abs-secret", "to-root"):
            await c.walk(ROOT, 3, [name])
            assert stat.S_ISLNK((await c.getattr(3))["mode"])
            assert await err(c.lopen(3, proto.L_O_RDONLY)) == errno.ELOOP
            assert await err(c.setattr(3, proto.SETATTR_SIZE, size=0)) in (errno.EINVAL, errno.ELOOP)
            assert await err(c.xattrwalk(3, 4, "user.x")) == errno.ENODATA
            await c.clunk(3)
        # creating through a symlinked directory name is creating in the export, by name only
        await c.walk(ROOT, 5, [])
        assert await err(c.lcreate(5, "to-secret", proto.L_O_RDWR, 0o644)) in (errno.ELOOP, errno.EEXIST)
        await c.close()

    run(go())
    assert (base / "secret").read_bytes() == b"SECRET outside every export"


def test_swapped_symlink_after_walk(jail: tuple[OurServer, Path]) -> None:
    server, base = jail
    rw = base / "rw"
    (rw / "victim").write_bytes(b"inside")
    (rw / "vdir").mkdir()
    (rw / "vdir" / "file").write_bytes(b"in vdir")

    async def go() -> None:
        c = await connect(server, "rw")
        await c.walk(ROOT, 2, ["victim"])
        await c.walk(ROOT, 3, ["vdir"])
        # swap both names for symlinks pointing outside, after the walk and before the open
        os.rename(rw / "victim", rw / "victim.old")
        os.symlink(str(base / "secret"), rw / "victim")
        os.rename(rw / "vdir", rw / "vdir.old")
        os.symlink(str(base), rw / "vdir")
        await c.lopen(2, proto.L_O_RDONLY)
        assert await c.read(2, 0, 100) == b"inside"
        assert await err(c.walk(3, 4, ["secret"])) == errno.ENOENT
        await c.walk(3, 5, ["file"])
        await c.lopen(5, proto.L_O_RDONLY)
        assert await c.read(5, 0, 100) == b"in vdir"
        await c.close()

    run(go())


def test_symlink_swap_race(jail: tuple[OurServer, Path]) -> None:
    """A thread flips a name between a file and a symlink to the secret while the client
    walks, opens and reads it: the secret never comes back."""
    server, base = jail
    rw = base / "rw"
    (rw / "flip.file").write_bytes(b"harmless")
    os.symlink(str(base / "secret"), rw / "flip.link")
    stop = threading.Event()

    def flipper() -> None:
        while not stop.is_set():
            for src in ("flip.file", "flip.link"):
                os.link(rw / src, rw / "flip.tmp", follow_symlinks=False)
                os.replace(rw / "flip.tmp", rw / "flip")

    t = threading.Thread(target=flipper, daemon=True)
    t.start()

    async def go() -> dict[str, int]:
        seen = {"read": 0, "refused": 0}
        c = await connect(server, "rw")
        for i in range(300):
            fid = 10 + i
            try:
                await c.walk(ROOT, fid, ["flip"])
                await c.lopen(fid, proto.L_O_RDONLY)
                data = await c.read(fid, 0, 100)
                assert b"SECRET" not in data
                assert data == b"harmless"
                seen["read"] += 1
            except OSError as exc:
                assert exc.errno in (errno.ELOOP, errno.ENOENT)
                seen["refused"] += 1
            finally:
                with contextlib.suppress(OSError):
                    await c.clunk(fid)
        await c.close()
        return seen

    try:
        seen = run(go())
    finally:
        stop.set()
        t.join()
    assert seen["read"] > 0 and seen["read"] + seen["refused"] == 300


def test_device_files_and_fifos_are_not_opened(jail: tuple[OurServer, Path]) -> None:
    server, base = jail
    rw = base / "rw"
    os.mkfifo(rw / "fifo")
    has_dev = True
    try:
        os.mknod(rw / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        has_dev = False  # not root: the FIFO still covers the rule

    async def go() -> None:
        c = await connect(server, "rw")
        for name in ["fifo"] + (["null"] if has_dev else []):
            await c.walk(ROOT, 2, [name])
            assert await err(c.lopen(2, proto.L_O_RDONLY)) == errno.EACCES
            assert await err(c.lopen(2, proto.L_O_WRONLY)) == errno.EACCES
            await c.clunk(2)
        await c.walk(ROOT, 3, [])
        assert await err(c.mknod(3, "zero", stat.S_IFCHR | 0o666, 1, 5)) == errno.EPERM
        await c.close()

    run(go())


def test_no_links_or_renames_across_exports(jail: tuple[OurServer, Path]) -> None:
    server, base = jail
    (base / "other" / "theirs").write_bytes(b"other export")

    async def go() -> None:
        c = await connect(server, "")  # the whole host: fs/rw, fs/ro, fs/other
        await c.walk(ROOT, 2, ["fs", "rw"])
        await c.walk(ROOT, 3, ["fs", "ro", "kept"])
        await c.walk(ROOT, 4, ["fs", "other", "theirs"])
        await c.walk(ROOT, 5, ["fs", "other"])
        # a hard link of a read-only export's file into a writable one would make it writable
        assert await err(c.link(2, 3, "stolen")) == errno.EXDEV
        assert await err(c.link(2, 4, "stolen")) == errno.EXDEV
        assert await err(c.renameat(5, "theirs", 2, "moved")) == errno.EXDEV
        assert await err(c.rename(4, 2, "moved")) == errno.EXDEV
        # and '..' from an export root leads to fs/, not to the directory on disk
        fs_qid = (await c.walk(ROOT, 6, ["fs"]))[0]
        assert await c.walk(2, 7, [".."]) == [fs_qid]
        await c.close()

    run(go())
    assert not (base / "rw" / "stolen").exists() and (base / "other" / "theirs").exists()


def test_bad_names_are_refused(jail: tuple[OurServer, Path]) -> None:
    server, base = jail

    async def go() -> None:
        c = await connect(server, "rw")
        await c.walk(ROOT, 2, [])
        for bad in ("../escape", "a/b", "", "x\0y"):
            assert await err(c.mkdir(ROOT, bad, 0o755)) == errno.EINVAL
            assert await err(c.symlink(ROOT, bad, "/")) == errno.EINVAL
            assert await err(c.unlinkat(ROOT, bad)) == errno.EINVAL
            assert await err(c.lcreate(2, bad, proto.L_O_RDWR, 0o644)) == errno.EINVAL
        await c.close()

    run(go())
    assert not (base / "escape").exists()


def test_read_only_export_refuses_every_change(jail: tuple[OurServer, Path]) -> None:
    server, base = jail
    ro = base / "ro"
    before = {p.name: (p.stat().st_mtime_ns, p.stat().st_mode) for p in ro.iterdir()}

    async def go() -> None:
        c = await connect(server, "ro")
        await c.walk(ROOT, 2, ["kept"])
        await c.walk(ROOT, 3, ["dir"])
        await c.walk(ROOT, 4, [])
        await c.walk(ROOT, 5, ["kept"])
        await c.lopen(5, proto.L_O_RDONLY)
        assert await c.read(5, 0, 100) == b"read-only data"  # reading works
        for flags in (proto.L_O_WRONLY, proto.L_O_RDWR, proto.L_O_RDONLY | proto.L_O_TRUNC,
                      proto.L_O_WRONLY | proto.L_O_APPEND):
            assert await err(c.lopen(2, flags)) == errno.EROFS
        assert await err(c.lcreate(4, "new", proto.L_O_RDWR, 0o644)) == errno.EROFS
        assert await err(c.mkdir(ROOT, "new", 0o755)) == errno.EROFS
        assert await err(c.symlink(ROOT, "new", "x")) == errno.EROFS
        assert await err(c.mknod(ROOT, "new", stat.S_IFREG | 0o644)) == errno.EROFS
        assert await err(c.link(ROOT, 2, "new")) == errno.EROFS
        assert await err(c.unlinkat(ROOT, "kept")) == errno.EROFS
        assert await err(c.unlinkat(ROOT, "dir", proto.AT_REMOVEDIR)) == errno.EROFS
        assert await err(c.renameat(ROOT, "kept", ROOT, "renamed")) == errno.EROFS
        assert await err(c.rename(2, 3, "renamed")) == errno.EROFS
        for valid in (proto.SETATTR_MODE, proto.SETATTR_SIZE, proto.SETATTR_UID,
                      proto.SETATTR_MTIME | proto.SETATTR_MTIME_SET):
            assert await err(c.setattr(2, valid, mode=0o777, size=0)) == errno.EROFS
        assert await err(c.xattrcreate(2, "user.x", 1, 0)) == errno.EROFS
        await c.walk(ROOT, 6, ["kept"])
        assert await err(c.remove(6)) == errno.EROFS
        await c.close()

    run(go())
    after = {p.name: (p.stat().st_mtime_ns, p.stat().st_mode) for p in ro.iterdir()}
    assert after == before


def test_remove_by_a_stale_name_is_refused(jail: tuple[OurServer, Path]) -> None:
    """Tremove acts by the name a fid was walked by: if that name now holds another file,
    the other file is left alone."""
    server, base = jail
    rw = base / "rw"
    (rw / "orig").write_bytes(b"walked")

    async def go() -> None:
        c = await connect(server, "rw")
        await c.walk(ROOT, 2, ["orig"])
        os.rename(rw / "orig", rw / "orig.moved")
        (rw / "orig").write_bytes(b"newcomer")
        assert await err(c.remove(2)) == errno.ESTALE
        await c.close()

    run(go())
    assert (rw / "orig").read_bytes() == b"newcomer" and (rw / "orig.moved").exists()


def test_tversion_resets_the_session(jail: tuple[OurServer, Path]) -> None:
    server, _base = jail

    async def go() -> None:
        c = await connect(server, "rw")
        await c.walk(ROOT, 2, [])
        await c.version(65536)
        assert await err(c.getattr(ROOT)) == errno.EBADF  # every fid went with the old session
        await c.attach(ROOT, "rw")
        assert (await c.getattr(ROOT))["qid"].type == proto.QTDIR
        await c.close()

    run(go())
