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
             "screen": {"exports": {}, "control": ["store"]}}  # a screen may act on the store, not back
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


def manage(agent: AgentProc, etc: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", "manage", "--run-dir", str(agent.run_dir), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})


def test_manage_shows_every_host_and_acts_only_where_the_profile_allows(
        lab: tuple[Path, dict[str, Path], str]) -> None:
    """``clusterctl manage`` on beta: both hosts with what their agents serve; beta (a screen)
    may act on alpha (the store), alpha may not act on beta: EPERM, and beta's event names alpha."""
    base, etcs, _cluster = lab
    alpha, beta = AgentProc("alpha", etcs["alpha"], base), AgentProc("beta", etcs["beta"], base)
    try:
        beta.wait_event(peer_is("alpha", "mounted"), 30)
        alpha.wait_event(peer_is("beta", "mounted"), 30)
        sent = manage(beta, etcs["beta"], "alpha", "event", "deploy", "version=7")
        assert sent.returncode == 0, sent.stderr
        snap = json.loads(manage(beta, etcs["beta"], "--json").stdout)
        hosts = {h["host"]: h for h in snap["hosts"]}
        assert snap["seen_from"] == "beta" and set(hosts) == {"alpha", "beta"}
        a = hosts["alpha"]
        assert (a["online"], a["role"], a["board"], a["oses"], a["default_os"]) == (True, "store", "cloud-vm",
                                                                                    ["stable"], "stable")
        assert a["space"]["drive"]["size"] > 0 and a["space"]["/"]["size"] > 0 and a["memory"]["total"] > 0
        assert a["uptime"] > 0 and isinstance(a["failed_units"], list)
        deploy = [e for e in a["recent"] if e["event"] == "deploy"]
        assert deploy and deploy[-1]["version"] == "7" and deploy[-1]["by"] == "beta/root"
        assert hosts["beta"]["self"] and hosts["beta"]["memory"]["total"] > 0
        refused = manage(alpha, etcs["alpha"], "beta", "event", "deploy", "version=8")
        assert refused.returncode == 1 and "beta refused" in refused.stderr, refused.stderr
        ev = beta.wait_event(lambda e: e.get("event") == "refused", 10)
        assert ev["by"] == "alpha/root" and "role store may not control role screen" in ev["reason"]
        text = manage(beta, etcs["beta"], "--once").stdout
        assert "2 of 2 hosts online" in text and "alpha" in text and "deploy" in text
        usage = manage(beta, etcs["beta"], "gamma")
        assert usage.returncode == 2 and "no host 'gamma'" in usage.stderr
    finally:
        alpha.stop()
        beta.stop()


def test_the_live_view_changes_when_a_peer_sends_an_event(lab: tuple[Path, dict[str, Path], str]) -> None:
    """``clusterctl manage`` on a terminal (a pty of 200x50): the full-screen view, redrawn when
    alpha's events file brings an event, not on a timer; keys move the pick, q quits; a reboot
    asked with r is only sent after y (here: n, so nothing is sent)."""
    import fcntl
    import pty
    import select as sel
    import struct
    import termios

    base, etcs, _cluster = lab
    alpha, beta = AgentProc("alpha", etcs["alpha"], base), AgentProc("beta", etcs["beta"], base)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    seen = b""

    def shown(needle: str, timeout: float = 20) -> float:
        nonlocal seen
        start = time.monotonic()
        while needle.encode() not in seen:
            assert time.monotonic() - start < timeout, f"{needle!r} never shown: {seen[-3000:]!r}"
            if sel.select([master], [], [], 0.2)[0]:
                seen += os.read(master, 65536)
        return time.monotonic() - start

    try:
        beta.wait_event(peer_is("alpha", "mounted"), 30)
        view = subprocess.Popen([sys.executable, "-m", "agent", "manage", "--run-dir", str(beta.run_dir)],
                                cwd=REPO, stdin=slave,
                                stdout=slave, stderr=slave, env={**os.environ, "TERM": "xterm"})
        shown("2 of 2 hosts online")
        shown("up/down: pick a host")
        seen = b""
        assert manage(beta, etcs["beta"], "alpha", "event", "hello-view", "n=1").returncode == 0
        shown("hello-view")
        os.write(master, b"j")  # pick the next host: its detail panel
        shown("runs -")
        os.write(master, b"r")
        shown("? y/n")
        os.write(master, b"n")
        shown("cancelled")
        os.write(master, b"b")  # the OSes of the picked host's menu, then a number, then y/n
        shown("boot which OS next time only? 1: stable")
        os.write(master, b"1")
        shown("boot stable on")
        os.write(master, b"n")
        shown("cancelled")
        os.write(master, b"q")
        deadline = time.monotonic() + 20
        while view.poll() is None and time.monotonic() < deadline:  # keep reading: a full pty blocks its writer
            if sel.select([master], [], [], 0.2)[0]:
                seen += os.read(master, 65536)
        assert view.poll() == 0
        assert not any(e.get("event") == "ctl" for e in alpha.events)  # nothing was sent
    finally:
        alpha.stop()
        beta.stop()
        os.close(master)
        os.close(slave)
