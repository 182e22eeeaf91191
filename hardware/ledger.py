"""The claim ledger: which host of the cluster is already installed on which machine.

A plain JSON file (on the stick: the small writable FAT partition labelled CLUSTER), meant to
be readable and editable by a person::

    {
      "version": 1,
      "claims": {
        "left": {"serial": "JW-NF9-0001", "macs": ["52:54:00:c1:01:01"],
                 "product": "Jetway NF9HG-2930", "at": "2026-11-27T03:40:00Z"}
      }
    }

Deleting a host's entry (or setting ``"released": true`` in it) releases the host, so first boot
will propose it again. Standard library only: it runs inside the images.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from hardware.selectors import macs_of, usable_serial

VERSION = 1


class LedgerError(ValueError):
    """A ledger file that is not what this module writes (the message says where)."""


def empty() -> dict[str, Any]:
    return {"version": VERSION, "claims": {}}


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ledger at ``path``; an absent file is an empty ledger."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        return empty()
    if not text.strip():
        return empty()
    try:
        data = json.loads(text)
    except ValueError as e:
        raise LedgerError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("claims", {}), dict):
        raise LedgerError(f'{p}: expected an object with a "claims" object')
    data.setdefault("version", VERSION)
    data.setdefault("claims", {})
    return data


def save(path: str | os.PathLike[str], ledger: dict[str, Any]) -> None:
    """Write atomically (temp file + rename), so a pulled stick never leaves half a ledger."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(ledger, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)


def machine_identity(inventory: dict[str, Any]) -> dict[str, Any]:
    system = inventory.get("system") or {}
    product = " ".join(str(v) for v in (system.get("vendor"), system.get("product")) if v)
    return {"serial": usable_serial(system.get("serial")), "macs": sorted(macs_of(inventory)), "product": product}


def is_same_machine(claim: dict[str, Any], inventory: dict[str, Any]) -> bool:
    """A claim was made by this machine: same usable DMI serial, or a MAC in common."""
    me = machine_identity(inventory)
    serial = usable_serial(claim.get("serial"))
    if serial and me["serial"]:
        return serial == me["serial"]
    return bool({str(m).lower() for m in claim.get("macs") or []} & set(me["macs"]))


def active_claims(ledger: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    if not ledger:
        return {}
    claims = ledger.get("claims") or {}
    return {h: c for h, c in claims.items() if isinstance(c, dict) and not c.get("released")}


def claim(ledger: dict[str, Any], host: str, inventory: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """Record that ``host`` is installed on this machine; returns the entry."""
    entry = {**machine_identity(inventory),
             "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if now is None else now))}
    ledger.setdefault("claims", {})[host] = entry
    return entry


def release(ledger: dict[str, Any], host: str) -> bool:
    """Forget ``host``'s claim; False when it had none."""
    return ledger.setdefault("claims", {}).pop(host, None) is not None
