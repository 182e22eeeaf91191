"""Cluster identity made at build time: a cluster CA, and per host a certificate, a key, a
WireGuard key pair and a mesh address.

The CA (Ed25519, X.509) lives on the build machine, by default in
``~/.config/clusterctl/<cluster>/ca/`` (folder 0700, key 0600), beside ``hosts.json``, the
register of mesh addresses and WireGuard public keys handed out so far; adding a host later
loads the same CA and register. Each image gets only its own host's files (see
``write_host_identity``). Runs on Debian bookworm's python3 with python3-cryptography (38.x),
so nothing newer than that API is used.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
REGISTER = "hosts.json"
HOST_CERT = "host.crt"
HOST_KEY = "host.key"
WG_KEY = "wg.key"
WG_PUB = "wg.pub"
MESH = "mesh.json"
# Every file write_host_identity makes, with its mode: keys are the host's secrets.
HOST_FILES = {CA_CERT: 0o644, HOST_CERT: 0o644, HOST_KEY: 0o600, WG_KEY: 0o600, WG_PUB: 0o644, MESH: 0o644}

CA_DAYS = 30 * 365
# Long, because a sealed cluster (CA key discarded) can never renew; see docs/identity.md.
HOST_DAYS = 20 * 365
CLOCK_SKEW = datetime.timedelta(minutes=5)
HOST_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
CLUSTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class IdentityError(ValueError):
    """A missing, malformed or unsafe identity file, or a bad name."""


@dataclass
class ClusterCA:
    cluster: str
    cert: x509.Certificate
    key: ed25519.Ed25519PrivateKey
    directory: Path | None = None


@dataclass
class HostIdentity:
    host: str
    cluster: str
    address: ipaddress.IPv6Address
    cert: x509.Certificate
    key: ed25519.Ed25519PrivateKey
    ca_cert: x509.Certificate
    wg_private: str = ""  # base64 of the raw X25519 key, as `wg genkey` prints it
    wg_public: str = ""


# -- names, paths, addresses ----------------------------------------------------------------
def check_host_name(host: str) -> str:
    if not HOST_NAME.match(host):
        raise IdentityError(f"host name {host!r}: lower-case letters, digits and '-', at most 63")
    return host


def check_cluster_name(cluster: str) -> str:
    if not CLUSTER_NAME.match(cluster):
        raise IdentityError(f"cluster name {cluster!r}: letters, digits, '.', '_', '-', at most 63")
    return cluster


def default_ca_dir(cluster: str) -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "clusterctl" / check_cluster_name(cluster) / "ca"


def mesh_prefix(cluster: str) -> ipaddress.IPv6Network:
    """The cluster's mesh /64: an IPv6 unique local prefix (RFC 4193, fd00::/8) whose 40-bit
    global id is taken from the cluster name, so two clusters almost never overlap."""
    gid = hashlib.sha256(b"clusterctl mesh " + cluster.encode()).digest()[:5]
    return ipaddress.IPv6Network((b"\xfd" + gid + b"\x00\x00" + bytes(8), 64))


def now_utc() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def not_before(cert: x509.Certificate) -> datetime.datetime:
    # cryptography 38 (bookworm) only has the naive-UTC properties; newer ones warn on them.
    value = getattr(cert, "not_valid_before_utc", None)
    return value if value is not None else cert.not_valid_before.replace(tzinfo=datetime.UTC)


def not_after(cert: x509.Certificate) -> datetime.datetime:
    value = getattr(cert, "not_valid_after_utc", None)
    return value if value is not None else cert.not_valid_after.replace(tzinfo=datetime.UTC)


def fingerprint(cert: x509.Certificate) -> bytes:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()


def common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def cluster_of(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    return str(names[0].value) if names else ""


# -- files ----------------------------------------------------------------------------------
def _write(path: Path, data: bytes, mode: int) -> None:
    """Write whole or not at all, never readable by others for an instant (umask-proof)."""
    tmp = path.with_name(f".tmp.{path.name}")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _read_key(path: Path) -> ed25519.Ed25519PrivateKey:
    st = _stat(path)
    if st.st_mode & 0o077:
        raise IdentityError(f"{path} is readable by others (mode {st.st_mode & 0o777:o}); it must be 0600")
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise IdentityError(f"{path}: not an Ed25519 key")
    return key


def _stat(path: Path) -> os.stat_result:
    try:
        return path.stat()
    except FileNotFoundError:
        raise IdentityError(f"{path} is missing") from None


def _read_cert(path: Path) -> x509.Certificate:
    _stat(path)
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError as exc:
        raise IdentityError(f"{path}: not a PEM certificate ({exc})") from None


def _pem_key(key: ed25519.Ed25519PrivateKey | x25519.X25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


# -- the CA ---------------------------------------------------------------------------------
def create_ca(cluster: str, *, days: int = CA_DAYS) -> ClusterCA:
    check_cluster_name(cluster)
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "clusterctl"),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, cluster),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"{cluster} cluster CA")])
    start = now_utc() - CLOCK_SKEW
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         key_cert_sign=True, crl_sign=True, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, None))
    return ClusterCA(cluster, cert, key)


def save_ca(ca: ClusterCA, directory: Path) -> None:
    _private_dir(directory)
    _write(directory / CA_KEY, _pem_key(ca.key), 0o600)
    _write(directory / CA_CERT, _pem_cert(ca.cert), 0o644)
    ca.directory = directory


def load_ca(directory: Path) -> ClusterCA:
    directory = Path(directory)
    st = _stat(directory)
    if st.st_mode & 0o077:
        raise IdentityError(f"{directory} is open to others (mode {st.st_mode & 0o777:o}); it must be 0700")
    cert = _read_cert(directory / CA_CERT)
    key = _read_key(directory / CA_KEY)
    if key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw) != \
            cert.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw):
        raise IdentityError(f"{directory}: {CA_KEY} does not belong to {CA_CERT}")
    return ClusterCA(cluster_of(cert), cert, key, directory)


def init_ca(directory: Path, cluster: str) -> tuple[ClusterCA, bool]:
    """Load the CA in ``directory``, or make and save one; (CA, made now)."""
    directory = Path(directory)
    if (directory / CA_CERT).exists() or (directory / CA_KEY).exists():
        ca = load_ca(directory)
        if ca.cluster != cluster:
            raise IdentityError(f"{directory} holds the CA of cluster {ca.cluster!r}, not {cluster!r}")
        return ca, False
    ca = create_ca(cluster)
    save_ca(ca, directory)
    return ca, True


# -- the register of hosts ------------------------------------------------------------------
def read_register(directory: Path) -> dict[str, dict[str, str]]:
    path = Path(directory) / REGISTER
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return {str(k): dict(v) for k, v in data.get("hosts", {}).items()}


def allocate_address(cluster: str, register: dict[str, dict[str, str]], host: str) -> ipaddress.IPv6Address:
    """The host's mesh address: the one it had, else the lowest free ::N (N from 1)."""
    if host in register and register[host].get("address"):
        return ipaddress.IPv6Address(register[host]["address"])
    prefix = mesh_prefix(cluster)
    used = {ipaddress.IPv6Address(v["address"]) for v in register.values() if v.get("address")}
    n = 1
    while prefix[n] in used:
        n += 1
    return prefix[n]


# -- host identities ------------------------------------------------------------------------
def issue_host(ca: ClusterCA, host: str, *, days: int = HOST_DAYS,
               address: ipaddress.IPv6Address | None = None,
               start: datetime.datetime | None = None) -> HostIdentity:
    """A fresh key, certificate and WireGuard key pair for ``host``, signed by ``ca``. With the
    CA saved in a folder, the host's mesh address comes from (and goes into) its register."""
    check_host_name(host)
    register = read_register(ca.directory) if ca.directory else {}
    if address is None:
        address = allocate_address(ca.cluster, register, host)
    key = ed25519.Ed25519PrivateKey.generate()
    start = start or now_utc() - CLOCK_SKEW
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "clusterctl"),
                                     x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ca.cluster),
                                     x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(ca.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         key_cert_sign=False, crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host), x509.IPAddress(address)]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
                           critical=False)
            .sign(ca.key, None))
    wg = x25519.X25519PrivateKey.generate()
    wg_private = base64.b64encode(wg.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                                   serialization.NoEncryption())).decode()
    wg_public = wg_public_of(wg_private)
    ident = HostIdentity(host, ca.cluster, address, cert, key, ca.cert, wg_private, wg_public)
    if ca.directory is not None:
        register[host] = {"address": str(address), "wg_public": wg_public,
                          "serial": format(cert.serial_number, "x")}
        _write(ca.directory / REGISTER, (json.dumps({"cluster": ca.cluster, "hosts": register},
                                                    indent=2, sort_keys=True) + "\n").encode(), 0o644)
    return ident


def wg_public_of(private_b64: str) -> str:
    """What `wg pubkey` prints for a base64 private key."""
    raw = base64.b64decode(private_b64, validate=True)
    if len(raw) != 32:
        raise IdentityError("a WireGuard key is 32 bytes")
    pub = x25519.X25519PrivateKey.from_private_bytes(raw).public_key()
    return base64.b64encode(pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()


def write_host_identity(ident: HostIdentity, directory: Path) -> list[Path]:
    """Write the host's files (and nothing of any other host) into ``directory`` (0700):
    keys 0600, certificates and public facts 0644. Returns the paths written."""
    directory = Path(directory)
    _private_dir(directory)
    mesh = {"host": ident.host, "cluster": ident.cluster, "address": str(ident.address),
            "prefix": str(mesh_prefix(ident.cluster)), "wg_public": ident.wg_public}
    contents = {CA_CERT: _pem_cert(ident.ca_cert), HOST_CERT: _pem_cert(ident.cert), HOST_KEY: _pem_key(ident.key),
                WG_KEY: (ident.wg_private + "\n").encode(), WG_PUB: (ident.wg_public + "\n").encode(),
                MESH: (json.dumps(mesh, indent=2, sort_keys=True) + "\n").encode()}
    out = []
    for name, mode in HOST_FILES.items():
        _write(directory / name, contents[name], mode)
        out.append(directory / name)
    return out


def load_host_identity(directory: Path) -> HostIdentity:
    """Read what write_host_identity wrote; the key must be private and match the certificate."""
    directory = Path(directory)
    cert = _read_cert(directory / HOST_CERT)
    ca_cert = _read_cert(directory / CA_CERT)
    key = _read_key(directory / HOST_KEY)
    if key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw) != \
            cert.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw):
        raise IdentityError(f"{directory}: {HOST_KEY} does not belong to {HOST_CERT}")
    try:
        verify_issued(cert, ca_cert)
    except InvalidSignature:
        raise IdentityError(f"{directory}: {HOST_CERT} is not signed by {CA_CERT}") from None
    wg_private = wg_public = ""
    if (directory / WG_KEY).exists():
        if _stat(directory / WG_KEY).st_mode & 0o077:
            raise IdentityError(f"{directory / WG_KEY} is readable by others; it must be 0600")
        wg_private = (directory / WG_KEY).read_text().strip()
        wg_public = wg_public_of(wg_private)
    address = ipaddress.IPv6Address("::")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        ips = [ip for ip in san.get_values_for_type(x509.IPAddress) if isinstance(ip, ipaddress.IPv6Address)]
        if ips:
            address = ips[0]
    except x509.ExtensionNotFound:
        pass
    return HostIdentity(common_name(cert), cluster_of(cert), address, cert, key, ca_cert, wg_private, wg_public)


def verify_issued(cert: x509.Certificate, ca_cert: x509.Certificate) -> None:
    """Raise InvalidSignature unless ``ca_cert`` signed ``cert`` (Ed25519 only)."""
    ca_pub = ca_cert.public_key()
    if cert.issuer != ca_cert.subject or not isinstance(ca_pub, ed25519.Ed25519PublicKey):
        raise InvalidSignature("issuer does not match the cluster CA")
    ca_pub.verify(cert.signature, cert.tbs_certificate_bytes)


def ensure_host_identity(ca_dir: Path, cluster: str, host: str, out_dir: Path) -> tuple[Path, bool]:
    """For the builder: keep the host's identity in ``out_dir`` if it is whole and issued by
    this CA, else make the CA if needed, issue one and write it. (folder, issued now)."""
    ca, _made = init_ca(Path(ca_dir), cluster)
    out_dir = Path(out_dir)
    try:
        have = load_host_identity(out_dir)
        if (have.host == host and have.ca_cert == ca.cert and all((out_dir / n).exists() for n in HOST_FILES)
                and not_after(have.cert) > now_utc()):
            return out_dir, False
    except (IdentityError, ValueError):
        pass
    write_host_identity(issue_host(ca, host), out_dir)
    return out_dir, True


def image_files(directory: Path) -> list[tuple[Path, str, int]]:
    """(file on the build machine, name inside the image's identity folder, mode) for what
    write_host_identity wrote: what the builder copies into the host's image."""
    return [(Path(directory) / name, name, mode) for name, mode in HOST_FILES.items()]


def public_digest(directory: Path) -> str:
    """A digest of the host's public identity (certificates, WireGuard public key, mesh facts):
    what a build stage key may depend on, never the keys themselves."""
    h = hashlib.sha256()
    for name in (CA_CERT, HOST_CERT, WG_PUB, MESH):
        h.update(name.encode() + b"\0" + (Path(directory) / name).read_bytes())
    return h.hexdigest()
