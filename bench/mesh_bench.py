"""Sequential read/write through the kernel's 9p client between two QEMU guests.

    python bench/mesh_bench.py [--mb 48] [--runs 3] [--cache-dir DIR] [--work DIR] [--json]

Builds the lab's copy of profiles/vesa-wall.yaml (testdriver/meshlab.py) with diod and two small
tools added (bench profile only), boots wall-1 (client) and vault (server, its 4 TB drive at
/srv/drive) on one virtual LAN, and measures from inside wall-1, with dd and bs=1M:

- ours: the agent's mount /n/vault/fs/drive (kernel v9fs, trans=fd over the WireGuard mesh
  after the identity handshake, msize 1 MiB);
- diod: Debian's diod on vault serving the same folder, mounted by the same kernel client on
  the same mesh path (a TCP socket to vault's mesh address handed to v9fs as trans=fd, like
  the agent does; v9fs's own trans=tcp is IPv4 only); diod agrees to msize 64 KiB at most;
- raw TCP: bytes over one TCP connection between the same guests, over the mesh (the floor
  for both 9P servers) and over the bare LAN (what WireGuard costs).

Write: dd from /dev/zero to a new file on vault, conv=fsync (the bytes reached the server's
file system); read: the same file back to /dev/null (no client cache: cache=none; the
server's page cache holds the file, so the disk is not measured). MB/s are MiB per second;
the median of ``--runs`` runs. Prints the figures and the ratios ours/diod and ours/raw TCP
(targets: ≥ 1 and ≥ 0.6). Both guests are TCG-emulated on a shared host, so absolute figures
are low; the ratios are what compares. Takes ~10 min (one mmdebstrap more when cold).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from testdriver.lan import Lan  # noqa: E402
from testdriver.meshlab import Shell, build, host_facts, make_machine, write_profile  # noqa: E402

BOOT = 900.0
PORT_DIOD, PORT_TCP = 5640, 5641


def mbps(mb: int, seconds: float) -> float:
    return mb / seconds if seconds > 0 else float("inf")


def timed_dd(sh: Shell, args: str, mb: int) -> float:
    """Seconds of one dd, timed in the guest."""
    out = sh.ok(f"s=$(date +%s%N); dd {args} bs=1M count={mb} status=none; e=$(date +%s%N); "
                "echo $(( (e - s) / 1000 ))", timeout=600)
    return int(out.split()[-1]) / 1e6


def measure_9p(sh: Shell, where: str, mb: int, runs: int) -> dict[str, float]:
    f = f"{where}/bench.bin"
    writes, reads = [], []
    for _ in range(runs):
        sh.ok(f"rm -f {f}")
        writes.append(mbps(mb, timed_dd(sh, f"if=/dev/zero of={f} conv=fsync", mb)))
        reads.append(mbps(mb, timed_dd(sh, f"if={f} of=/dev/null", mb)))
    sh.ok(f"rm -f {f}")
    return {"write": statistics.median(writes), "read": statistics.median(reads)}


def measure_tcp(sh: Shell, host: str, mb: int, runs: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for mode, name in (("w", "write"), ("r", "read")):
        samples = [mbps(mb, float(sh.ok(f"tcpbench {mode} {host} {PORT_TCP} {mb}", timeout=600).split()[-1]))
                   for _ in range(runs)]
        out[name] = statistics.median(samples)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.work:
        return run_in(args, Path(args.work))
    # A temporary folder holds about 2 GiB of images and guest disks: gone when the run ends.
    work = Path(tempfile.mkdtemp(prefix="mesh-bench-"))
    try:
        return run_in(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_in(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    cache = Path(args.cache_dir) if args.cache_dir else work / "cache"
    profile = write_profile(work / "profile", bench=True)
    images = build(profile, work / "images", cache, work / "ca", ["wall-1", "vault"], timeout=3000)
    facts = host_facts(profile)
    lan = Lan("bench").start()
    machines = []
    try:
        for h in ("vault", "wall-1"):
            m = make_machine(h, images, work / "guests", lan, facts)
            machines.append(m)
            m.start()
        vault_m, w1_m = machines
        for m in machines:
            m.wait_for("ready", timeout=BOOT)
        w1_m.wait_for({"event": "peer", "peer": "vault", "state": "mounted"}, timeout=BOOT)
        vault, w1 = Shell(vault_m), Shell(w1_m)
        vault.wait_prompt()
        w1.wait_prompt()
        mesh = vault.json("cat /etc/clusterctl/identity/mesh.json")["address"]
        lan_addr = facts["vault"]["address"]
        vault.ok(f"setsid tcpbench serve {PORT_TCP} </dev/null >/tmp/tcpbench.log 2>&1 &")
        client_mesh = w1.json("cat /etc/clusterctl/identity/mesh.json")["address"]
        # diod splits -l HOST:PORT at the first colon, so an IPv6 literal cannot be given: a name
        # in vault's /etc/hosts stands for its mesh address. And diod drops a connection whose
        # peer address has no name (getnameinfo without NI_NUMERICHOST; the guests have no DNS).
        vault.ok(f"printf '%s vault-mesh\\n%s wall-1-mesh\\n' {mesh} {client_mesh} >> /etc/hosts && "
                 f"setsid diod -f -n -l 0.0.0.0:{PORT_DIOD} "
                 f"-l vault-mesh:{PORT_DIOD} -e /srv/drive -L /tmp/diod.log </dev/null >/dev/null 2>&1 & "
                 "sleep 2; cat /tmp/diod.log; pgrep -x diod")
        r = w1.run(f"mkdir -p /mnt/diod && fdmount {mesh} {PORT_DIOD} /srv/drive 1048576 /mnt/diod")
        if r["rc"] != 0:
            log = vault.run("cat /tmp/diod.log; pgrep -a diod; dmesg | tail -5")
            raise SystemExit(f"diod mount failed: {r['err'] or r['out']}\nvault: {log['out']}{log['err']}")
        mounts = w1.ok("grep -E ' /n/vault | /mnt/diod ' /proc/mounts")
        result: dict[str, Any] = {"mb": args.mb, "runs": args.runs, "mounts": mounts.strip().splitlines()}
        result["tcp_mesh"] = measure_tcp(w1, mesh, args.mb, args.runs)
        result["tcp_lan"] = measure_tcp(w1, lan_addr, args.mb, args.runs)
        result["ours"] = measure_9p(w1, "/n/vault/fs/drive", args.mb, args.runs)
        result["diod"] = measure_9p(w1, "/mnt/diod", args.mb, args.runs)
        w1.run("umount /mnt/diod")
        return result
    finally:
        for m in machines:
            m.close()
        lan.stop()


def report(r: dict[str, Any]) -> str:
    lines = [f"sequential {r['mb']} MiB, dd bs=1M, median of {r['runs']}, wall-1 -> vault, TCG guests (MiB/s):",
             f"{'':14}{'write':>10}{'read':>10}"]
    for key, label in (("ours", "ours (agent)"), ("diod", "diod"), ("tcp_mesh", "TCP mesh"), ("tcp_lan", "TCP LAN")):
        lines.append(f"{label:14}{r[key]['write']:>10.1f}{r[key]['read']:>10.1f}")
    for op in ("write", "read"):
        lines.append(f"{op}: ours/diod {r['ours'][op] / r['diod'][op]:.2f} (target >= 1), "
                     f"ours/TCP mesh {r['ours'][op] / r['tcp_mesh'][op]:.2f} (target >= 0.6), "
                     f"TCP mesh/LAN {r['tcp_mesh'][op] / r['tcp_lan'][op]:.2f}")
    lines += ["mounts:", *[f"  {m}" for m in r["mounts"]]]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=48, help="MiB per transfer (default 48)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cache-dir", default=None, help="stage cache (default: a new one in the work dir)")
    ap.add_argument("--work", default=None, help="work folder (default: a new temporary one)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    r = run(args)
    print(json.dumps(r, indent=1) if args.json else report(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
