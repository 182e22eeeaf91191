"""Sealed host secrets on a usb-installer stick (``cluster.stick_secrets: passphrase``).

Each host's private files (ssh host keys, the agent's identity with its WireGuard key) travel
as one blob, ``/var/lib/clusterctl/hosts/<host>/sealed``: a JSON header in the clear, then the
files encrypted with ChaCha20-Poly1305 under a key that scrypt stretches from the passphrase.
The header (cluster, host, KDF parameters, salt) is the AEAD's associated data, so a blob
cannot be passed off as another host's or weakened by editing its parameters.

The builder seals (builder/stages/image.py) and first boot opens (agent/firstboot/unseal.py);
both import this module, which needs only the ``cryptography`` package Debian ships.

The nonce is derived from the key, the host and the plaintext (a synthetic IV): the same
secrets under the same passphrase give the same bytes, so a rebuild leaves the image as it
was, and a nonce never repeats for different plaintexts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

FORMAT = "clusterctl-sealed/1"
SEALED_NAME = "sealed"  # the blob's name in each host's folder on the stick
# scrypt at 2^17 x 8 (128 MiB, about half a second on a desktop core): each guess costs the
# finder of a lost stick the same. Recorded in every blob, so it can be raised later.
KDF = {"name": "scrypt", "n": 2**17, "r": 8, "p": 1}
SALT_BYTES = 16
MIN_PASSPHRASE = 8


class SealError(ValueError):
    """A blob that is not a sealed-secrets file of this format, or not for this host."""


class WrongPassphrase(SealError):
    pass


@dataclass(frozen=True)
class SecretFile:
    path: str  # relative: ssh/<name> or identity/<name>
    mode: int
    data: bytes


@dataclass(frozen=True)
class StickKey:
    """The key stretched from a passphrase, with the salt and KDF parameters it came from."""

    key: bytes
    salt: bytes
    kdf: dict[str, Any]

    @classmethod
    def derive(cls, passphrase: str, salt: bytes, kdf: dict[str, Any] | None = None) -> StickKey:
        kdf = dict(kdf or KDF)
        if kdf.get("name") != "scrypt" or not all(isinstance(kdf.get(k), int) for k in ("n", "r", "p")):
            raise SealError(f"unknown key derivation {kdf!r}")
        n, r, p = kdf["n"], kdf["r"], kdf["p"]
        if n < 2 or n & (n - 1) or n > 2**22 or not 1 <= r <= 32 or not 1 <= p <= 16:
            raise SealError(f"scrypt parameters out of range: n={n} r={r} p={p}")
        key = Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode("utf-8"))
        return cls(key, salt, kdf)

    def verifier(self) -> str:
        """A digest that changes with the passphrase, safe to show (it costs a scrypt per guess)."""
        return hmac.new(self.key, b"clusterctl stick key verifier", hashlib.sha256).hexdigest()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _header_bytes(header: dict[str, Any]) -> bytes:
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


def seal(key: StickKey, cluster: str, host: str, files: list[SecretFile]) -> bytes:
    header = {"format": FORMAT, "cluster": cluster, "host": host, "kdf": key.kdf, "salt": _b64(key.salt),
              "aead": "chacha20-poly1305"}
    plain = json.dumps([{"path": f.path, "mode": f.mode, "data": _b64(f.data)} for f in files],
                       sort_keys=True).encode()
    aad = _header_bytes(header)
    nonce = hmac.new(key.key, b"nonce\0" + aad + hashlib.sha256(plain).digest(), hashlib.sha256).digest()[:12]
    sealed = ChaCha20Poly1305(key.key).encrypt(nonce, plain, aad)
    return _header_bytes({**header, "nonce": _b64(nonce)}) + b"\n" + _b64(sealed).encode() + b"\n"


def read_header(blob: bytes) -> dict[str, Any]:
    """The blob's clear header (what a key must be derived with), checked for shape."""
    head, _, _rest = blob.partition(b"\n")
    try:
        header = json.loads(head)
        base64.b64decode(header["salt"], validate=True)
        base64.b64decode(header["nonce"], validate=True)
    except (ValueError, KeyError, TypeError):
        raise SealError("not a sealed-secrets file (its header is not readable)") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise SealError(f"not a sealed-secrets file of format {FORMAT}")
    return header


def key_for(blob: bytes, passphrase: str) -> StickKey:
    """Stretch the passphrase with the blob's own salt and parameters (the slow step)."""
    header = read_header(blob)
    return StickKey.derive(passphrase, base64.b64decode(header["salt"]), header["kdf"])


def unseal(key: StickKey, blob: bytes, host: str | None = None) -> list[SecretFile]:
    """The host's files; WrongPassphrase when the key does not open the blob (or it was altered)."""
    header = read_header(blob)
    if host is not None and header.get("host") != host:
        raise SealError(f"the sealed file is host {header.get('host')!r}'s, not {host!r}'s")
    nonce = base64.b64decode(header.pop("nonce"))
    if base64.b64decode(header["salt"]) != key.salt or header["kdf"] != key.kdf:
        raise WrongPassphrase("the key was made with another salt or parameters")
    try:
        sealed = base64.b64decode(blob.partition(b"\n")[2].strip(), validate=True)
        plain = ChaCha20Poly1305(key.key).decrypt(nonce, sealed, _header_bytes(header))
    except (ValueError, InvalidTag):
        raise WrongPassphrase("the passphrase does not open the stick's secrets") from None
    return [SecretFile(str(f["path"]), int(f["mode"]), base64.b64decode(f["data"])) for f in json.loads(plain)]
