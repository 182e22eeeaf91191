"""How long `clusterctl validate` takes, and how much memory, on a profile of N hosts.

    python bench/validate_bench.py [N ...]     (default: 1000 20000 200000)

Each size runs in a fresh process so its peak RSS is its own. Prints seconds, peak RSS,
and the ratio of time to the smallest run scaled by host count (1.0 = linear).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[2])
from builder.profile import load_profile
t = time.perf_counter()
p = load_profile(sys.argv[1])
dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "hosts": len(p.data["hosts"]),
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_profile(path: Path, hosts: int) -> None:
    with open(path, "w") as f:
        f.write("cluster: {name: big, network: {lan: 10.0.0.0/8}}\n")
        f.write("oses: {stable: {suite: bookworm}, rescue: {kind: rescue}}\n")
        f.write("roles:\n  desktop: {os: [stable, rescue], match: {chassis: desktop, display: true}}\n")
        f.write("  storage: {os: [stable], match: {disks: {count: \">=2\"}}}\n")
        f.write("hosts:\n")
        for i in range(hosts):
            role, board = ("desktop", "nano-itx") if i % 2 else ("storage", "nano-itx-storage")
            f.write(f"  h{i}: {{role: {role}, board: {board}, pin: {{serial: SN{i:07d}}}, "
                    f"install: {{disk: {{smallest: true}}}}}}\n")
        f.write("images:\n  stick: {type: usb-installer, hosts: [h0, h1, h2, h3], size: 8GiB}\n")


def run(hosts: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.yaml"
        write_profile(path, hosts)
        size = path.stat().st_size
        out = subprocess.run([sys.executable, "-c", CHILD, str(path), str(ROOT)], check=True,
                             capture_output=True, text=True)
        result = json.loads(out.stdout)
        result["file_mib"] = size / 2**20
        return result


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [1000, 20000, 200000]
    base = None
    print(f"{'hosts':>8} {'file MiB':>9} {'seconds':>8} {'peak RSS MiB':>13} {'time/host vs smallest':>22}")
    for n in sizes:
        r = run(n)
        per_host = r["seconds"] / n
        base = base or per_host
        print(f"{n:>8} {r['file_mib']:>9.1f} {r['seconds']:>8.2f} {r['peak_rss_mib']:>13.0f} {per_host / base:>22.2f}")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
