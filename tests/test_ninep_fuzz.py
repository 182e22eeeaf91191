"""Malformed frames (truncated, oversized, wrong types, bad fids, huge counts) never stop the
server: after each burst a fresh connection is served, and memory and descriptors stay bounded."""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.ninep import proto
from agent.ninep.client import Client
from agent.ninep.localfs import Export
from agent.ninep.server import MAX_FIDS
from testdriver.ninep_servers import OurServer, run

MSIZE = 65536
T_TYPES = sorted(t for t in proto.SPECS if t % 2 == 0 or t == proto.RLERROR)


class Crashes(logging.Handler):
    """Counts handler failures the server logged (it answers EIO for them and goes on; a
    fuzzer should find none)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OurServer]:
    base = tmp_path_factory.mktemp("fuzz")
    (base / "sub").mkdir()
    (base / "file").write_bytes(os.urandom(100_000))
    crashes = Crashes()
    logging.getLogger("agent.ninep").addHandler(crashes)
    server = OurServer([Export("data", str(base))], max_msize=MSIZE).start()
    try:
        yield server
    finally:
        server.stop()
        logging.getLogger("agent.ninep").removeHandler(crashes)
    assert not crashes.records, [r.getMessage() for r in crashes.records]


def frame(mtype: int, tag: int, body: bytes) -> bytes:
    return struct.pack("<IBH", 7 + len(body), mtype & 0xFF, tag) + body


fids = st.one_of(st.integers(0, 8), st.just(proto.NOFID), st.integers(0, 2**32 - 1))
huge = st.one_of(st.integers(0, 2**32 - 1), st.just(2**32 - 1), st.just(MSIZE * 4))
names = st.lists(st.one_of(st.sampled_from(["..", ".", "/", "", "file", "sub", "x" * 300, "a/b"]),
                           st.text(max_size=20)), max_size=20)

random_frame = st.builds(frame, st.one_of(st.sampled_from(T_TYPES), st.integers(0, 255)),
                         st.integers(0, 0xFFFF), st.binary(max_size=96))
read_frame = st.builds(lambda t, tag, fid, off, n: frame(t, tag, struct.pack("<IQI", fid, off, n)),
                       st.sampled_from([proto.TREAD, proto.TREADDIR]), st.integers(0, 0xFFFE), fids,
                       st.integers(0, 2**64 - 1), huge)
walk_frame = st.builds(lambda tag, fid, newfid, ns: frame(proto.TWALK, tag, struct.pack("<II", fid, newfid)
                                                          + struct.pack("<H", len(ns))
                                                          + b"".join(proto.pack_string(n) for n in ns)),
                       st.integers(0, 0xFFFE), fids, fids, names)
lying_walk = st.builds(lambda n: frame(proto.TWALK, 1, struct.pack("<IIH", 1, 2, n)), st.integers(0, 0xFFFF))
write_frame = st.builds(lambda fid, n, data: frame(proto.TWRITE, 3, struct.pack("<IQI", fid, 0, n) + data),
                        fids, huge, st.binary(max_size=64))
truncated = st.builds(lambda f, cut: f[:cut], st.one_of(read_frame, walk_frame), st.integers(1, 20))
oversized = st.builds(lambda n: struct.pack("<IBH", n, proto.TREAD, 1), st.integers(MSIZE + 1, 2**32 - 1))
tiny = st.builds(lambda n: struct.pack("<I", n) + b"\0" * 8, st.integers(0, 6))
flush_frame = st.builds(lambda tag, old: frame(proto.TFLUSH, tag, struct.pack("<H", old)),
                        st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
burst = st.lists(st.one_of(random_frame, read_frame, walk_frame, lying_walk, write_frame, flush_frame,
                           truncated, oversized, tiny), min_size=1, max_size=12)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def healthy(address: str) -> None:
    c = await Client.connect(address, msize=8192)
    try:
        await c.attach(1, "data")
        await c.walk(1, 2, ["file"])
        await c.lopen(2, proto.L_O_RDONLY)
        assert len(await c.read(2, 0, 100)) == 100
    finally:
        await c.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(burst=burst, attach=st.booleans())
def test_malformed_frames_leave_the_server_serving(target: OurServer, burst: list[bytes], attach: bool) -> None:
    async def go() -> None:
        c = await Client.connect(target.address, msize=MSIZE)
        try:
            if attach:
                await c.attach(1, "data")
            for data in burst:
                await c.send_raw(data)
            await asyncio.sleep(0.005)
        except ConnectionError:
            pass  # an oversized frame ends the connection: that is the answer
        finally:
            await c.close()
        await healthy(target.address)

    run(go(), timeout=20)


def test_memory_and_descriptors_stay_bounded(target: OurServer) -> None:
    async def hammer() -> None:
        c = await Client.connect(target.address, msize=MSIZE)
        await c.attach(1, "data")
        # many fids on one connection hold descriptors; they all go when the connection does
        await asyncio.gather(*(c.walk(1, 100 + i, ["file"]) for i in range(2000)))
        for _ in range(20):  # 20 MiB of reads the client never collects promptly
            await c.send_raw(b"".join(frame(proto.TREAD, t, struct.pack("<IQI", 1, 0, 2**32 - 1))
                                      for t in range(16)))
        await c.close()

    async def go() -> None:
        for _ in range(3):
            await hammer()
        await healthy(target.address)

    fds0, rss0 = open_fds(), rss_bytes()
    run(go(), timeout=60)
    deadline = time.monotonic() + 5
    while target.server is not None and target.server.connections and time.monotonic() < deadline:
        time.sleep(0.05)
    assert target.server is not None and not target.server.connections
    assert open_fds() <= fds0 + 5
    assert rss_bytes() - rss0 < 64 << 20


def test_fid_table_is_capped(target: OurServer) -> None:
    async def go() -> None:
        c = await Client.connect(target.address, msize=MSIZE)
        await c.attach(1, "data")
        results = await asyncio.gather(*(c.walk(1, 10 + i, []) for i in range(MAX_FIDS + 10)),
                                       return_exceptions=True)
        refused = [r for r in results if isinstance(r, OSError)]
        assert len(refused) == 11 and all(r.errno == 24 for r in refused)  # EMFILE
        await c.close()

    run(go(), timeout=60)


def test_walk_of_too_many_names_is_a_protocol_error(target: OurServer, tmp_path: Path) -> None:
    async def go() -> None:
        c = await Client.connect(target.address, msize=MSIZE)
        await c.attach(1, "data")
        body = struct.pack("<IIH", 1, 2, 17) + b"".join(proto.pack_string("sub") for _ in range(17))
        try:
            await c.request(proto.TWALK, body)
        except OSError as exc:
            assert exc.errno == 71  # EPROTO
        else:
            raise AssertionError("a walk of 17 names was accepted")
        await c.close()

    run(go())
