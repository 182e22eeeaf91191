"""Our 9P2000.L server against diod, same files, loopback.

    python bench/ninep_bench.py [--seconds S] [--json]

Sequential read and write MB/s of a 64 MiB file and metadata ops/s (walk + getattr + clunk
of one name), each at 1 and 8 requests in flight, through the project's Python client; the
median of 5 samples, the servers taking turns so both see the same machine load. Each
server gets the msize it agrees to when asked for 1 MiB (ours 1 MiB, diod 64 KiB), then both
again at 64 KiB so the per-request cost is compared like for like. Our server runs in its
own process (as `clusterctl agent serve`), so the client's Python does not share its GIL.
Prints figures and ratios ours/diod (> 1: ours is faster), and each server's own CPU time
per MB or per operation with the ratio diod/ours (> 1: ours spends less). About a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.ninep import proto  # noqa: E402
from agent.ninep.client import Client  # noqa: E402
from core.events import parse_line  # noqa: E402
from testdriver.ninep_servers import diod_path, diod_server  # noqa: E402

FILE_SIZE = 64 << 20
META_NAMES = 64


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def our_server(export: str, pids: list[int]) -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "builder.cli", "agent", "serve", "--export", f"bench={export}",
         "--listen", "127.0.0.1:0", "--insecure-no-auth"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    pids.append(proc.pid)
    try:
        assert proc.stdout is not None
        ev = parse_line(proc.stdout.readline())
        if ev is None or ev["event"] != "agent-listening":
            raise RuntimeError("our server did not start")
        yield ev["addresses"][0]
    finally:
        proc.terminate()
        proc.wait(10)


async def timed(seconds: float, depth: int, op: object) -> tuple[int, float]:
    """Run ``op()`` from ``depth`` concurrent workers for about ``seconds``; (ops, elapsed)."""
    count = 0
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal count
        while time.perf_counter() < stop:
            await op()  # type: ignore[operator]
            count += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(depth)))
    return count, time.perf_counter() - t0


class Session:
    """One connection to one server at one msize, set up for the three measurements."""

    def __init__(self, c: Client, label: str, pid: int) -> None:
        self.c = c
        self.label = label
        self.pid = pid
        self.chunk = c.iosize
        self.rpos = 0
        self.wpos = 0
        self.payload = os.urandom(self.chunk)
        self.next_fid = 1000
        self.next_name = 0

    @classmethod
    async def open(cls, address: str, aname: str, msize: int, label: str, pid: int) -> Session:
        c = await Client.connect(address, msize=msize)
        await c.attach(1, aname)
        await c.walk(1, 2, ["data.bin"])
        await c.lopen(2, proto.L_O_RDONLY)
        await c.walk(1, 3, [])
        await c.lcreate(3, f"scratch-{label.replace('/', '-')}", proto.L_O_RDWR | proto.L_O_TRUNC, 0o644)
        return cls(c, label, pid)

    async def read_next(self) -> None:
        off = self.rpos
        self.rpos = (self.rpos + self.chunk) % FILE_SIZE
        assert await self.c.read(2, off, self.chunk)

    async def write_next(self) -> None:
        off = self.wpos
        self.wpos = (self.wpos + self.chunk) % FILE_SIZE
        assert await self.c.write(3, off, self.payload) == self.chunk

    async def meta(self) -> None:
        fid = self.next_fid
        self.next_fid += 1
        name = f"m{self.next_name % META_NAMES:03d}"
        self.next_name += 1
        await self.c.walk(1, fid, [name])
        await self.c.getattr(fid)
        await self.c.clunk(fid)

    async def close(self) -> None:
        await self.c.remove(3)
        await self.c.close()


METRICS = (("read", "read_next", True), ("write", "write_next", True), ("meta", "meta", False))


async def measure_all(targets: dict[str, tuple[str, str, int]], seconds: float,
                      rounds: int) -> dict[str, dict[str, float]]:
    """Every metric at depth 1 and 8 for every (server, msize) session. The sessions take turns
    within each round and the median round counts, so load from elsewhere on the machine
    falls on all of them alike. The server's own CPU time per operation is summed over the
    rounds too: unlike throughput, it hardly depends on what else the machine is doing."""
    sessions: list[Session] = []
    for key, (address, aname, pid) in targets.items():
        for setting, msize in (("max", 1 << 20), ("64k", 65536)):
            sessions.append(await Session.open(address, aname, msize, f"{key}/{setting}", pid))
    samples: dict[str, dict[str, list[float]]] = {s.label: {} for s in sessions}
    cpu: dict[str, dict[str, list[float]]] = {s.label: {} for s in sessions}
    try:
        for metric, method, is_bytes in METRICS:
            for depth in (1, 8):
                key = f"{metric}_d{depth}"
                for _ in range(rounds):
                    for s in sessions:
                        c0 = cpu_seconds(s.pid)
                        n, dt = await timed(seconds, depth, getattr(s, method))
                        used = cpu_seconds(s.pid) - c0
                        value = n * s.chunk / dt / 1e6 if is_bytes else n / dt
                        samples[s.label].setdefault(key, []).append(value)
                        units = n * s.chunk / 1e6 if is_bytes else n  # MB or operations
                        acc = cpu[s.label].setdefault(key, [0.0, 0.0])
                        acc[0] += used
                        acc[1] += units
    finally:
        for s in sessions:
            await s.close()
    out: dict[str, dict[str, float]] = {}
    for s in sessions:
        out[s.label] = {k: statistics.median(v) for k, v in samples[s.label].items()}
        for k, (used, units) in cpu[s.label].items():
            out[s.label][f"cpu_{k}"] = used / units * 1e6 if units else 0.0  # µs per MB or per op
        out[s.label]["msize"] = s.c.msize
    return out


def row(label: str, unit: str, ours: float, diod: float | None) -> str:
    ratio = f"{ours / diod:6.2f}" if diod else "   n/a"
    d = f"{diod:10.1f}" if diod is not None else "       n/a"
    return f"{label:<28} {ours:10.1f} {d} {ratio}   {unit}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=0.3, help="seconds per sample (default 0.3)")
    ap.add_argument("--rounds", type=int, default=5, help="samples per figure; the median counts (default 5)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ninep-bench-") as tmp:
        export = Path(tmp)
        (export / "data.bin").write_bytes(os.urandom(FILE_SIZE))
        for i in range(META_NAMES):
            (export / f"m{i:03d}").write_bytes(b"")
        with contextlib.ExitStack() as stack:
            pids: list[int] = []
            targets = {"ours": (stack.enter_context(our_server(str(export), pids)), "bench", pids[-1])}
            if diod_path() is not None:
                address = stack.enter_context(diod_server(str(export), pids))
                targets["diod"] = (address, str(export), pids[-1])
            else:
                print("diod is not installed: ours only (apt-get install diod)", file=sys.stderr)
            flat = asyncio.run(measure_all(targets, args.seconds, args.rounds))
    results: dict[str, dict[str, dict[str, float]]] = {}
    for label, figures in flat.items():
        server, setting = label.split("/")
        results.setdefault(server, {})[setting] = figures
    print(f"{'':<28} {'ours':>10} {'diod':>10} {'ratio':>6}           "
          f"{'server CPU per unit: ours':>26} {'diod':>8} {'ratio':>6}")
    for setting, title in (("max", "each server's largest msize"), ("64k", "both at msize 64 KiB")):
        o = results["ours"][setting]
        d = results.get("diod", {}).get(setting)
        print(f"-- {title}: ours {int(o['msize'])}" + (f", diod {int(d['msize'])}" if d else ""))
        for key, label, unit, cpu_unit in (("read_d1", "seq read, 1 in flight", "MB/s", "us/MB"),
                                           ("read_d8", "seq read, 8 in flight", "MB/s", "us/MB"),
                                           ("write_d1", "seq write, 1 in flight", "MB/s", "us/MB"),
                                           ("write_d8", "seq write, 8 in flight", "MB/s", "us/MB"),
                                           ("meta_d1", "walk+getattr+clunk, 1", "ops/s", "us/op"),
                                           ("meta_d8", "walk+getattr+clunk, 8", "ops/s", "us/op")):
            oc, dc = o[f"cpu_{key}"], (d[f"cpu_{key}"] if d else None)
            # CPU ratio diod/ours: > 1 means ours spends less CPU per unit of work.
            cpu_ratio = f"{dc / oc:6.2f}" if dc and oc else "   n/a"
            print(row(label, unit, o[key], d[key] if d else None)
                  + f"   {oc:26.0f} {dc if dc is not None else float('nan'):8.0f} {cpu_ratio}   {cpu_unit}")
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
