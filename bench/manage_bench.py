"""From an event on a peer to the change in ``clusterctl manage``'s live view, against a floor.

    python bench/manage_bench.py [--runs N]      (root, IPv6 on lo, FUSE; default 30 runs)

Two real agents on this machine (as tests/test_agent_daemon.py runs them: mesh addresses on
lo, the FUSE client, no WireGuard): alpha and beta. Each run writes ``event bench-<i>`` to
alpha's ctl through beta's mount and times two readers on beta:

- floor: ``cat`` blocked on /n/alpha/events (the event reaching beta at all);
- view: the live manager on a pseudo-terminal (the event's name drawn on its screen: the
  row's read of status, os/json and recent, and a redraw).

Prints median and p95 of each in ms and the view/floor ratio of the medians.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import pty
import select
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.identity import mesh_prefix  # noqa: E402
from testdriver.mesh_etc import make_cluster  # noqa: E402

PORT = 17640 + os.getpid() % 1000


def lo(address: str, add: bool) -> None:
    subprocess.run(["ip", "-6", "address", "add" if add else "del", f"{address}/128", "dev", "lo", "nodad"],
                   check=add, capture_output=True)


def agent(name: str, etc: Path, base: Path) -> tuple[subprocess.Popen[bytes], Path, Path]:
    ns, run = base / name / "n", base / name / "run"
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--etc", str(etc), "--run-dir", str(run),
                             "--namespace", str(ns), "--port", str(PORT), "--no-wireguard", "--no-mdns",
                             "--mount", "fuse"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, ns, run


def wait_file(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"{path} never appeared")
        time.sleep(0.2)


class Reader:
    """Bytes from an fd, looked for a marker; returns when it was first seen."""

    def __init__(self, fd: int) -> None:
        self.fd, self.seen = fd, b""

    def until(self, marker: bytes, timeout: float = 30) -> float:
        deadline = time.monotonic() + timeout
        while marker not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SystemExit(f"{marker!r} not seen within {timeout} s")
            if select.select([self.fd], [], [], left)[0]:
                self.seen += os.read(self.fd, 65536)
        at = time.monotonic()
        self.seen = b""
        return at


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="manage-bench."))
    cluster = f"mb{os.getpid()}"
    etcs = make_cluster(base, cluster, {"alpha": "store", "beta": "screen"},
                        {"store": {"exports": {}}, "screen": {"exports": {}, "control": ["store"]}},
                        fusion={"seeds": [], "port": PORT})
    net = mesh_prefix(cluster)
    addresses = [str(net[1]), str(net[2])]
    for a in addresses:
        lo(a, True)
    procs = []
    try:
        a, _, _ = agent("alpha", etcs["alpha"], base)
        b, ns, run = agent("beta", etcs["beta"], base)
        procs = [a, b]
        wait_file(ns / "alpha" / "status")
        floor = subprocess.Popen(["cat", str(ns / "alpha" / "events")], stdout=subprocess.PIPE)
        assert floor.stdout is not None
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
        view = subprocess.Popen([sys.executable, "-m", "agent", "manage", "--viewer", "--run-dir", str(run)],
                                cwd=ROOT, stdin=slave, stdout=slave, stderr=slave, env={**os.environ, "TERM": "xterm"})
        screen, cat = Reader(master), Reader(floor.stdout.fileno())
        screen.until(b"2 of 2 hosts online")
        time.sleep(2)
        floors, views = [], []
        for i in range(args.runs):
            marker = f"bench-{i:03d}"
            t0 = time.monotonic()
            fd = os.open(ns / "alpha" / "ctl", os.O_WRONLY)
            os.write(fd, f"event {marker}\n".encode())
            os.close(fd)
            floors.append(cat.until(marker.encode()) - t0)
            views.append(screen.until(marker.encode()) - t0)
            time.sleep(0.2)
        view.terminate()
        floor.kill()
        for name, xs in (("floor (cat events)", floors), ("manage view", views)):
            xs = sorted(xs)
            p95 = xs[min(len(xs) - 1, int(0.95 * len(xs)))]
            print(f"{name:20s} median {statistics.median(xs) * 1000:7.1f} ms   p95 {p95 * 1000:7.1f} ms")
        print(f"ratio view/floor (medians): {statistics.median(views) / statistics.median(floors):.1f}")
    finally:
        for p in procs:
            p.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(20)
        for a in addresses:
            lo(a, False)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
