"""Cluster CA and host identities: issued by the CA (checked by openssl too), names and mesh
addresses in the certificate, WireGuard keys as wg makes them, private files 0600, a host's
folder holding only its own secrets, the same CA and register re-used for a later host, and
the ``clusterctl agent identity`` commands."""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from agent import identity as idm
from builder.cli import main


@pytest.fixture()
def ca_dir(tmp_path: Path) -> Path:
    return tmp_path / "ca"


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_ca_made_once_and_reused(ca_dir: Path) -> None:
    ca, made = idm.init_ca(ca_dir, "demo")
    assert made and mode(ca_dir) == 0o700 and mode(ca_dir / idm.CA_KEY) == 0o600
    again, made_again = idm.init_ca(ca_dir, "demo")
    assert not made_again and again.cert == ca.cert
    with pytest.raises(idm.IdentityError, match="cluster 'demo'"):
        idm.init_ca(ca_dir, "other")
    os.chmod(ca_dir / idm.CA_KEY, 0o644)
    with pytest.raises(idm.IdentityError, match="readable by others"):
        idm.load_ca(ca_dir)


def test_host_identity_contents(ca_dir: Path, tmp_path: Path) -> None:
    ca, _ = idm.init_ca(ca_dir, "demo")
    left = idm.issue_host(ca, "left")
    right = idm.issue_host(ca, "right")
    prefix = idm.mesh_prefix("demo")
    assert prefix.is_private and str(prefix).startswith("fd")
    assert [left.address, right.address] == [prefix[1], prefix[2]]
    san = left.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["left"]
    assert san.get_values_for_type(x509.IPAddress) == [left.address]
    assert idm.common_name(left.cert) == "left" and idm.cluster_of(left.cert) == "demo"
    idm.verify_issued(left.cert, ca.cert)
    # A later host: a fresh load of the same CA folder, the next free address, the same issuer.
    later = idm.issue_host(idm.load_ca(ca_dir), "third")
    assert later.address == prefix[3] and later.cert.issuer == ca.cert.subject
    reissued = idm.issue_host(idm.load_ca(ca_dir), "left")
    assert reissued.address == left.address  # a host keeps its mesh address
    register = json.loads((ca_dir / idm.REGISTER).read_text())["hosts"]
    assert sorted(register) == ["left", "right", "third"]
    assert register["left"]["wg_public"] == reissued.wg_public
    # Another cluster's mesh does not overlap.
    assert not idm.mesh_prefix("other").overlaps(prefix)


def test_files_modes_and_only_own_secrets(ca_dir: Path, tmp_path: Path) -> None:
    ca, _ = idm.init_ca(ca_dir, "demo")
    old = os.umask(0)  # a careless umask must not leak keys
    try:
        left_dir, right_dir = tmp_path / "left", tmp_path / "right"
        idm.write_host_identity(idm.issue_host(ca, "left"), left_dir)
        idm.write_host_identity(idm.issue_host(ca, "right"), right_dir)
    finally:
        os.umask(old)
    assert mode(left_dir) == 0o700
    assert {p.name: mode(p) for p in left_dir.iterdir()} == idm.HOST_FILES
    assert mode(left_dir / idm.HOST_KEY) == mode(left_dir / idm.WG_KEY) == 0o600
    left = idm.load_host_identity(left_dir)
    right = idm.load_host_identity(right_dir)
    assert left.host == "left" and left.cluster == "demo" and left.address == idm.mesh_prefix("demo")[1]
    # Nothing secret of right (nor the CA key) is anywhere in left's folder.
    ca_key = (ca_dir / idm.CA_KEY).read_bytes()
    secrets = [(right_dir / idm.HOST_KEY).read_bytes(), right.wg_private.encode(), ca_key,
               ca_key.split(b"\n")[1]]
    for p in left_dir.iterdir():
        data = p.read_bytes()
        assert not any(s in data for s in secrets), p
    mesh = json.loads((left_dir / idm.MESH).read_text())
    assert mesh == {"host": "left", "cluster": "demo", "address": str(left.address),
                    "prefix": str(idm.mesh_prefix("demo")), "wg_public": left.wg_public}
    assert [(src.name, name, m) for src, name, m in idm.image_files(left_dir)] == \
        [(n, n, m) for n, m in idm.HOST_FILES.items()]
    digest = idm.public_digest(left_dir)
    assert digest == idm.public_digest(left_dir) and digest != idm.public_digest(right_dir)
    os.chmod(left_dir / idm.HOST_KEY, 0o640)
    with pytest.raises(idm.IdentityError, match="readable by others"):
        idm.load_host_identity(left_dir)


def test_wireguard_keys_match_wg(ca_dir: Path, tmp_path: Path) -> None:
    ca, _ = idm.init_ca(ca_dir, "demo")
    ident = idm.issue_host(ca, "left")
    raw = base64.b64decode(ident.wg_private)
    assert len(raw) == 32 and len(base64.b64decode(ident.wg_public)) == 32
    if shutil.which("wg") is None:
        pytest.skip("wg (wireguard-tools) is not installed: only the key shapes were checked")
    out = subprocess.run(["wg", "pubkey"], input=ident.wg_private + "\n", capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == ident.wg_public


def test_openssl_agrees(ca_dir: Path, tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    ca, _ = idm.init_ca(ca_dir, "demo")
    idm.write_host_identity(idm.issue_host(ca, "left"), tmp_path / "left")
    other, _ = idm.init_ca(tmp_path / "otherca", "other")
    idm.write_host_identity(idm.issue_host(other, "left"), tmp_path / "stranger")
    ok = subprocess.run(["openssl", "verify", "-CAfile", str(ca_dir / idm.CA_CERT), str(tmp_path / "left/host.crt")],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = subprocess.run(["openssl", "verify", "-CAfile", str(ca_dir / idm.CA_CERT),
                          str(tmp_path / "stranger/host.crt")], capture_output=True, text=True)
    assert bad.returncode != 0


def test_mismatched_key_is_refused_on_load(ca_dir: Path, tmp_path: Path) -> None:
    ca, _ = idm.init_ca(ca_dir, "demo")
    idm.write_host_identity(idm.issue_host(ca, "left"), tmp_path / "left")
    idm.write_host_identity(idm.issue_host(ca, "right"), tmp_path / "right")
    shutil.copy(tmp_path / "right" / idm.HOST_KEY, tmp_path / "left" / idm.HOST_KEY)
    with pytest.raises(idm.IdentityError, match="does not belong"):
        idm.load_host_identity(tmp_path / "left")


def test_ensure_host_identity_keeps_then_replaces(ca_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "secrets" / "left" / "agent"
    _, issued = idm.ensure_host_identity(ca_dir, "demo", "left", out)
    first = (out / idm.HOST_CERT).read_bytes()
    _, issued_again = idm.ensure_host_identity(ca_dir, "demo", "left", out)
    assert issued and not issued_again and (out / idm.HOST_CERT).read_bytes() == first
    # A different CA (the cluster was re-keyed): the stale identity is replaced.
    _, reissued = idm.ensure_host_identity(tmp_path / "newca", "demo", "left", out)
    assert reissued and (out / idm.CA_CERT).read_bytes() == (tmp_path / "newca" / idm.CA_CERT).read_bytes()


def test_default_ca_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert idm.default_ca_dir("demo") == tmp_path / "clusterctl" / "demo" / "ca"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert idm.default_ca_dir("demo") == tmp_path / "home" / ".config" / "clusterctl" / "demo" / "ca"


def test_cli_init_and_issue(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert main(["agent", "identity", "init", "--cluster", "demo"]) == 0
    ca = tmp_path / "cfg" / "clusterctl" / "demo" / "ca"
    assert "made the CA of cluster demo" in capsys.readouterr().out and mode(ca) == 0o700
    assert main(["agent", "identity", "init", "--cluster", "demo"]) == 0
    assert "kept the CA" in capsys.readouterr().out
    assert main(["agent", "identity", "issue", "--ca-dir", str(ca), "--host", "left",
                 "--out", str(tmp_path / "left")]) == 0
    out = capsys.readouterr().out
    assert "mesh address fd" in out and idm.load_host_identity(tmp_path / "left").host == "left"
    ipaddress.IPv6Address(out.split("mesh address ")[1].split(",")[0])


@pytest.mark.parametrize("argv, message", [
    (["agent", "identity", "init", "--cluster", "bad name"], "cluster name"),
    (["agent", "identity", "issue", "--ca-dir", "/no/such/ca", "--host", "left", "--out", "/tmp/x"], "missing"),
    (["agent", "identity", "issue", "--ca-dir", "CA", "--host", "Not_A_Host", "--out", "OUT"], "host name"),
    (["agent", "serve", "--identity", "/no/such/identity"], "--identity"),
    (["agent", "mount", "127.0.0.1:1", "/tmp", "--identity", "/no/such/identity"], "--identity"),
])
def test_bad_input_exits_2(argv: list[str], message: str, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    idm.init_ca(tmp_path / "ca", "demo")
    argv = [a.replace("CA", str(tmp_path / "ca")).replace("OUT", str(tmp_path / "out")) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_sealed_ca_cannot_issue_nor_be_replaced(ca_dir: Path) -> None:
    idm.init_ca(ca_dir, "demo")
    (ca_dir / idm.CA_KEY).unlink()  # sealed: docs/identity.md
    with pytest.raises(idm.IdentityError, match=r"ca\.key is missing"):
        idm.init_ca(ca_dir, "demo")  # never silently a new CA the hosts would not trust
    with pytest.raises(idm.IdentityError, match="missing"):
        idm.load_ca(ca_dir)
