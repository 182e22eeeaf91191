"""Per-host secrets: ssh host keys and the agent's cluster identity (docs/identity.md).

They are made once per build output and kept beside it in ``images/<cluster>/.secrets/<host>/``
(folder 0700, files 0600; the identity in its ``agent/`` sub-folder), so a rebuild keeps each
host's keys (no known_hosts churn, no re-keyed mesh) and nothing secret ever enters the shared
stage cache: stage keys only see a digest of the public halves.

The identity is issued by the cluster CA, which stays with the user: ``--ca-dir``, else
``$CLUSTERCTL_CA_DIR``, else ``~/.config/clusterctl/<cluster>/ca`` (made on first use, reused
for later hosts and builds). A sealed CA (``ca.key`` discarded) still rebuilds hosts that have
their identity, and refuses plainly to issue a new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from cryptography import x509

from agent import identity as ident
from agent.stickseal import MIN_PASSPHRASE, SALT_BYTES, SecretFile, StickKey, seal
from core.model import Profile

# ed25519 and ECDSA cover every current OpenSSH client; RSA keys cost ~1 s each to make,
# which a stick of 16 hosts would feel.
SSH_KEY_TYPES = ("ed25519", "ecdsa")


def installer_identity(image: str) -> str:
    """The secrets folder of a usb-installer stick itself (its sshd while it installs)."""
    return f"{image}.installer"


def _model(profile: Profile | dict[str, Any]) -> Profile:
    return profile if isinstance(profile, Profile) else Profile.from_json(profile)


def image_host_names(profile: Profile | dict[str, Any]) -> list[str]:
    """The hosts some image of the resolved profile (the model, or its JSON) holds: those that
    get secrets and identity."""
    return _model(profile).image_hosts()


def secret_owners(profile: Profile | dict[str, Any]) -> list[str]:
    """Everything with a secrets folder: the image hosts, then each stick's own (its sshd)."""
    model = _model(profile)
    return model.image_hosts() + [installer_identity(n) for n, img in model.images.items() if img.installer]


def secrets_dir(out_dir: Path, cluster: str, host: str) -> Path:
    return Path(out_dir) / cluster / ".secrets" / host


def ensure_host_secrets(out_dir: Path, cluster: str, host: str) -> Path:
    """Make the host's ssh host keys if they are missing; return their folder."""
    d = secrets_dir(out_dir, cluster, host)
    d.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(d.parent, 0o700)
    d.mkdir(mode=0o700, exist_ok=True)
    os.chmod(d, 0o700)
    for kind in SSH_KEY_TYPES:
        key = d / f"ssh_host_{kind}_key"
        if key.exists() and key.with_suffix(".pub").exists():
            continue
        tmp = d / f".tmp_ssh_host_{kind}_key"
        for p in (tmp, tmp.with_name(tmp.name + ".pub")):
            p.unlink(missing_ok=True)
        old = os.umask(0o077)
        try:
            subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", f"root@{host}", "-f", str(tmp)],
                           check=True, capture_output=True)
        finally:
            os.umask(old)
        # Public half first: a private key without its .pub is regenerated next time.
        os.replace(tmp.with_name(tmp.name + ".pub"), key.with_name(key.name + ".pub"))
        os.replace(tmp, key)
    return d


def host_secret_files(out_dir: Path, cluster: str, host: str) -> list[tuple[Path, str, int]]:
    """(file on the build machine, path inside the root, mode) for each secret of a host."""
    d = secrets_dir(out_dir, cluster, host)
    out: list[tuple[Path, str, int]] = []
    for kind in SSH_KEY_TYPES:
        out.append((d / f"ssh_host_{kind}_key", f"ssh_host_{kind}_key", 0o600))
        out.append((d / f"ssh_host_{kind}_key.pub", f"ssh_host_{kind}_key.pub", 0o644))
    return out


def secrets_digest(out_dir: Path, cluster: str, hosts: list[str]) -> dict[str, str]:
    """Per host, a digest of its public keys and public identity (what a stage key may depend
    on), or 'to generate'; under REGISTER_KEY, the digest of the register images carry."""
    out: dict[str, str] = {}
    for h in hosts:
        d = secrets_dir(out_dir, cluster, h)
        pubs = [d / f"ssh_host_{k}_key.pub" for k in SSH_KEY_TYPES]
        if all(p.exists() for p in pubs) and all((d / f"ssh_host_{k}_key").exists() for k in SSH_KEY_TYPES):
            h_ = hashlib.sha256(b"".join(p.read_bytes() for p in pubs))
            agent = identity_dir(out_dir, cluster, h)
            if agent.is_dir():
                try:
                    h_.update(b"identity\0" + ident.public_digest(agent).encode())
                except OSError:
                    h_.update(b"identity\0incomplete")
            out[h] = h_.hexdigest()
        else:
            out[h] = "to generate"
    out[REGISTER_KEY] = hashlib.sha256(register_bytes(out_dir, cluster, hosts)).hexdigest()
    return out


# -- the agent's identity -------------------------------------------------------------------

REGISTER_KEY = "hosts.json"  # the register's entry in secrets_digest (not a host name: has a dot)
IDENTITY_IN_ROOT = "/etc/clusterctl/identity"
STICK_HOSTS = "/var/lib/clusterctl/hosts"  # first boot copies <host>/identity/ to IDENTITY_IN_ROOT


class IdentityRefused(ValueError):
    """The CA cannot give a host its identity (sealed, unreadable, another cluster's): exit 2."""


def named_ca_dir(ca_dir: Path | str | None = None) -> Path | None:
    """The CA folder the user named: the build option, else $CLUSTERCTL_CA_DIR; None for the default."""
    named = ca_dir or os.environ.get("CLUSTERCTL_CA_DIR")
    return Path(named) if named else None


def ca_dir_for(cluster: str, ca_dir: Path | str | None = None) -> Path:
    """The cluster CA's folder: the build option, else $CLUSTERCTL_CA_DIR, else the user's
    config dir (~/.config/clusterctl/<cluster>/ca)."""
    return named_ca_dir(ca_dir) or ident.default_ca_dir(cluster)


def identity_dir(out_dir: Path, cluster: str, host: str) -> Path:
    return secrets_dir(out_dir, cluster, host) / "agent"


def _kept_under_sealed_ca(ca_dir: Path, folder: Path, host: str) -> bool:
    """With the CA key gone, an identity this CA issued earlier is still good to rebuild with."""
    try:
        have = ident.load_host_identity(folder)
        ca_cert = x509.load_pem_x509_certificate((ca_dir / ident.CA_CERT).read_bytes())
    except (ident.IdentityError, ValueError, OSError):
        return False
    return (have.host == host and have.ca_cert == ca_cert and ident.not_after(have.cert) > ident.now_utc()
            and all((folder / n).exists() for n in ident.HOST_FILES))


def ensure_host_identity(out_dir: Path, cluster: str, host: str, ca_dir: Path) -> tuple[Path, bool]:
    """The host's identity in this build output, issued now if missing; (folder, issued now).
    Needs ``ensure_host_secrets`` to have made the host's secrets folder."""
    folder = identity_dir(out_dir, cluster, host)
    ca_dir = Path(ca_dir)
    sealed = (ca_dir / ident.CA_CERT).exists() and not (ca_dir / ident.CA_KEY).exists()
    if sealed:
        if _kept_under_sealed_ca(ca_dir, folder, host):
            return folder, False
        raise IdentityRefused(
            f"the cluster CA in {ca_dir} is sealed (its {ident.CA_KEY} was discarded), so host {host!r} "
            f"cannot be issued an identity (none usable in {folder}); build with the CA that still has "
            "its key (--ca-dir), or start a new cluster CA in an empty folder (its hosts will not trust "
            "the old ones)")
    try:
        return ident.ensure_host_identity(ca_dir, cluster, host, folder)
    except ident.IdentityError as err:
        raise IdentityRefused(f"cluster CA {ca_dir}: {err}") from None


def identity_files(out_dir: Path, cluster: str, host: str) -> list[tuple[Path, str, int]]:
    """(file on the build machine, name in the identity folder, mode): the host's own files."""
    return ident.image_files(identity_dir(out_dir, cluster, host))


def register_bytes(out_dir: Path, cluster: str, hosts: list[str]) -> bytes:
    """hosts.json for the images: {host: {address, wg_public, serial}} of the given hosts that
    have an identity in this build output. Public facts only (never the CA's own register,
    which may list hosts of other profiles sharing the CA)."""
    reg: dict[str, dict[str, str]] = {}
    for h in sorted(hosts):
        folder = identity_dir(out_dir, cluster, h)
        try:
            mesh = json.loads((folder / ident.MESH).read_text())
            cert = x509.load_pem_x509_certificate((folder / ident.HOST_CERT).read_bytes())
        except (OSError, ValueError):
            continue
        reg[h] = {"address": str(mesh["address"]), "wg_public": str(mesh["wg_public"]),
                  "serial": format(cert.serial_number, "x")}
    return (json.dumps({"cluster": cluster, "hosts": reg}, indent=2, sort_keys=True) + "\n").encode()


# -- a stick's sealed secrets (cluster.stick_secrets: passphrase) -----------------------------

STICK_SEAL = "stick"  # the sealing key's entry in secrets_digest (a verifier, never the key)
STICK_SALT = "stick.salt"


class StickPassphraseNeeded(ValueError):
    """The profile seals its sticks' secrets but the build was given no passphrase: exit 2."""


def needs_stick_passphrase(model: Profile, only: list[str] | None = None) -> bool:
    """Whether a build of these images (all when None) seals a stick's secrets."""
    return model.cluster.stick_secrets == "passphrase" and any(
        img.installer for n, img in model.images.items() if not only or n in only)


def stick_key(out_dir: Path, cluster: str, passphrase: str) -> StickKey:
    """The key that seals the cluster's sticks. Its salt is kept beside the hosts' secrets, so a
    rebuild with the same passphrase gives the same sealed bytes (the image is reused)."""
    if len(passphrase) < MIN_PASSPHRASE or "\n" in passphrase:
        raise StickPassphraseNeeded(f"the stick passphrase must be one line of at least {MIN_PASSPHRASE} "
                                    "characters (it is all that stands between a lost stick and the "
                                    "cluster's keys)")
    folder = Path(out_dir) / cluster / ".secrets"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    salt_file = folder / STICK_SALT
    if not salt_file.exists():
        tmp = folder / f".{STICK_SALT}.tmp"
        tmp.write_bytes(os.urandom(SALT_BYTES))
        os.replace(tmp, salt_file)
    return StickKey.derive(passphrase, salt_file.read_bytes())


def sealed_host_secrets(out_dir: Path, cluster: str, host: str, key: StickKey, register: Path) -> bytes:
    """One blob with the host's ssh keys and its identity (with the register first boot copies
    beside it): what a sealed stick carries instead of the files."""
    files = [SecretFile(f"ssh/{name}", mode, src.read_bytes()) for src, name, mode in
             host_secret_files(out_dir, cluster, host)]
    files += [SecretFile(f"identity/{name}", mode, src.read_bytes()) for src, name, mode in
              identity_files(out_dir, cluster, host)]
    files.append(SecretFile("identity/hosts.json", 0o644, register.read_bytes()))
    return seal(key, cluster, host, files)
