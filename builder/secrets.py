"""Per-host secrets (ssh host keys now; the agent's identity later).

They are made once per build output and kept beside it in ``images/<cluster>/.secrets/<host>/``
(folder 0700, files 0600), so a rebuild keeps each host's identity (no known_hosts churn) and
nothing secret ever enters the shared stage cache: stage keys only see a digest of the
public halves.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

# ed25519 and ECDSA cover every current OpenSSH client; RSA keys cost ~1 s each to make,
# which a stick of 16 hosts would feel.
SSH_KEY_TYPES = ("ed25519", "ecdsa")


def installer_identity(image: str) -> str:
    """The secrets folder of a usb-installer stick itself (its sshd while it installs)."""
    return f"{image}.installer"


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
    """Per host, a digest of its public keys (what a stage key may depend on), or 'to generate'."""
    out: dict[str, str] = {}
    for h in hosts:
        d = secrets_dir(out_dir, cluster, h)
        pubs = [d / f"ssh_host_{k}_key.pub" for k in SSH_KEY_TYPES]
        if all(p.exists() for p in pubs) and all((d / f"ssh_host_{k}_key").exists() for k in SSH_KEY_TYPES):
            out[h] = hashlib.sha256(b"".join(p.read_bytes() for p in pubs)).hexdigest()
        else:
            out[h] = "to generate"
    return out
