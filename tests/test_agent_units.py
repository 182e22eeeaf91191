"""The agent daemon's parts that need no network: configuration, adverts and seeds, the
WireGuard dump parser, /proc/mounts parsing, the miss counter, the membership table, status."""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path

import pytest

from agent.mesh import config, discovery, members, mounts, status, wireguard
from agent.mesh.liveness import MissCounter
from testdriver.mesh_etc import make_cluster

ROLES = {"storage": {"exports": {"drive": "/srv/drive"}}, "screen": {"exports": {"home": "/home"}}}


@pytest.fixture(scope="module")
def etcs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("mesh")
    return make_cluster(base, "wall", {"vault": "storage", "wall-1": "screen", "wall-2": "screen"}, ROLES,
                        fusion={"seeds": ["vault", "10.44.0.99:51999"]},
                        lan={"vault": "10.44.0.14", "wall-1": "10.44.0.11", "wall-2": "10.44.0.12"})


# -- configuration ----------------------------------------------------------------------------
def test_config_reads_host_profile_identity_and_register(etcs: dict[str, Path]) -> None:
    cfg = config.load(etcs["wall-1"])
    assert (cfg.host, cfg.role, cfg.cluster) == ("wall-1", "screen", "wall")
    assert cfg.exports == {"home": "/home"}
    assert cfg.mesh in cfg.prefix and cfg.prefix.prefixlen == 64
    assert set(cfg.members) == {"vault", "wall-1", "wall-2"} and set(cfg.peers) == {"vault", "wall-2"}
    vault = cfg.members["vault"]
    assert vault.role == "storage" and vault.exports == {"drive": "/srv/drive"} and vault.lan == "10.44.0.14"
    assert vault.wg_public == config.load(etcs["vault"]).identity.wg_public
    assert cfg.seeds == ["vault", "10.44.0.99:51999"] and cfg.port == 564 and cfg.namespace == Path("/n")


def test_config_accepts_the_ca_register_shape(etcs: dict[str, Path], tmp_path: Path) -> None:
    plain = json.loads((etcs["vault"] / "identity" / "hosts.json").read_text())
    wrapped = config.parse_register({"cluster": "wall", "hosts": plain}, "x")
    assert wrapped == config.parse_register(plain, "x")


@pytest.mark.parametrize("damage, message", [
    (lambda e: (e / "host.json").unlink(), "host.json is missing"),
    (lambda e: (e / "host.json").write_text('{"host": null}'), "names no host"),
    (lambda e: (e / "host.json").write_text('{"host": "vault", "role": "storage"}'), "the certificate is for"),
    (lambda e: (e / "identity" / "hosts.json").write_text('{"x": {"address": "fd00::1"}}'), "needs 'address'"),
    (lambda e: (e / "identity" / "hosts.json").write_text("{not json"), "hosts.json"),
    (lambda e: (e / "identity" / "host.key").chmod(0o644), "host.key"),
])
def test_config_errors_name_the_file(etcs: dict[str, Path], tmp_path: Path, damage, message: str) -> None:
    import shutil

    etc = tmp_path / "etc"
    shutil.copytree(etcs["wall-2"], etc)
    damage(etc)
    with pytest.raises(config.ConfigError, match=message):
        config.load(etc)


# -- adverts and seeds ------------------------------------------------------------------------
def test_advert_round_trip_and_judgement(etcs: dict[str, Path]) -> None:
    cfg = config.load(etcs["wall-1"])
    vault = cfg.members["vault"]
    ad = discovery.Advert("vault", "wall", "10.44.0.14", 51820, vault.wg_public, 564)
    props = {k.encode(): v.encode() for k, v in discovery.txt_properties(ad).items()}  # as zeroconf gives them
    back = discovery.parse_advert(props, ["10.44.0.14"], 51820)
    assert back == ad and back.endpoint == ("10.44.0.14", 51820)
    assert discovery.judge(ad, cfg) == discovery.Verdict("use", "vault")
    from dataclasses import replace

    assert discovery.judge(replace(ad, cluster="other"), cfg).action == "ignore"
    assert discovery.judge(replace(ad, host="wall-1", wg_public=cfg.identity.wg_public), cfg).action == "ignore"
    stranger = discovery.judge(replace(ad, host="intruder"), cfg)
    assert (stranger.action, stranger.reason) == ("refuse", "not in this cluster's register")
    impostor = discovery.judge(replace(ad, wg_public=cfg.members["wall-2"].wg_public), cfg)
    assert impostor.action == "refuse" and "WireGuard key" in impostor.reason


@pytest.mark.parametrize("props, message", [
    ({"v": "2", "cluster": "c", "host": "h", "wg": "k"}, "version"),
    ({"v": "1", "cluster": "c", "wg": "k"}, "without 'host'"),
    ({"v": "1", "cluster": "c", "host": "h", "wg": "k", "lan": "not-an-ip"}, "not-an-ip"),
    ({"v": "1", "cluster": "c", "host": "h", "wg": "k", "lan": "10.0.0.1", "wgport": "70000"}, "port"),
])
def test_bad_adverts(props: dict[str, str], message: str) -> None:
    with pytest.raises(discovery.AdvertError, match=message):
        discovery.parse_advert(props, [], None)


@pytest.mark.parametrize("text, host, port", [
    ("vault", "vault", 51820), ("10.0.0.5", "10.0.0.5", 51820), ("10.0.0.5:4000", "10.0.0.5", 4000),
    ("cloud.example.org:51821", "cloud.example.org", 51821), ("[2001:db8::1]:7", "2001:db8::1", 7),
    ("[2001:db8::1]", "2001:db8::1", 51820), ("2001:db8::1", "2001:db8::1", 51820),
])
def test_seed_forms(text: str, host: str, port: int) -> None:
    assert discovery.parse_seed(text) == discovery.Seed(text, host, port)


@pytest.mark.parametrize("text", ["", "host:", "host:0", "host:x", "[::1", "[::1]x", "fe80::zz"])
def test_bad_seeds(text: str) -> None:
    with pytest.raises(ValueError):
        discovery.parse_seed(text)


def test_seed_targets(etcs: dict[str, Path]) -> None:
    cfg = config.load(etcs["wall-1"])
    hosts = {"vault": ["10.44.0.14"], "cloud": ["192.0.2.7"]}
    resolver = lambda h: hosts.get(h) or discovery.resolve(h)  # noqa: E731 -- literals resolve themselves
    # a member's name: that member, at whatever its name resolves to
    targets = discovery.seed_targets(discovery.parse_seed("vault"), cfg, resolver)
    assert targets == (["vault"], [("10.44.0.14", 51820)])
    # a member's LAN address from the profile: that member
    targets = discovery.seed_targets(discovery.parse_seed("10.44.0.12:9"), cfg, resolver)
    assert targets == (["wall-2"], [("10.44.0.12", 9)])
    # anything else: a candidate for whoever is not reached yet
    assert discovery.seed_targets(discovery.parse_seed("cloud"), cfg, resolver) == ([], [("192.0.2.7", 51820)])
    # this host itself is no candidate for anyone: its name, its profile LAN address, or an address
    # it holds (a cloud host whose public address is the cluster's seed)
    assert discovery.seed_targets(discovery.parse_seed("wall-1"), cfg, resolver) == ([], [])
    assert discovery.seed_targets(discovery.parse_seed("10.44.0.11"), cfg, resolver) == ([], [])
    assert discovery.seed_targets(discovery.parse_seed("cloud"), cfg, resolver, own=["192.0.2.7"]) == ([], [])
    assert discovery.seed_targets(discovery.parse_seed("cloud"), cfg, resolver, own=["192.0.2.8"]) == \
        ([], [("192.0.2.7", 51820)])
    assert discovery.resolve("localhost")[0] in ("127.0.0.1", "::1")
    assert discovery.resolve("no-such-host.invalid") == []


def test_lan_address_choice() -> None:
    found = [("eth0", "10.44.0.14"), ("eth1", "10.44.0.14"), ("eth2", "192.168.1.5")]
    assert discovery.lan_address("10.44.0.14", found) == "10.44.0.14"
    assert discovery.lan_address("10.44.0.99", found) is None  # not configured yet: wait
    assert discovery.lan_address(None, found) == "10.44.0.14"
    assert discovery.lan_address(None, []) is None
    assert discovery.shared_address("10.44.0.14", found) == ["eth0", "eth1"]
    assert discovery.shared_address("192.168.1.5", found) == []
    assert all(i not in ("lo", "wg0") for i, _a in discovery.ipv4_addresses())


# -- WireGuard, mounts ------------------------------------------------------------------------
def test_wg_dump_parser() -> None:
    # `wg show wg0 dump`: interface line, then per peer: public, psk, endpoint, allowed ips,
    # latest handshake, rx, tx, keepalive (tab-separated).
    dump = ("PRIV=\tPUB=\t51820\toff\n"
            "AAA=\t(none)\t10.44.0.14:51820\tfd00::1/128\t1700000000\t1024\t2048\t25\n"
            "BBB=\t(none)\t(none)\tfd00::2/128\t0\t0\t0\t25\n")
    peers = wireguard.parse_dump(dump)
    assert peers["AAA="] == wireguard.PeerState("AAA=", "10.44.0.14:51820", ("fd00::1/128",), 1700000000, 1024, 2048)
    assert peers["BBB="].endpoint is None and peers["BBB="].latest_handshake == 0
    assert wireguard.format_endpoint("10.0.0.1", 51820) == "10.0.0.1:51820"
    assert wireguard.format_endpoint("2001:db8::1", 1) == "[2001:db8::1]:1"


def test_wg_commands_fail_with_stderr() -> None:
    with pytest.raises(wireguard.MeshError, match="wg show no-such-iface"):
        wireguard.run(["wg", "show", "no-such-iface", "dump"])
    with pytest.raises(wireguard.MeshError, match="not found"):
        wireguard.run(["no-such-command-here"])


def test_proc_mounts_parsing(tmp_path: Path) -> None:
    table = tmp_path / "mounts"
    table.write_text("none /n/vault 9p rw,nosuid,nodev,trans=fd 0 0\n"
                     "mesh:x /n/odd\\040name fuse.9p rw 0 0\n"
                     "none /n/vault/deeper tmpfs rw 0 0\n"
                     "/dev/vda1 / ext4 rw 0 0\nnone /nx 9p rw 0 0\n")
    assert mounts.mounts_under(Path("/n"), str(table)) == [
        ("/n/vault/deeper", "tmpfs"), ("/n/odd name", "fuse.9p"), ("/n/vault", "9p")]
    assert mounts.is_mounted(Path("/n/vault"), str(table)) and not mounts.is_mounted(Path("/n/x"), str(table))


def test_kernel_mount_command_on_the_inherited_descriptor() -> None:
    from agent.peer import kernel_mount_argv

    argv = kernel_mount_argv(7, "vault", mountpoint="/n/vault")
    assert argv[:3] == ["mount", "-t", "9p"] and argv[-2:] == ["none", "/n/vault"]
    opts = argv[4].split(",")
    assert {"trans=fd", "rfdno=7", "wfdno=7", "version=9p2000.L", "nosuid", "nodev"} <= set(opts)


# -- liveness counter, membership, status -----------------------------------------------------
def test_miss_counter() -> None:
    c = MissCounter(3)
    assert not c.record(False) and not c.record(False)
    assert not c.record(True, 0.01) and c.misses == 0
    assert not c.record(False) and not c.record(False) and c.record(False)
    assert (c.probes, c.answered) == (6, 1)


def test_membership_table_and_cluster_folder(etcs: dict[str, Path], tmp_path: Path) -> None:
    cfg = config.load(etcs["wall-1"])
    cfg.namespace = tmp_path / "n"
    m = members.Membership(cfg, tmp_path / "run")
    m.write()
    m.link_namespace()
    m.link_namespace()  # idempotent
    assert sorted(os.listdir(cfg.namespace / "cluster")) == ["wall-1"]
    m.update("vault", state="mounted", online=True, endpoint="10.44.0.14:51820")
    assert sorted(os.listdir(cfg.namespace / "cluster")) == ["vault", "wall-1"]
    vault = json.loads((cfg.namespace / "cluster" / "vault").read_text())
    assert vault["role"] == "storage" and vault["exports"] == {"drive": "/srv/drive"}
    assert vault["path"] == str(cfg.namespace / "vault") and ipaddress.IPv6Address(vault["mesh"])
    m.update("vault", state="lost", online=False, reason="no answer")
    assert sorted(os.listdir(cfg.namespace / "cluster")) == ["wall-1"]
    table = members.read_table(tmp_path / "run")
    assert table["pid"] == os.getpid() and [e["state"] for e in table["members"]] == ["lost", "self", "unknown"]
    assert not list((tmp_path / "run").glob(".*.tmp"))
    m.update("not-a-member", state="mounted", online=True)  # ignored: never a member
    assert "not-a-member" not in json.dumps(members.read_table(tmp_path / "run"))


def test_status_rendering(etcs: dict[str, Path], tmp_path: Path) -> None:
    cfg = config.load(etcs["wall-1"])
    m = members.Membership(cfg, tmp_path / "run")
    m.update("vault", state="mounted", online=True, endpoint="10.44.0.14:51820")
    m.update("wall-2", state="refused", online=False, reason="certificate of 'wall-2' is not from this cluster's CA")
    table = members.read_table(tmp_path / "run")
    rows = {r[0]: r for r in status.rows(table)}
    assert rows["vault"][1:3] == ("storage", "yes") and rows["vault"][4] == "drive=/srv/drive"
    assert rows["vault"][5] == str(cfg.namespace / "vault")
    assert rows["wall-1"][5] == "(this host)" and rows["wall-2"][2] == "no"
    assert "refused: certificate" in rows["wall-2"][3]
    text = status.render(table, width=200)
    assert "2 of 3 members online" in text and "vault" in text and "/n/vault" in text
    assert "not running" not in text
    plain = status._plain(table)
    assert plain.splitlines()[1].split()[:3] == ["host", "role", "online"]
    table["pid"] = 2 ** 22 + 1  # no such process: a stale table says so
    assert "the agent is not running" in status.headline(table)
