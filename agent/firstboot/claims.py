"""The claim ledger on the stick: ``claims.json`` on its small FAT partition labelled CLUSTER.

First boot copies it into /run (mtools, no mount), the wizard rules out hosts another box has
claimed and records this box's claim, and the ledger goes back onto the stick before a byte of
the internal disk is written. A stick whose CLUSTER partition is missing, full or unreadable
still installs: the person is told the claim could not be recorded (see hardware/ledger.py for
the file's shape, and docs/install.md for releasing a claim).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from core.disk.gpt import CLAIMS_NAME, read_table
from core.disk.tools import MTOOLS_ENV, InstallError, fat, run
from hardware import ledger as ledger_mod

FILE = "claims.json"


@dataclass
class StickLedger:
    """Where the ledger lives on the stick, and its working copy in /run."""

    image: str | None  # mtools' name for the partition, or None when the stick has none
    local: Path
    problem: str | None = None  # why the ledger can't be used, said to the person

    @classmethod
    def find(cls, stick: str, local: Path) -> StickLedger:
        try:
            part = read_table(stick, stage="claims").by_name(CLAIMS_NAME)
        except InstallError as e:
            return cls(None, local, f"the stick's partition table could not be read ({e})")
        if part is None:
            return cls(None, local, f"the stick has no {CLAIMS_NAME} partition")
        return cls(fat(stick, part.start), local)

    def fetch(self) -> dict[str, object] | None:
        """The ledger (empty when the stick has none yet), or None with ``problem`` set."""
        if self.image is None:
            return None
        self.local.parent.mkdir(parents=True, exist_ok=True)
        self.local.unlink(missing_ok=True)
        try:
            listing = run("claims", ["mdir", "-b", "-i", self.image, "::"], env=MTOOLS_ENV)
            if any(line.rstrip().lower().endswith("/" + FILE) for line in listing.splitlines()):
                run("claims", ["mcopy", "-n", "-i", self.image, f"::{FILE}", str(self.local)], env=MTOOLS_ENV)
            return ledger_mod.load(self.local)
        except (InstallError, ledger_mod.LedgerError) as e:
            self.problem = f"the claim ledger on the stick could not be read ({e})"
            return None

    def read_file(self, name: str) -> bytes | None:
        """Another file on the CLUSTER partition (a sealed stick's passphrase), or None."""
        if self.image is None:
            return None
        copy = self.local.with_name(f".{name}")
        copy.unlink(missing_ok=True)
        try:
            run("claims", ["mcopy", "-n", "-i", self.image, f"::{name}", str(copy)], env=MTOOLS_ENV)
            return copy.read_bytes()
        except (InstallError, OSError):
            return None
        finally:
            copy.unlink(missing_ok=True)

    def store(self) -> str | None:
        """Copy the working ledger back onto the stick; why it could not be, or None."""
        if self.image is None:
            return self.problem or "the stick has no ledger"
        try:
            run("claims", ["mcopy", "-o", "-i", self.image, str(self.local), f"::{FILE}"], env=MTOOLS_ENV)
            os.sync()  # on the stick itself, not in this system's cache, before the disk is written
            run("claims", ["mcopy", "-n", "-i", self.image, f"::{FILE}", str(self.local) + ".check"],
                env=MTOOLS_ENV)
        except InstallError as e:
            return f"the claim could not be written to the stick ({e})"
        if Path(str(self.local) + ".check").read_bytes() != self.local.read_bytes():
            return "the claim written to the stick reads back differently"
        return None
