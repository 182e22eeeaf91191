"""The agent daemon end to end on this machine: real ``clusterctl-agent run`` processes, each
serving 9P on its own mesh address (ULA addresses on the loopback interface stand in for wg0,
hence --no-wireguard), finding the other through the seed list, authenticating, and mounting it
with the FUSE backend (this kernel has no 9p module; QEMU guests test v9fs + WireGuard).

Checked: each sees the other at <namespace>/<peer>, a file written through one mount lands in
the other's export, /n/cluster and ``status --json`` list both; cutting a host off (its address
removed) makes a read under its mount fail within 10 s instead of hanging, and it is mounted
again when it comes back; a host of another CA at a member's address is refused both ways.
Needs root (addresses on lo, mounts) and /dev/fuse; skipped otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.identity import mesh_prefix
from agent.mesh.mounts import FuseMount
from core.events import parse_line
from testdriver.mesh_etc import make_cluster

REPO = Path(__file__).resolve().parents[1]
PORT = 15640 + os.getpid() % 1000

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not FuseMount.available() or shutil.which("fusermount3") is None
    or not Path("/proc/sys/net/ipv6/conf/lo").exists(),
    reason="needs root, IPv6 on lo and FUSE (python3-pyfuse3, /dev/fuse, fusermount3)")


def lo_address(address: str, add: bool) -> None:
    subprocess.run(["ip", "-6", "address", "add" if add else "del", f"{address}/128", "dev", "lo", "nodad"],
                   check=add, capture_output=True)


class AgentProc:
    def __init__(self, name: str, etc: Path, base: Path) -> None:
        self.name = name
        self.ns = base / name / "n"
        self.run_dir = base / name / "run"
        self.events: list[dict[str, Any]] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--etc", str(etc), "--run-dir", str(self.run_dir),
             "--namespace", str(self.ns), "--port", str(PORT), "--no-wireguard", "--no-mdns", "--mount", "fuse"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=(base / f"{name}.stderr").open("wb"), text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            ev = parse_line(line)
            if ev is not None:
                self.events.append(ev)

    def wait_event(self, match: Callable[[dict[str, Any]], bool], timeout: float, after: int = 0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ev in self.events[after:]:
                if match(ev):
                    return ev
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{self.name}: no such event in {timeout} s; got {self.events}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def peer_is(peer: str, state: str) -> Callable[[dict[str, Any]], bool]:
    return lambda ev: ev.get("event") == "peer" and ev.get("peer") == peer and ev.get("state") == state


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[Path, dict[str, Path], str]]:
    cluster = f"lab{os.getpid()}"
    # The FUSE client (this machine has no 9p module) attaches once, as the mounting root: the
    # store trusts a peer's root in its drive, or root would be nobody there (agent.ninep.creds).
    roles = {"store": {"exports": {"drive": str(tmp_path / "drive")}, "trust_root": ["drive"]},
             "screen": {"exports": {}}}
    etcs = make_cluster(tmp_path, cluster, {"alpha": "store", "beta": "screen"}, roles,
                        fusion={"seeds": [], "port": PORT})
    net = mesh_prefix(cluster)
    addresses = [str(net[1]), str(net[2])]
    for a in addresses:
        lo_address(a, True)
    try:
        yield tmp_path, etcs, cluster
    finally:
        for a in addresses:
            lo_address(a, False)


def test_two_agents_mount_each_other_survive_a_cut_and_come_back(lab: tuple[Path, dict[str, Path], str]) -> None:
    base, etcs, cluster = lab
    alpha, beta = AgentProc("alpha", etcs["alpha"], base), AgentProc("beta", etcs["beta"], base)
    try:
        beta.wait_event(peer_is("alpha", "mounted"), 30)
        alpha.wait_event(peer_is("beta", "mounted"), 30)
        mount = beta.ns / "alpha"
        # a file written on beta into alpha's export is alpha's file, byte for byte
        data = os.urandom(300_000)
        (mount / "fs" / "drive" / "blob").write_bytes(data)
        assert (base / "drive" / "blob").read_bytes() == data
        assert json.loads((mount / "status").read_text())["host"] == "alpha"
        assert (mount / "os" / "hostname").read_text().strip()
        assert sorted(os.listdir(beta.ns / "cluster")) == ["alpha", "beta"]
        assert json.loads((beta.ns / "cluster" / "alpha").read_text())["exports"] == {"drive": str(base / "drive")}
        out = subprocess.run([sys.executable, "-m", "agent", "status", "--json", "--run-dir", str(beta.run_dir)],
                             cwd=REPO, capture_output=True, text=True, check=True).stdout
        table = {e["host"]: e for e in json.loads(out)["members"]}
        assert table["alpha"]["online"] and table["alpha"]["path"] == str(mount) and table["beta"]["self"]
        text = subprocess.run([sys.executable, "-m", "agent", "status", "--run-dir", str(beta.run_dir)],
                              cwd=REPO, capture_output=True, text=True, check=True).stdout
        assert "2 of 2 members online" in text and "drive=" in text

        # cut alpha off: a read under its mount fails (does not hang) within 10 s
        mark = len(beta.events)
        lo_address(str(mesh_prefix(cluster)[1]), False)
        start = time.monotonic()
        reader = subprocess.run(["cat", str(mount / "status")], capture_output=True, timeout=30)
        failed_after = time.monotonic() - start
        assert reader.returncode != 0, "a read under a cut-off peer's mount must fail"
        assert failed_after < 10.0, f"the read failed only after {failed_after:.1f} s"
        lost = beta.wait_event(peer_is("alpha", "lost"), 10, after=mark)
        assert "probes" in lost["reason"] or "lost" in lost["reason"]
        assert sorted(os.listdir(beta.ns / "cluster")) == ["beta"]

        # back: mounted again at the same path, no restart
        lo_address(str(mesh_prefix(cluster)[1]), True)
        beta.wait_event(peer_is("alpha", "mounted"), 30, after=mark)
        assert (mount / "fs" / "drive" / "blob").read_bytes() == data
        print(f"\nread under the cut peer failed after {failed_after:.2f} s")
    finally:
        alpha.stop()
        beta.stop()
    # a stopped agent leaves no mounts behind
    mounts = Path("/proc/mounts").read_text()
    assert str(base) not in mounts


def test_a_host_of_another_ca_is_refused_both_ways(lab: tuple[Path, dict[str, Path], str]) -> None:
    base, etcs, cluster = lab
    # Same cluster name and host name, another CA: a valid-looking stranger at alpha's address.
    fake = make_cluster(base / "other", cluster, {"alpha": "store", "beta": "screen"},
                        {"store": {"exports": {"drive": str(base / "fake-drive")}}, "screen": {"exports": {}}},
                        fusion={"port": PORT})
    stranger, beta = AgentProc("stranger", fake["alpha"], base), AgentProc("beta", etcs["beta"], base)
    try:
        refused = beta.wait_event(peer_is("alpha", "refused"), 30)
        assert "not from this cluster's CA" in refused["reason"]
        # and beta refuses the stranger's attempts on its own server
        beta.wait_event(lambda ev: ev.get("event") == "peer" and ev.get("state") == "refused"
                        and ev.get("source") == "server", 30)
        stranger.wait_event(peer_is("beta", "refused"), 30)
        time.sleep(1)
        assert not any(peer_is("alpha", "mounted")(e) for e in beta.events)
        assert not any(peer_is("beta", "mounted")(e) for e in stranger.events)
        assert os.listdir(beta.ns / "cluster") == ["beta"]
        assert not (beta.ns / "alpha").exists() or not os.listdir(beta.ns / "alpha")
        table = json.loads((beta.run_dir / "members.json").read_text())
        alpha = next(e for e in table["members"] if e["host"] == "alpha")
        assert (alpha["online"], alpha["state"]) == (False, "refused")
    finally:
        stranger.stop()
        beta.stop()
