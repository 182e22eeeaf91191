"""One uid per person across the cluster, stable across rebuilds.

A profile's users get their ``uid`` from the profile when it gives one, else from the ledger
``<out>/<cluster>/ids.json`` that the first build writes beside the host secrets and every later
build reuses: a user added later takes the lowest id never given, and a removed user's id is
retired, not handed to the next person (their files on a storage box would become the new
person's). Without the ledger (a fresh output folder) ids follow profile order, as before.
The ids land in the resolved profile, so every host's accounts, the stage keys and
``profile.json`` carry them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from builder.plan import PlanError
from core.ids import FIRST_ID, LAST_ID

LEDGER = "ids.json"
RECOVER = "restore it from a backup, or remove it to assign ids in profile order again"


class IdsError(PlanError):
    """The ledger can't be read, or the ids run out."""


def ledger_path(out_dir: Path | str, cluster: str) -> Path:
    return Path(out_dir) / cluster / LEDGER


def read_ledger(path: Path) -> dict[str, int]:
    """user name → uid, as kept; {} when there is none yet."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise IdsError(f"{path}: not readable as the cluster's uid ledger ({e}); {RECOVER}") from None
    users = raw.get("users") if isinstance(raw, dict) else None
    if not isinstance(users, dict) or not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                                              for k, v in users.items()):
        raise IdsError(f'{path}: expected {{"users": {{NAME: UID, ...}}}}; {RECOVER}')
    return dict(users)


def assign(users: list[dict[str, Any]], kept: dict[str, int]) -> dict[str, int]:
    """The ledger after giving every user an id: the profile's own first, then what was kept
    (a kept id another user now claims is not reused), then the lowest ids never given."""
    ledger = dict(kept)
    given = {u["name"]: u["uid"] for u in users if u.get("uid") is not None}
    ledger.update(given)
    taken = set(ledger.values())
    for u in users:
        name = u["name"]
        if name in given:
            continue
        if name in kept and list(ledger.values()).count(kept[name]) == 1:
            continue
        uid = next((i for i in range(FIRST_ID, LAST_ID + 1) if i not in taken), None)
        if uid is None:
            raise IdsError(f"no uid left between {FIRST_ID} and {LAST_ID} for {name}")
        ledger[name] = uid
        taken.add(uid)
    return ledger


def settle_ids(profile: Any, out_dir: Path | str, write: bool) -> dict[str, int]:
    """Put every user's uid into ``profile`` (a builder.profile.Profile) from the profile and
    the ledger; ``write``: keep the ledger (a build), else only read it (a plan)."""
    users: list[dict[str, Any]] = profile.data["cluster"]["users"]
    path = ledger_path(out_dir, profile.name)
    kept = read_ledger(path)
    ledger = assign(users, kept)
    for u in users:
        u["uid"] = ledger[u["name"]]
    profile.__dict__.pop("model", None)  # the typed model is made again, with the ids
    if write and ledger != kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"users": dict(sorted(ledger.items(), key=lambda kv: kv[1]))}, indent=2) + "\n")
        os.replace(tmp, path)  # whole or not at all
    return ledger
