"""The synthetic state trees beside the exports: layout, hw/os/svc/status content, snapshot
stability, the blocking events stream (and Tflush of a waiting read), ctl commands."""

from __future__ import annotations

import asyncio
import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.ninep import proto
from agent.ninep.client import Client
from agent.ninep.localfs import Export
from agent.state import hw, osinfo
from core.events import parse_line
from testdriver.ninep_servers import OurServer, run

ROOT = 1


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OurServer]:
    base = tmp_path_factory.mktemp("state")
    (base / "data").mkdir()
    (base / "data" / "f").write_bytes(b"exported")
    server = OurServer([Export("data", str(base / "data"))], ctl_allow=["event", "refresh"]).start()
    try:
        yield server
    finally:
        server.stop()


async def err(aw: object) -> int:
    try:
        result = await aw  # type: ignore[misc]
    except OSError as exc:
        return exc.errno or 0
    raise AssertionError(f"expected an error, got {result!r}")


async def cat(c: Client, path: list[str], fid: int = 50) -> bytes:
    await c.walk(ROOT, fid, path)
    await c.lopen(fid, proto.L_O_RDONLY)
    data = await c.read_all(fid)
    await c.clunk(fid)
    return data


async def ls(c: Client, path: list[str], fid: int = 51) -> set[str]:
    await c.walk(ROOT, fid, path)
    await c.lopen(fid, proto.L_O_RDONLY)
    names = {e.name for e in await c.readdir_all(fid)} - {".", ".."}
    await c.clunk(fid)
    return names


async def connect(server: OurServer, aname: str = "") -> Client:
    c = await Client.connect(server.address)
    await c.attach(ROOT, aname)
    return c


def test_layout_and_attach_names(host: OurServer) -> None:
    async def go() -> None:
        c = await connect(host)
        assert await ls(c, []) == {"fs", "hw", "os", "svc", "status", "events", "recent", "ctl"}
        assert await ls(c, ["fs"]) == {"data"}
        assert await cat(c, ["fs", "data", "f"]) == b"exported"
        await c.close()
        for aname in ("data", "fs/data", "/fs/data"):
            c = await connect(host, aname)
            assert await cat(c, ["f"]) == b"exported"
            await c.close()
        c = await Client.connect(host.address)
        assert await err(c.attach(ROOT, "nope")) == errno.ENOENT
        await c.close()

    run(go())


def test_os_tree(host: OurServer) -> None:
    async def go() -> None:
        c = await connect(host)
        assert {"hostname", "kernel", "release", "uptime", "load", "memory", "json"} <= await ls(c, ["os"])
        assert (await cat(c, ["os", "kernel", "release"])).decode().strip() == os.uname().release
        assert float(await cat(c, ["os", "uptime"])) > 0
        total = int(await cat(c, ["os", "memory", "total"]))
        assert total == osinfo.meminfo()["total"]
        whole = json.loads(await cat(c, ["os", "json"]))
        assert whole["kernel"]["machine"] == os.uname().machine
        # getattr reports the rendered size, so size-trusting readers see it all
        await c.walk(ROOT, 60, ["os", "kernel", "release"])
        assert (await c.getattr(60))["size"] == len(os.uname().release) + 1
        await c.close()

    run(go())


def test_hw_tree_uses_the_inventory(host: OurServer) -> None:
    async def go() -> None:
        c = await connect(host)
        inv = json.loads(await cat(c, ["hw", "json"]))
        names = await ls(c, ["hw"])
        assert set(inv) - {"json"} <= names and "json" in names
        if "memory" in inv and isinstance(inv["memory"], dict) and "total" in inv["memory"]:
            assert int(await cat(c, ["hw", "memory", "total"])) == inv["memory"]["total"]
        await c.close()

    run(go())


def test_hw_inventory_prefers_the_detector() -> None:
    assert hw.Inventory(collect=lambda: {"source": "detector", "disks": [{"name": "sda", "size": 1}]})()[
        "source"] == "detector"

    def failing() -> dict[str, object]:  # pyudev missing on a bare machine
        raise ImportError("No module named 'pyudev'")

    inv = hw.Inventory(collect=failing)()
    assert inv["source"] == "fallback" and inv["memory"]["total"] > 0 and inv["cpu"]["count"] >= 1
    assert "pyudev" in inv["detect_error"]


def test_hw_fallback_reads_sysfs(tmp_path: Path) -> None:
    sysroot = tmp_path / "sys"
    (sysroot / "class" / "dmi" / "id").mkdir(parents=True)
    (sysroot / "class" / "dmi" / "id" / "board_name").write_text("NANO-ITX-1\n")
    (sysroot / "block" / "sda" / "device").mkdir(parents=True)
    (sysroot / "block" / "sda" / "size").write_text("2048\n")
    (sysroot / "block" / "sda" / "device" / "model").write_text("DISK  \n")
    (sysroot / "class" / "net" / "eth0").mkdir(parents=True)
    (sysroot / "class" / "net" / "eth0" / "address").write_text("52:54:00:00:00:01\n")
    inv = hw.fallback_inventory(str(sysroot), "/proc")
    assert inv["dmi"] == {"board_name": "NANO-ITX-1"}
    assert inv["disks"][0]["size"] == 2048 * 512 and inv["disks"][0]["model"] == "DISK"
    assert inv["nics"] == [{"name": "eth0", "mac": "52:54:00:00:00:01", "state": None}]


def test_status_is_a_stable_snapshot(host: OurServer) -> None:
    async def go() -> None:
        c = await connect(host)
        await c.walk(ROOT, 2, ["status"])
        await c.lopen(2, proto.L_O_RDONLY)
        first = await c.read(2, 0, 10)
        size = (await c.getattr(2))["size"]
        # change what status reports, then read the rest of the already-open snapshot
        await c.walk(ROOT, 3, ["ctl"])
        await c.lopen(3, proto.L_O_WRONLY)
        await c.write(3, 0, b"event poke\n")
        rest = await c.read_all(2, 10)
        snap = json.loads(first + rest)
        assert len(first + rest) == size
        fresh = json.loads(await cat(c, ["status"]))
        assert fresh["events"] > snap["events"]
        assert snap["exports"] == [{"name": "data", "path": snap["exports"][0]["path"], "readonly": False}]
        await c.close()

    run(go())


def test_events_block_until_a_change(host: OurServer) -> None:
    async def go() -> None:
        c = await connect(host)
        await c.walk(ROOT, 2, ["events"])
        await c.lopen(2, proto.L_O_RDONLY)
        waiting = asyncio.ensure_future(c.read(2, 0, 4096))
        await asyncio.sleep(0.2)
        assert not waiting.done()  # nothing happened yet: the read waits
        await c.walk(ROOT, 3, ["fs", "data"])
        await c.mkdir(3, "newdir", 0o755)
        line = await asyncio.wait_for(waiting, 5)
        ev = parse_line(line.decode())
        assert ev is not None and ev["event"] == "fs"
        assert ev["op"] == "created" and ev["path"] == "fs/data/newdir"
        # the next read returns the next change only
        nxt = asyncio.ensure_future(c.read(2, 0, 4096))
        await c.unlinkat(3, "newdir", proto.AT_REMOVEDIR)
        ev2 = parse_line((await asyncio.wait_for(nxt, 5)).decode())
        assert ev2 is not None and (ev2["op"], ev2["seq"]) == ("removed", ev["seq"] + 1)
        await c.close()

    run(go())


def test_flush_cancels_a_waiting_events_read(host: OurServer) -> None:
    async def go() -> None:
        c = await connect(host)
        await c.walk(ROOT, 2, ["events"])
        await c.lopen(2, proto.L_O_RDONLY)
        tag = c.alloc_tag()
        frame = proto.frame(proto.TREAD, tag, proto.encode_body(proto.TREAD, {"fid": 2, "offset": 0, "count": 100}))
        pending = c.start(frame, tag)
        await asyncio.sleep(0.1)
        await asyncio.wait_for(c.flush(tag), 5)  # Rflush arrives although nothing happened
        host.call(host.bus.publish, "late")
        await asyncio.sleep(0.2)
        assert not pending.done()  # the flushed read is never answered
        assert (await c.getattr(ROOT))["qid"].type == proto.QTDIR
        await c.close()

    run(go())


def test_ctl_commands(host: OurServer, tmp_path: Path) -> None:
    async def go() -> None:
        c = await connect(host)
        help_text = (await cat(c, ["ctl"])).decode()
        assert "event NAME" in help_text and "svc" not in help_text
        await c.walk(ROOT, 2, ["events"])
        await c.lopen(2, proto.L_O_RDONLY)
        await c.walk(ROOT, 3, ["ctl"])
        await c.lopen(3, proto.L_O_WRONLY)
        await c.write(3, 0, b"event deploy version=3\n")
        ev = parse_line((await asyncio.wait_for(c.read(2, 0, 4096), 5)).decode())
        assert ev is not None and (ev["event"], ev["version"], ev["source"]) == ("deploy", "3", "ctl")
        assert await err(c.write(3, 0, b"svc restart ssh\n")) == errno.EPERM  # not allowed here
        assert await err(c.write(3, 0, b"launch missiles\n")) == errno.EINVAL
        assert await err(c.write(3, 0, b"event\n")) == errno.EINVAL
        await c.close()

    run(go())
    # with no capabilities the ctl file cannot even be opened for writing
    server = OurServer([Export("d", str(tmp_path))]).start()

    async def locked() -> None:
        c = await connect(server)
        await c.walk(ROOT, 2, ["ctl"])
        assert (await c.getattr(2))["mode"] & 0o222 == 0
        assert await err(c.lopen(2, proto.L_O_WRONLY)) == errno.EACCES
        await c.walk(ROOT, 3, ["status"])
        assert await err(c.lopen(3, proto.L_O_RDWR)) == errno.EACCES
        await c.close()

    try:
        run(locked())
    finally:
        server.stop()


def test_svc_tree(host: OurServer) -> None:
    from agent.state import svc

    async def go() -> None:
        c = await connect(host)
        names = await ls(c, ["svc"])
        if not svc.systemd_running():
            assert names == set()
        else:
            unit = sorted(names)[0]
            assert {"load", "active", "sub", "description", "json", "ctl"} <= await ls(c, ["svc", unit])
        await c.close()

    run(go())


def test_state_trees_refuse_changes(host: OurServer) -> None:
    async def go() -> None:
        c = await connect(host)
        await c.walk(ROOT, 2, ["hw"])
        assert await err(c.mkdir(2, "x", 0o755)) == errno.EACCES
        assert await err(c.lcreate(2, "x", proto.L_O_RDWR, 0o644)) == errno.EACCES
        assert await err(c.unlinkat(ROOT, "status")) == errno.EACCES
        await c.walk(ROOT, 3, ["status"])
        assert await err(c.remove(3)) == errno.EROFS
        await c.walk(ROOT, 4, ["os", "uptime"])
        assert await err(c.setattr(4, proto.SETATTR_MODE, mode=0o777)) == errno.EACCES
        assert await err(c.xattrcreate(ROOT, "user.x", 1)) == errno.EOPNOTSUPP
        assert await c.xattrwalk(ROOT, 5, "") == 0
        s = await c.statfs(ROOT)
        assert s["type"] == proto.V9FS_MAGIC
        await c.close()

    run(go())


def test_waiting_reads_are_capped(host: OurServer) -> None:
    from agent.ninep.server import MAX_WAITING

    async def go() -> None:
        c = await connect(host)
        await c.walk(ROOT, 2, ["events"])
        await c.lopen(2, proto.L_O_RDONLY)
        reads = [asyncio.ensure_future(c.read(2, 0, 100)) for _ in range(MAX_WAITING + 20)]
        for _ in range(100):  # the refusals come at once; allow a loaded machine some time
            if sum(r.done() for r in reads) >= 20:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)
        refused = [r for r in reads if r.done()]
        assert len(refused) == 20 and all(r.exception().errno == errno.EAGAIN for r in refused)  # type: ignore[union-attr]
        assert (await c.getattr(ROOT))["qid"].type == proto.QTDIR  # others are still served
        host.call(host.bus.publish, "wake")
        woken = await asyncio.wait_for(asyncio.gather(*[r for r in reads if r not in refused]), 5)
        assert all(b'"event": "wake"' in w for w in woken)
        await c.close()

    run(go())
