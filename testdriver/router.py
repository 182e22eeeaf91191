"""A home router between two guest-only LANs, for tests: the home LAN behind NAT, the other side
(a provider's network, standing in for the internet) in front of it.

    with Lan("home") as home, ProviderNet("provider", subnet="203.0.113.0/24") as net, \\
            HomeRouter(home, net.lan, lan="10.45.0.1/24", wan="203.0.113.2/24") as router:
        ...  # guests on ``home`` use 10.45.0.1 as their gateway
        router.dropped()  # packets from the WAN refused on their way into the home LAN

It does what a real home router's NAT does, and nothing more: hosts at home reach the other
side, seen there with the router's WAN address (nftables masquerade); replies to what they
started come back (connection tracking); nothing started on the other side gets in (the
forward chain drops it and counts it). No router guest is booted: a network namespace of its
own (``unshare``, as the provider's dnsmasq) holds two tap devices that ``vde_plug2tap`` plugs
into the two switches, ip_forward (the namespace's own, not the build machine's) and the
nftables rules. The namespace has no other interface, so neither LAN gets a route out.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from testdriver.lan import Lan, LanError

TOOLS = {"nft": "nftables", "vde_plug2tap": "vde2", "unshare": "util-linux", "ip": "iproute2",
         "nsenter": "util-linux"}


def ruleset(home: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    """The router's nftables rules: ``lan`` is the home side's tap, ``wan`` the other side's."""
    return f"""table ip home {{
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname "wan" ct state new counter drop
  }}
  chain forward {{
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname "lan" oifname "wan" accept
    iifname "wan" counter drop comment "inbound"
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" ip saddr {home} masquerade
  }}
}}
"""


class HomeRouter:
    """NAT from ``home`` (the router at ``lan``, an address/prefix on it) to ``wan_lan`` (the
    router at ``wan``)."""

    def __init__(self, home: Lan, wan_lan: Lan, *, lan: str, wan: str) -> None:
        self.home, self.wan_lan = home, wan_lan
        self.lan_if = ipaddress.ip_interface(lan)
        self.wan_if = ipaddress.ip_interface(wan)
        self.dir = home.dir  # the home switch's folder: removed with it
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def lan_address(self) -> str:
        return str(self.lan_if.ip)

    @property
    def wan_address(self) -> str:
        return str(self.wan_if.ip)

    def _script(self) -> str:
        rules = self.dir / "router.nft"
        rules.write_text(ruleset(self.lan_if.network))
        return "\n".join([
            "set -e",
            "ip link set lo up",
            "ip tuntap add dev lan mode tap",
            "ip tuntap add dev wan mode tap",
            f"ip address add {self.lan_if} dev lan",
            f"ip address add {self.wan_if} dev wan",
            "ip link set lan up",
            "ip link set wan up",
            "echo 1 > /proc/sys/net/ipv4/ip_forward",
            f"nft -f {rules}",
            f"vde_plug2tap --sock {self.home.sock} lan &",
            f"vde_plug2tap --sock {self.wan_lan.sock} wan &",
            f"touch {self.dir / 'router.up'}",
            "wait",
        ])

    def start(self, timeout: float = 15.0) -> HomeRouter:
        missing = [f"{tool} (Debian's {pkg})" for tool, pkg in TOOLS.items() if shutil.which(tool) is None]
        if missing:
            raise LanError(f"the home router needs {', '.join(missing)}")
        unshare = ["unshare", "--net", "--fork", "--kill-child"]
        if os.geteuid() != 0:
            unshare.insert(1, "--map-root-user")
        # Its own session: stop() ends unshare and both vde_plug2tap together.
        self.proc = subprocess.Popen([*unshare, "sh", "-c", self._script()], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=(self.dir / "router.log").open("wb"),
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while not (self.dir / "router.up").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = (self.dir / "router.log").read_text(errors="replace")
                self.stop()
                raise LanError(f"the home router did not start: {err.strip()[-2000:]}")
            time.sleep(0.1)
        return self

    def run(self, argv: list[str]) -> str:
        """A command inside the router's namespace (``nft list ruleset``, ``ip route``...): its stdout."""
        if self.proc is None or self.proc.poll() is not None:
            raise LanError("the home router is not running")
        # The namespace is the shell's (unshare's child): find it through unshare's one child.
        child = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()[0]
        enter = ["nsenter", "-t", child, "-n"]
        if os.geteuid() != 0:
            enter[1:1] = ["-U", "--preserve-credentials"]
        return subprocess.run([*enter, *argv], check=True, capture_output=True, text=True, timeout=15).stdout

    def dropped(self) -> int:
        """Packets from the WAN side refused on their way into the home LAN."""
        for line in self.run(["nft", "list", "chain", "ip", "home", "forward"]).splitlines():
            if 'comment "inbound"' in line:
                words = line.split()
                return int(words[words.index("packets") + 1])
        raise LanError("the router's inbound rule is missing")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> HomeRouter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
