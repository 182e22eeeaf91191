"""First boot on a sealed stick (``cluster.stick_secrets: passphrase``): the passphrase, then
the chosen host's keys.

Where the passphrase comes from, in order: ``clusterctl.passphrase=`` on the kernel command
line, then ``passphrase.txt`` on the stick's CLUSTER partition (both for unattended installs,
and both weaker: whoever holds the stick reads them too), then the person, asked on the
screen and the serial console with nothing echoed. A wrong one is said and asked again, up to
ATTEMPTS times. It is checked before the wizard runs, so a person who does not know it learns
so before anything is claimed or written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from agent.stickseal import SEALED_NAME, SealError, SecretFile, StickKey, WrongPassphrase, key_for, unseal
from core.events import emit

PASSPHRASE_FILE = "passphrase.txt"  # on the CLUSTER partition
ATTEMPTS = 5
PROMPT = "Passphrase that unlocks this stick's host keys: "


def sealed_blobs(folder: str | Path) -> dict[str, bytes]:
    """host -> its sealed blob, for a stick whose secrets are sealed (empty for a clear one)."""
    base = Path(folder)
    if not base.is_dir():
        return {}
    return {d.name: (d / SEALED_NAME).read_bytes() for d in sorted(base.iterdir()) if (d / SEALED_NAME).is_file()}


@dataclass
class Unlocked:
    key: StickKey
    source: str  # cmdline | stick | person


def _try(blobs: dict[str, bytes], passphrase: str) -> StickKey | None:
    host, blob = next(iter(blobs.items()))
    try:
        key = key_for(blob, passphrase)
        unseal(key, blob, host)
    except WrongPassphrase:
        return None
    return key


def unlock(blobs: dict[str, bytes], given: list[tuple[str, str | None]], ask: Callable[[str], str] | None,
           say: Callable[[str], None], events: TextIO) -> Unlocked | None:
    """The key that opens the blobs, from the first passphrase ``given`` (source, passphrase)
    that works, else from the person; None when none does (or nobody can be asked)."""
    try:
        for source, passphrase in given:
            if passphrase is None:
                continue
            key = _try(blobs, passphrase)
            if key is not None:
                emit("unsealed", stream=events, source=source)
                return Unlocked(key, source)
            emit("passphrase", stream=events, source=source, ok=False)
            say(f"The passphrase from the {_where(source)} does not unlock this stick's host keys.")
        if ask is None:
            return None
        say("This stick's host keys are sealed with a passphrase (cluster.stick_secrets). Type it below; "
            "nothing is shown as you type.")
        for attempt in range(1, ATTEMPTS + 1):
            emit("asking", stream=events, question="passphrase", attempt=attempt)
            passphrase = ask(PROMPT)
            say("Checking the passphrase ...")
            key = _try(blobs, passphrase)
            if key is not None:
                emit("unsealed", stream=events, source="person")
                say("The stick's host keys are unlocked.")
                return Unlocked(key, "person")
            emit("passphrase", stream=events, source="person", ok=False, attempt=attempt)
            say(f"That passphrase does not unlock the keys ({ATTEMPTS - attempt} tries left).")
    except SealError as e:
        emit("error", stream=events, stage="unseal", message=str(e))
    return None


def _where(source: str) -> str:
    return {"cmdline": "kernel command line (clusterctl.passphrase)",
            "stick": f"stick's CLUSTER partition ({PASSPHRASE_FILE})"}.get(source, source)


def host_files(unlocked: Unlocked, blobs: dict[str, bytes], host: str) -> list[SecretFile]:
    """The chosen host's keys, opened. SealError when the stick has none for it."""
    if host not in blobs:
        raise SealError(f"the stick holds no sealed keys for host {host!r}")
    return unseal(unlocked.key, blobs[host], host)
