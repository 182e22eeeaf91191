"""The WireGuard interface, driven with ``ip`` (iproute2) and ``wg`` (wireguard-tools).

One interface (``wg0``) carries the mesh: this host's mesh address (a /128 of the cluster's
/64, added with ``nodad`` so it can be bound at once), one peer per other member with its
mesh address as the only allowed IP, and each peer's LAN endpoint as discovery finds it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

IFACE = "wg0"
KEEPALIVE = 25  # seconds; keeps NAT mappings and the handshake fresh
# A handshake younger than this means the endpoint WireGuard has now works (it re-keys every
# 120 s while traffic flows, so an older one says nothing about the path).
FRESH_HANDSHAKE = 150.0


class MeshError(RuntimeError):
    """A command failed; the message carries its stderr."""


def run(argv: list[str], timeout: float = 15.0) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise MeshError(f"{argv[0]} not found (install iproute2 and wireguard-tools)") from None
    except subprocess.TimeoutExpired:
        raise MeshError(f"{' '.join(argv)}: no answer in {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise MeshError(f"{' '.join(argv)}: {proc.stderr.strip() or f'exit {proc.returncode}'}")
    return proc.stdout


def format_endpoint(address: str, port: int) -> str:
    ip = ipaddress.ip_address(address)
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


@dataclass(frozen=True)
class PeerState:
    public: str
    endpoint: str | None
    allowed: tuple[str, ...]
    latest_handshake: int  # unix seconds, 0 = never
    rx: int
    tx: int


def parse_dump(text: str) -> dict[str, PeerState]:
    """``wg show IFACE dump``: the interface line, then one tab-separated line per peer."""
    peers: dict[str, PeerState] = {}
    for line in text.splitlines()[1:]:
        cols = line.split("\t")
        if len(cols) < 8:
            continue
        endpoint = None if cols[2] == "(none)" else cols[2]
        allowed = tuple(a for a in cols[3].split(",") if a and a != "(none)")
        peers[cols[0]] = PeerState(cols[0], endpoint, allowed, int(cols[4]), int(cols[5]), int(cols[6]))
    return peers


class WireGuard:
    def __init__(self, iface: str = IFACE) -> None:
        self.iface = iface

    def up(self, private_key: Path, listen_port: int, address: ipaddress.IPv6Address,
           prefix: ipaddress.IPv6Network) -> None:
        """Make the interface afresh."""
        self.down()  # a restarted agent starts from a known state
        try:
            run(["ip", "link", "add", self.iface, "type", "wireguard"])
        except MeshError as exc:
            raise MeshError(f"cannot make the WireGuard interface (kernel module 'wireguard'?): {exc}") from None
        run(["wg", "set", self.iface, "private-key", str(private_key), "listen-port", str(listen_port)])
        run(["ip", "-6", "address", "add", f"{address}/{prefix.prefixlen}", "dev", self.iface, "nodad"])
        run(["ip", "link", "set", self.iface, "up"])

    def add_peer(self, public: str, mesh: ipaddress.IPv6Address) -> None:
        run(["wg", "set", self.iface, "peer", public, "allowed-ips", f"{mesh}/128",
             "persistent-keepalive", str(KEEPALIVE)])

    def set_endpoint(self, public: str, endpoint: str) -> None:
        run(["wg", "set", self.iface, "peer", public, "endpoint", endpoint])

    def peers(self) -> dict[str, PeerState]:
        return parse_dump(run(["wg", "show", self.iface, "dump"]))

    def handshake_fresh(self, public: str, now: float | None = None) -> bool:
        state = self.peers().get(public)
        if state is None or not state.latest_handshake:
            return False
        return (now if now is not None else time.time()) - state.latest_handshake < FRESH_HANDSHAKE

    def down(self) -> None:
        with contextlib.suppress(MeshError):
            run(["ip", "link", "del", self.iface])
