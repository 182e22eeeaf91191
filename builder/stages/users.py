"""Login users from the profile, written straight into the root's account files.

No ``useradd`` in a chroot: the root's own /etc/passwd, group, shadow and gshadow (read from
its tarball) are extended in Python, so the step is rootless and deterministic (uids as the
resolved profile gives them, builder/ids.py; else from 1000 in profile order) and a user
change never reruns mmdebstrap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Account:
    name: str
    uid: int
    gid: int
    home: str
    shell: str
    ssh_keys: list[str]


def _table(text: str) -> list[list[str]]:
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def _dump(rows: list[list[str]]) -> str:
    return "".join(":".join(r) + "\n" for r in rows)


def add_users(files: dict[str, str], users: list[dict[str, Any]]) -> tuple[dict[str, str], list[Account]]:
    """The four account files with ``users`` added (or updated), and the accounts made."""
    passwd, group = _table(files["etc/passwd"]), _table(files["etc/group"])
    shadow, gshadow = _table(files.get("etc/shadow", "")), _table(files.get("etc/gshadow", ""))
    used_ids = {int(r[2]) for r in passwd} | {int(r[2]) for r in group}
    used_ids |= {int(u["uid"]) for u in users if u.get("uid") is not None}  # the cluster's, see builder/ids.py

    def next_id() -> int:
        i = 1000
        while i in used_ids:
            i += 1
        used_ids.add(i)
        return i

    accounts: list[Account] = []
    for u in users:
        name = str(u["name"])
        home = f"/home/{name}"
        shell = str(u.get("shell") or "/bin/bash")
        existing = next((r for r in passwd if r[0] == name), None)
        if existing:
            uid, gid = int(existing[2]), int(existing[3])
            existing[5], existing[6] = home, shell
        else:
            uid = int(u["uid"]) if u.get("uid") is not None else next_id()
            gid = uid
            passwd.append([name, "x", str(uid), str(gid), name, home, shell])
            group.append([name, "x", str(gid), ""])
            gshadow.append([name, "!", "", ""])
        pw = str(u.get("password_hash") or "!")  # no hash: no password login, keys only
        shadow = [r for r in shadow if r[0] != name] + [[name, pw, "19000", "0", "99999", "7", "", "", ""]]
        accounts.append(Account(name, uid, gid, home, shell, list(u.get("ssh_keys") or [])))
    # Groups after all users, so users get consecutive ids whatever groups they ask for.
    for u in users:
        name = str(u["name"])
        for g in u.get("groups") or []:
            row = next((r for r in group if r[0] == g), None)
            if row is None:
                row = [g, "x", str(next_id()), ""]
                group.append(row)
                gshadow.append([g, "!", "", ""])
            members = [m for m in row[3].split(",") if m]
            if name not in members:
                row[3] = ",".join([*members, name])
            grow = next((r for r in gshadow if r[0] == g), None)
            if grow is not None:
                gm = [m for m in grow[3].split(",") if m]
                if name not in gm:
                    grow[3] = ",".join([*gm, name])
    out = {"etc/passwd": _dump(passwd), "etc/group": _dump(group),
           "etc/shadow": _dump(shadow), "etc/gshadow": _dump(gshadow)}
    return out, accounts
