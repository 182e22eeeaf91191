"""Host identities made by the build (builder/secrets.py, docs/identity.md "For the builder").

Real builds through ``clusterctl build``, in seconds: the cache is seeded with a small root
file system tarball (the shape mmdebstrap makes: accounts, dpkg status, a kernel and initrd
in /boot) under the key the plan gives its rootfs stage, so every later stage (overlay, root
partition, ESP, image with debugfs placement) runs for real. The images are then read back
with debugfs. Also: first boot copies the chosen host's identity off a stick.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent import identity as ident
from builder.cache import StageCache
from builder.plan import make_plan, onhost_code_hash
from builder.profile import load_profile
from builder.secrets import secret_owners, secrets_digest
from builder.stages.rootfs import describe_rootfs

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "LC_ALL": "C"}

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="debugfs keeps owners only as root")

PASSWD = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
GROUP = "root:x:0:\nshadow:x:42:\nnogroup:x:65534:\n"
STATUS = "Package: base-files\nStatus: install ok installed\nVersion: 12.4\n\n"


def profile_data(hosts: list[str]) -> dict[str, Any]:
    return {
        "cluster": {"name": "idtest", "network": {"lan": "10.77.0.0/24"}, "unattended": True},
        "oses": {"stable": {"suite": "bookworm"}},
        "roles": {"box": {"os": ["stable"], "exports": {"data": "/srv/data"}}},
        "hosts": {h: {"role": "box", "board": "vesa-mini-pc", "pin": {"mac": f"52:54:00:77:00:{i:02x}"}}
                  for i, h in enumerate(hosts, 1)},
        "images": {**{f"disk-{h}": {"type": "disk", "host": h, "size": "1GiB"} for h in hosts},
                   "stick": {"type": "usb-installer", "hosts": hosts, "size": "1GiB"}},
    }


def fake_root_tar(path: Path) -> None:
    """A tiny root with what the stages read from a real one."""
    files = {"etc/passwd": PASSWD, "etc/group": GROUP, "etc/shadow": "root:*:19000:0:99999:7:::\n",
             "etc/gshadow": "root:*::\n", "var/lib/dpkg/status": STATUS,
             "boot/vmlinuz-6.1.0-test": "kernel\n" * 100, "boot/initrd.img-6.1.0-test": "initrd\n" * 100,
             "etc/os-release": 'PRETTY_NAME="test"\n'}
    with tarfile.open(path, "w") as tar:
        for d in ("etc", "boot", "var", "var/lib", "var/lib/dpkg", "srv"):
            ti = tarfile.TarInfo(f"./{d}")
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(ti)
        for name, text in files.items():
            data = text.encode()
            ti = tarfile.TarInfo(f"./{name}")
            ti.size, ti.mode = len(data), 0o640 if "shadow" in name else 0o644
            tar.addfile(ti, io.BytesIO(data))


class Site:
    """One build output, cache and CA folder; builds ``clusterctl build`` runs on them."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.cache, self.out, self.ca = base / "cache", base / "images", base / "ca"
        self.profile = base / "idtest.yaml"

    def write(self, hosts: list[str]) -> None:
        self.profile.write_text(yaml.safe_dump(profile_data(hosts)))
        self.seed()

    def seed(self) -> None:
        """Put the small root under the rootfs stage's key (as a finished mmdebstrap would)."""
        plan = make_plan(load_profile(self.profile), out_dir=self.out)
        cache = StageCache(self.cache)
        try:
            for st in plan.ordered():
                if st.kind == "rootfs" and not cache.has(st.key):
                    tar = cache.workdir("seed") / "rootfs.tar"
                    fake_root_tar(tar)
                    cache.commit(st.key, {**describe_rootfs(tar), "kind": "rootfs", "name": st.name}, tar)
        finally:
            cache.close()

    def build(self, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "builder", "build", str(self.profile), "--out", str(self.out),
                "--cache-dir", str(self.cache), "--json", *extra]
        return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=env or ENV, timeout=300)

    def build_ok(self, *extra: str) -> dict[str, Any]:
        r = self.build("--ca-dir", str(self.ca), *extra)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout.splitlines()[-1])

    def secrets(self, host: str) -> Path:
        return self.out / "idtest" / ".secrets" / host / "agent"

    def image(self, name: str) -> Path:
        return self.out / "idtest" / f"{name}.img"


def root_offset(image: Path) -> int:
    table = json.loads(subprocess.run(["sfdisk", "--json", str(image)], check=True, capture_output=True,
                                      text=True).stdout)["partitiontable"]
    return next(p["start"] for p in table["partitions"] if p["name"] == "root-stable") * 512


def debugfs(image: Path, cmd: str) -> str:
    return subprocess.run(["debugfs", "-R", cmd, f"{image}?offset={root_offset(image)}"], check=True,
                          capture_output=True, text=True, env=ENV).stdout


def mode_of(image: Path, path: str) -> int:
    out = debugfs(image, f"stat {path}")
    assert "Mode:" in out, f"{path} is not in {image.name}"
    return int(out.split("Mode:")[1].split()[0], 8)


def listing(image: Path, path: str) -> list[str]:
    out = debugfs(image, f"ls -p {path}")
    return sorted(f.split("/")[5] for f in out.splitlines() if f.count("/") >= 6 and f.split("/")[5] not in (".", ".."))


def secret_needles(folder: Path) -> list[bytes]:
    """Bytes that only the host's private keys contain: the PEM body and the WireGuard key."""
    pem = (folder / ident.HOST_KEY).read_text().splitlines()[1].encode()
    return [pem, (folder / ident.WG_KEY).read_bytes().strip()]


def files_containing(root: Path, needles: list[bytes]) -> list[Path]:
    hits = []
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            with open(p, "rb") as f:
                while chunk := f.read(64 << 20):
                    if any(n in chunk for n in needles):
                        hits.append(p)
                        break
    return hits


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    s = Site(tmp_path_factory.mktemp("identity"))
    s.write(["alpha", "beta"])
    s.build_ok()
    return s


def test_identity_files_and_modes_in_the_build_output(site: Site) -> None:
    assert site.ca.stat().st_mode & 0o777 == 0o700
    assert (site.ca / "ca.key").stat().st_mode & 0o777 == 0o600
    for h in ("alpha", "beta"):
        folder = site.secrets(h)
        assert folder.stat().st_mode & 0o777 == 0o700
        assert folder.parent.parent.stat().st_mode & 0o777 == 0o700  # .secrets
        for name, mode in ident.HOST_FILES.items():
            assert (folder / name).stat().st_mode & 0o777 == mode, name
        loaded = ident.load_host_identity(folder)
        assert (loaded.host, loaded.cluster) == (h, "idtest")
        assert loaded.ca_cert == ident.load_ca(site.ca).cert
    manifest = json.loads((site.out / "idtest" / "manifest.json").read_text())
    for h in ("alpha", "beta"):
        assert manifest["identity"]["hosts"][h]["public_digest"] == ident.public_digest(site.secrets(h))
    assert manifest["identity"]["ca_sha256"] == ident.fingerprint(ident.load_ca(site.ca).cert).hex()
    assert "PRIVATE" not in json.dumps(manifest)


def test_a_disk_image_holds_its_own_identity_only(site: Site) -> None:
    img = site.image("disk-alpha")
    d = "/etc/clusterctl/identity"
    assert mode_of(img, d) == 0o700
    assert listing(img, d) == sorted([*ident.HOST_FILES, "hosts.json"])
    for name, mode in ident.HOST_FILES.items():
        assert mode_of(img, f"{d}/{name}") & 0o7777 == mode, name
        assert debugfs(img, f"cat {d}/{name}").encode() == (site.secrets("alpha") / name).read_bytes(), name
    assert "User:     0" in debugfs(img, f"stat {d}/host.key")
    assert mode_of(img, f"{d}/hosts.json") & 0o7777 == 0o644
    # The agent's view of the cluster (exports, addresses): the resolved profile, as on a stick.
    assert mode_of(img, "/etc/clusterctl/profile.json") & 0o7777 == 0o640
    assert json.loads(debugfs(img, "cat /etc/clusterctl/profile.json"))["roles"]["box"]["exports"] == {
        "data": "/srv/data"}
    reg = json.loads(debugfs(img, f"cat {d}/hosts.json"))
    assert reg["cluster"] == "idtest" and sorted(reg["hosts"]) == ["alpha", "beta"]
    for h in ("alpha", "beta"):
        mesh = json.loads((site.secrets(h) / ident.MESH).read_text())
        assert reg["hosts"][h]["address"] == mesh["address"] and reg["hosts"][h]["wg_public"] == mesh["wg_public"]
        assert set(reg["hosts"][h]) == {"address", "wg_public", "serial"}  # public facts only
    # Not beta's keys, not the CA's key: byte for byte, anywhere in the image.
    needles = [*secret_needles(site.secrets("beta")), (site.ca / "ca.key").read_text().splitlines()[1].encode()]
    images = sorted(p.name for p in files_containing(img.parent, needles) if p.suffix == ".img")
    assert images == ["disk-beta.img", "stick.img"]  # beta's own, and the stick that installs beta


def test_a_stick_holds_each_hosts_identity_for_first_boot(site: Site) -> None:
    img = site.image("stick")
    for h in ("alpha", "beta"):
        d = f"/var/lib/clusterctl/hosts/{h}/identity"
        assert mode_of(img, d) == 0o700
        assert listing(img, d) == sorted([*ident.HOST_FILES, "hosts.json"])
        assert mode_of(img, f"{d}/host.key") & 0o7777 == 0o600
        assert debugfs(img, f"cat {d}/wg.key").encode() == (site.secrets(h) / ident.WG_KEY).read_bytes()
    # The stick's own system is no host: no identity, so its agent stays idle.
    assert "File not found" in subprocess.run(
        ["debugfs", "-R", "stat /etc/clusterctl/identity/host.crt", f"{img}?offset={root_offset(img)}"],
        capture_output=True, text=True, env=ENV).stderr


def test_no_secret_in_the_stage_cache(site: Site) -> None:
    needles = [n for h in ("alpha", "beta") for n in secret_needles(site.secrets(h))]
    needles.append((site.ca / "ca.key").read_text().splitlines()[1].encode())
    assert files_containing(site.cache, needles) == []
    # The stage keys see digests of public halves only.
    digest = secrets_digest(site.out, "idtest", secret_owners(load_profile(site.profile).model))
    assert digest["alpha"] != "to generate" and digest["hosts.json"]


def test_rebuild_keeps_every_key_and_reuses_every_stage(site: Site) -> None:
    owners = secret_owners(load_profile(site.profile).model)
    before = {h: {n: (site.secrets(h) / n).read_bytes() for n in ident.HOST_FILES} for h in ("alpha", "beta")}
    code = onhost_code_hash()
    site.build_ok()  # brings the overlays up to the on-host code of now (agent/ may be edited while this runs)
    digest = secrets_digest(site.out, "idtest", owners)
    done = site.build_ok()
    after = {h: {n: (site.secrets(h) / n).read_bytes() for n in ident.HOST_FILES} for h in ("alpha", "beta")}
    assert after == before
    assert secrets_digest(site.out, "idtest", owners) == digest
    if onhost_code_hash() == code:
        assert done["built"] == [], done


def test_a_new_host_reuses_the_ca_and_joins_the_register(site: Site) -> None:
    alpha_before = (site.secrets("alpha") / ident.HOST_CERT).read_bytes()
    ca_before = (site.ca / "ca.key").read_bytes()
    site.write(["alpha", "beta", "gamma"])
    done = site.build_ok()
    assert "image:disk-alpha" in done["built"]  # its register now names gamma
    assert (site.ca / "ca.key").read_bytes() == ca_before
    gamma = ident.load_host_identity(site.secrets("gamma"))
    assert gamma.ca_cert == ident.load_ca(site.ca).cert
    addresses = {h: ident.load_host_identity(site.secrets(h)).address for h in ("alpha", "beta", "gamma")}
    assert len(set(addresses.values())) == 3 and all(a in ident.mesh_prefix("idtest") for a in addresses.values())
    assert (site.secrets("alpha") / ident.HOST_CERT).read_bytes() == alpha_before
    reg = json.loads(debugfs(site.image("disk-alpha"), "cat /etc/clusterctl/identity/hosts.json"))
    assert sorted(reg["hosts"]) == ["alpha", "beta", "gamma"]
    assert reg["hosts"]["gamma"]["address"] == str(addresses["gamma"])


def test_a_sealed_ca_rebuilds_known_hosts_and_refuses_a_new_one(site: Site, tmp_path: Path) -> None:
    sealed = tmp_path / "sealed"
    sealed.mkdir(mode=0o700)
    for n in ("ca.crt", "hosts.json"):
        (sealed / n).write_bytes((site.ca / n).read_bytes())
    site.write(["alpha", "beta"])
    r = site.build("--ca-dir", str(sealed))
    assert r.returncode == 0, r.stderr  # every host has its identity: the key is not needed
    site.write(["alpha", "beta", "delta"])
    r = site.build("--ca-dir", str(sealed))
    assert r.returncode == 2, r.stderr
    assert "sealed" in r.stderr and "'delta'" in r.stderr and "Traceback" not in r.stderr
    assert not site.secrets("delta").exists() or not (site.secrets("delta") / ident.HOST_CERT).exists()
    site.write(["alpha", "beta"])


def test_another_clusters_ca_is_refused(site: Site, tmp_path: Path) -> None:
    other = tmp_path / "other"
    ident.init_ca(other, "someoneelse")
    r = site.build("--ca-dir", str(other))
    assert r.returncode == 2 and "someoneelse" in r.stderr and "Traceback" not in r.stderr


def test_ca_location_env_and_default(tmp_path: Path) -> None:
    s = Site(tmp_path)
    s.write(["solo"])
    env_ca = tmp_path / "env-ca"
    r = s.build("--image", "disk-solo", env={**ENV, "CLUSTERCTL_CA_DIR": str(env_ca)})
    assert r.returncode == 0, r.stderr
    assert (env_ca / "ca.key").exists()
    # No option, no variable: the user's config dir.
    out2 = tmp_path / "images2"
    env = {k: v for k, v in ENV.items() if k != "CLUSTERCTL_CA_DIR"}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    r = subprocess.run([sys.executable, "-m", "builder", "build", str(s.profile), "--out", str(out2), "--cache-dir",
                        str(s.cache), "--image", "disk-solo", "--json"], cwd=ROOT, capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    default = tmp_path / "config" / "clusterctl" / "idtest" / "ca"
    assert (default / "ca.key").stat().st_mode & 0o777 == 0o600
    cert = ident.load_host_identity(out2 / "idtest" / ".secrets" / "solo" / "agent")
    assert cert.ca_cert == ident.load_ca(default).cert


# -- first boot: the chosen host's identity off the stick ------------------------------------

def test_first_boot_installs_the_chosen_hosts_identity(tmp_path: Path) -> None:
    from agent.firstboot.installer import install
    from core.disk.ext4 import Ext4
    from tests.test_installer import assert_installed, blank, cat, mode, part, request
    from tests.test_installer_stick import HOSTS, SYSTEM_OSES, make_stick

    stick = make_stick(tmp_path / "stick")
    ca = tmp_path / "ca"
    folders = {}
    for h in HOSTS:
        folders[h], _ = ident.ensure_host_identity(ca, "dualnano", h, tmp_path / "ids" / h)
    register = (ca / "hosts.json").read_bytes()
    for o in SYSTEM_OSES:
        fs = Ext4(str(stick), part(stick, f"root-{o}")["start"] * 512)
        files = [(f"/var/lib/clusterctl/hosts/{h}/identity/{name}", src.read_bytes(), m, 0, 0)
                 for h in HOSTS for src, name, m in ident.image_files(folders[h])]
        files += [(f"/var/lib/clusterctl/hosts/{h}/identity/hosts.json", register, 0o644, 0, 0) for h in HOSTS]
        fs.write_files(files)
    disk = blank(tmp_path / "nvme.img")
    install(request(stick, disk, "right"), disk_name="/dev/sda")
    key = (folders["right"] / ident.HOST_KEY).read_bytes()
    assert_installed(stick, disk, "right", key)  # and the stick's other hosts' folders are gone
    for o in ("stable",):
        p = part(disk, f"root-{o}")
        assert mode(disk, p, "/etc/clusterctl/identity") == 0o700
        for src, name, m in ident.image_files(folders["right"]):
            assert cat(disk, p, f"/etc/clusterctl/identity/{name}").encode() == src.read_bytes(), name
            assert mode(disk, p, f"/etc/clusterctl/identity/{name}") & 0o7777 == m, name
        assert cat(disk, p, "/etc/clusterctl/identity/hosts.json").encode() == register
    # Nothing of left's reached the disk.
    needles = secret_needles(folders["left"])
    with open(disk, "rb") as f:
        while chunk := f.read(64 << 20):
            assert not any(n in chunk for n in needles)
