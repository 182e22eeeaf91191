"""Each person acts as themselves in an export: the server switches to the attaching user's
uid, group and groups per request (real setfsuid/setfsgid/setgroups, so the kernel checks the
permissions), maps a peer's root to nobody unless the export trusts it, and takes a person's
attach only from a host the cluster's CA vouched for. Needs root (this machine's tests run so)."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent import identity as idm
from agent.ninep import creds
from agent.ninep.client import Client, NinePError
from agent.ninep.localfs import Export
from agent.peer import open_client
from tests.test_auth import GatedServer

pytestmark = pytest.mark.skipif(not creds.can_switch(), reason="switching credentials needs root")

ALICE, BOB = 2000, 2001


@dataclass
class Lab:
    drive: Path
    trusted: Path
    identity: Path
    address: str
    insecure: str
    server_thread: int  # the gated server's thread (its credentials are per thread)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    base = tmp_path_factory.mktemp("people")
    ca, _ = idm.init_ca(base / "ca", "demo")
    for host in ("vault", "wall-1"):
        idm.write_host_identity(idm.issue_host(ca, host), base / host)
    drive = base / "drive"
    (drive / "alice").mkdir(parents=True)
    os.chown(drive / "alice", ALICE, ALICE)
    (drive / "alice").chmod(0o700)
    (drive / "alice" / "notes").write_text("alice's notes\n")
    os.chown(drive / "alice" / "notes", ALICE, ALICE)
    (drive / "bob-only").write_text("bob's secret\n")
    os.chown(drive / "bob-only", BOB, BOB)
    (drive / "bob-only").chmod(0o600)
    (drive / "root-only").write_text("root's secret\n")
    (drive / "root-only").chmod(0o600)
    (drive / "shared").mkdir()
    (drive / "shared").chmod(0o1777)
    trusted = base / "trusted"
    trusted.mkdir()
    (trusted / "root-only").write_text("root's, trusted\n")
    (trusted / "root-only").chmod(0o600)
    people = creds.People({ALICE: "alice", BOB: "bob"}, trust_root=["trusted"])
    exports = [Export("drive", str(drive)), Export("trusted", str(trusted))]
    gated = GatedServer(idm.load_host_identity(base / "vault"), None, exports=exports, people=people)
    open_ = GatedServer(None, None, exports=[Export("drive", str(drive))], people=people)
    try:
        yield Lab(drive, trusted, base / "wall-1", gated.address, open_.address, gated.thread.native_id or 0)
    finally:
        gated.close()
        open_.close()


async def _as(lab: Lab, uid: int, aname: str = "drive", *, address: str | None = None) -> Client:
    if address is None:
        client, _peer = await open_client(lab.address, lab.identity)
    else:
        client = await Client.connect(address)
    await client.attach(0, aname, "", uid)
    return client


async def _read(client: Client, *names: str) -> bytes:
    fid = client.alloc_fid()
    await client.walk(0, fid, list(names))
    try:
        await client.lopen(fid, os.O_RDONLY)
        return await client.read_all(fid)
    finally:
        await client.clunk(fid)


async def _errno(coro: object) -> int:
    try:
        await coro  # type: ignore[misc]
    except NinePError as exc:
        return exc.errno or 0
    return 0


def test_a_person_reads_and_writes_their_own_files(lab: Lab) -> None:
    async def go() -> None:
        c = await _as(lab, ALICE)
        assert await _read(c, "alice", "notes") == b"alice's notes\n"
        fid = c.alloc_fid()
        await c.walk(0, fid, ["alice"])
        await c.lcreate(fid, "new", os.O_WRONLY, 0o640, 0)
        await c.write_all(fid, b"written from wall-1\n")
        await c.clunk(fid)
        c.transport.close()

    asyncio.run(go())
    st = (lab.drive / "alice" / "new").stat()
    assert (st.st_uid, st.st_gid) == (ALICE, ALICE), "files a person makes are theirs on the server"
    assert (lab.drive / "alice" / "new").read_bytes() == b"written from wall-1\n"


def test_another_persons_private_files_are_refused(lab: Lab) -> None:
    async def go() -> tuple[int, int, int]:
        c = await _as(lab, ALICE)
        fid = c.alloc_fid()
        await c.walk(0, fid, ["bob-only"])
        opened = await _errno(c.lopen(fid, os.O_RDONLY))
        await c.clunk(fid)
        walked = await _errno(c.walk(0, c.alloc_fid(), ["alice", "notes"]))
        b = await _as(lab, BOB)
        folder = b.alloc_fid()
        await b.walk(0, folder, ["alice"])
        into_alice = await _errno(b.walk(folder, b.alloc_fid(), ["notes"]))
        c.transport.close()
        b.transport.close()
        return opened, walked, into_alice

    opened, walked, into_alice = asyncio.run(go())
    assert opened == errno.EACCES
    assert walked == 0
    assert into_alice == errno.EACCES, "bob may not search alice's 0700 folder"


def test_a_peers_root_is_nobody_unless_the_export_trusts_it(lab: Lab) -> None:
    async def go() -> tuple[int, int, bytes]:
        c = await _as(lab, 0)
        fid = c.alloc_fid()
        await c.walk(0, fid, ["root-only"])
        refused = await _errno(c.lopen(fid, os.O_RDONLY))
        await c.clunk(fid)
        d = c.alloc_fid()
        await c.walk(0, d, ["shared"])
        await c.lcreate(d, "from-root", os.O_WRONLY, 0o644, 0)
        await c.clunk(d)
        t = await _as(lab, 0, "trusted")
        trusted = await _read(t, "root-only")
        # An uid that is nobody's in the profile (a system account) is nobody too.
        s = await _as(lab, 105)
        fid = s.alloc_fid()
        await s.walk(0, fid, ["root-only"])
        system = await _errno(s.lopen(fid, os.O_RDONLY))
        for x in (c, t, s):
            x.transport.close()
        return refused, system, trusted

    refused, system, trusted = asyncio.run(go())
    assert refused == errno.EACCES
    assert system == errno.EACCES
    assert trusted == b"root's, trusted\n"
    st = (lab.drive / "shared" / "from-root").stat()
    assert (st.st_uid, st.st_gid) == (creds.NOBODY_UID, creds.NOBODY_GID)


def test_without_the_handshake_nobody_is_anybody(lab: Lab) -> None:
    """A connection no certificate vouched for can name any uid: it gets nobody's rights."""
    async def go() -> int:
        c = await _as(lab, ALICE, address=lab.insecure)
        fid = c.alloc_fid()
        await c.walk(0, fid, ["alice"])
        code = await _errno(c.lcreate(fid, "sneaky", os.O_WRONLY, 0o644, 0))
        c.transport.close()
        return code

    assert asyncio.run(go()) == errno.EACCES
    assert not (lab.drive / "alice" / "sneaky").exists()


def test_the_serving_thread_is_root_again_after_each_request(lab: Lab) -> None:
    """What else the agent's loop runs (mounts, events, members) must not run as alice."""
    async def go() -> None:
        c = await _as(lab, ALICE)
        await _read(c, "alice", "notes")
        c.transport.close()

    asyncio.run(go())
    status = Path(f"/proc/self/task/{lab.server_thread}/status").read_text().splitlines()
    uids = next(line for line in status if line.startswith("Uid:")).split()[1:]
    gids = next(line for line in status if line.startswith("Gid:")).split()[1:]
    groups = next(line for line in status if line.startswith("Groups:")).split()[1:]
    assert uids == [str(os.geteuid())] * 4 and gids == [str(os.getegid())] * 4
    assert sorted(map(int, groups)) == sorted(os.getgroups())
