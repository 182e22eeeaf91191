"""Where the build (and ``clusterctl test``) gets a sealed stick's passphrase.

In order: ``--stick-passphrase-file FILE`` (its first line), ``$CLUSTERCTL_STICK_PASSPHRASE``,
else, on a terminal, asked (twice when it seals, so a typo does not lock the stick). The
passphrase is never written anywhere by us; only a verifier of the key it makes is kept in
the stage cache.
"""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

ENV = "CLUSTERCTL_STICK_PASSPHRASE"


class PassphraseError(ValueError):
    """The named file cannot be read, or the two typed passphrases differ: exit 2."""


def from_file(path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PassphraseError(f"--stick-passphrase-file {path}: {e.strerror if isinstance(e, OSError) else e}") \
            from None
    return text.splitlines()[0] if text.strip() else ""


def stick_passphrase(file: str | None, *, confirm: bool) -> str | None:
    """The passphrase from the file, the environment or the terminal; None if there is none."""
    if file:
        return from_file(file)
    if os.environ.get(ENV):
        return os.environ[ENV]
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return None
    try:
        first = getpass.getpass("Passphrase that seals the stick's host keys: ")
        if confirm and getpass.getpass("The same passphrase again: ") != first:
            raise PassphraseError("the two passphrases differ; nothing was built")
    except (EOFError, KeyboardInterrupt):
        return None
    return first
