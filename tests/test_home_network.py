"""Home networks: cluster.network's gateway and dns, a host's ``address: dhcp``, and a cloud
image's host on its provider's DHCP; what validation refuses, and what networkd is given."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from builder.profile import load_profile
from builder.stages.overlay import Entry, render_layer, template_context
from core.model import Profile
from tests.test_profile_errors import GOOD, errors_of

ROOT = Path(__file__).resolve().parents[1]
NET = "etc/systemd/network/"

HOME = GOOD.replace("network: {lan: 10.42.0.0/24}",
                    "network: {lan: 10.42.0.0/24, gateway: 10.42.0.1, dns: [10.42.0.1, 9.9.9.9]}")


def network_files(data: dict[str, Any], host: str | None, image: str = "stick") -> dict[str, str]:
    entries: dict[str, Entry] = {}
    render_layer(ROOT / "overlays" / "base", template_context(data, "stable", image, host, [], "0"), entries)
    return {k.removeprefix(NET): e.data.decode() for k, e in entries.items()
            if k.startswith(NET) and e.kind == "file"} | {"hosts": entries["etc/hosts"].data.decode()}


def resolved(tmp_path: Path, text: str) -> dict[str, Any]:
    (tmp_path / "p.yaml").write_text(text)
    return load_profile(tmp_path / "p.yaml").data  # type: ignore[no-any-return]


def test_a_fixed_address_lan_gets_its_gateway_and_dns(tmp_path: Path) -> None:
    data = resolved(tmp_path, HOME)
    assert data["cluster"]["network"] == {"lan": "10.42.0.0/24", "gateway": "10.42.0.1",
                                          "dns": ["10.42.0.1", "9.9.9.9"]}
    left = network_files(data, "left")
    bond = left["50-clusterctl-lan0.network"]
    assert "Address=10.42.0.11/24\nGateway=10.42.0.1\nDNS=10.42.0.1\nDNS=9.9.9.9\n" in bond
    assert "DHCP" not in bond and "Bond=lan0" in left["50-clusterctl-lan.network"]
    # The gateway is never handed out as a host's address, even when it sits where hosts start.
    data = resolved(tmp_path, HOME.replace("gateway: 10.42.0.1", "gateway: 10.42.0.11"))
    assert [data["hosts"][h]["address"] for h in ("left", "right")] == ["10.42.0.12", "10.42.0.13"]


def test_a_host_with_address_dhcp_asks_dhcp_and_keeps_the_clusters_dns(tmp_path: Path) -> None:
    data = resolved(tmp_path, HOME.replace("board: nano-itx}", "board: nano-itx, address: dhcp}"))
    assert data["hosts"]["left"]["address"] == "dhcp"
    assert data["hosts"]["right"]["address"] == "10.42.0.11"  # the next free one is still the first
    left = network_files(data, "left")
    assert set(left) == {"50-clusterctl-lan.network", "hosts"}  # no bond, no fixed address
    ports = left["50-clusterctl-lan.network"]
    assert "DHCP=yes\nDNS=10.42.0.1\nDNS=9.9.9.9\n" in ports and "Address=" not in ports and "Gateway" not in ports
    # No "dhcp" line in anyone's /etc/hosts; the fixed host is there.
    assert "dhcp" not in left["hosts"] and "10.42.0.11\tright.home.arpa right\n" in left["hosts"]
    model = Profile.from_json(data)
    assert model.hosts["left"].lan_address is None and model.hosts["right"].lan_address == "10.42.0.11"
    assert model.to_json() == data


def test_a_cloud_host_takes_dhcp_and_not_the_home_dns(tmp_path: Path) -> None:
    text = HOME + "  edge: {type: cloud, host: right, size: 2GiB}\n"
    data = resolved(tmp_path, text)
    assert data["hosts"]["right"]["address"] == "dhcp" and data["hosts"]["left"]["address"] == "10.42.0.11"
    assert data["images"]["edge"]["format"] == "qcow2"
    right = network_files(data, "right", "edge")
    ports = right["50-clusterctl-lan.network"]
    assert "DHCP=yes\n" in ports and "DNS=" not in ports, ports
    # The home hosts keep their own.
    assert "DNS=9.9.9.9" in network_files(data, "left")["50-clusterctl-lan0.network"]


def test_the_hybrid_example_cloud_host_has_no_lan_address() -> None:
    data = load_profile(ROOT / "profiles" / "hybrid-cloud.yaml").data
    assert data["hosts"]["edge-1"]["address"] == "dhcp"
    assert data["cluster"]["fusion"]["seeds"]  # how it joins instead


@pytest.mark.parametrize(("network", "line", "message"), [
    ("{lan: 10.42.0.0/24, gateway: 192.168.1.1}", "3:32",
     "cluster.network.gateway: 192.168.1.1 is outside cluster.network.lan 10.42.0.0/24: the gateway must be "
     "an address on the LAN, such as 10.42.0.1"),
    ("{lan: 10.42.0.0/24, gateway: 10.42.0.255}", "3:32",
     "cluster.network.gateway: 10.42.0.255 is the broadcast address of cluster.network.lan 10.42.0.0/24: the "
     "gateway must be a host address on it, such as 10.42.0.1"),
    ("{lan: dhcp, gateway: 10.42.0.1}", "3:24",
     "cluster.network.gateway: 10.42.0.1 is given, but cluster.network.lan is dhcp, whose server gives the "
     "gateway: give lan a subnet (such as 10.42.0.0/24) or leave gateway out"),
    ("{lan: 10.42.0.0/24, dns: [10.42.0.1, nine]}", "3:49",
     'cluster.network.dns[1]: "nine" is not an IP address such as 10.42.0.11'),
])
def test_bad_networks_are_located_and_say_what_would_be_right(tmp_path: Path, network: str, line: str,
                                                              message: str) -> None:
    errs = errors_of(tmp_path, GOOD.replace("{lan: 10.42.0.0/24}", network))
    assert errs == [f"p.yaml:{line}: {message}"], errs


def test_bad_host_addresses(tmp_path: Path) -> None:
    errs = errors_of(tmp_path, HOME.replace("board: nano-itx}", "board: nano-itx, address: 10.42.0.1}"))
    assert errs == ["p.yaml:15:42: hosts.left.address: 10.42.0.1 is already the address of the gateway"], errs
    errs = errors_of(tmp_path, GOOD.replace("board: nano-itx}", "board: nano-itx, address: dchp}"))
    assert errs == ['p.yaml:15:42: hosts.left.address: "dchp" is not an IP address such as 10.42.0.11, or dhcp']
    errs = errors_of(tmp_path, GOOD.replace("board: nano-itx-storage}", "board: nano-itx-storage, address: 10.42.0.9}")
                     + "  edge: {type: cloud, host: right}\n")
    assert errs == ["p.yaml:16:51: hosts.right.address: 10.42.0.9 is a LAN address, but right is the host of a "
                    "cloud image and takes its provider's DHCP (it joins through cluster.fusion.seeds): write "
                    "address: dhcp or leave address out"], errs


def test_validate_exits_2_with_the_location_and_no_traceback(tmp_path: Path) -> None:
    p = tmp_path / "p.yaml"
    p.write_text(GOOD.replace("{lan: 10.42.0.0/24}", "{lan: 10.42.0.0/24, gateway: 10.43.0.1}"))
    r = subprocess.run([sys.executable, "-m", "builder", "validate", str(p)], capture_output=True, text=True,
                       cwd=ROOT)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"{p}:3:32: cluster.network.gateway: 10.43.0.1 is outside" in r.stderr + r.stdout
