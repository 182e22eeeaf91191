"""One uid per person across the cluster, kept across rebuilds (builder/ids.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builder.ids import IdsError, assign, ledger_path, read_ledger, settle_ids
from builder.profile import load_profile
from builder.stages.users import add_users
from tests.test_profile_errors import GOOD

PASSWD = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
GROUP = "root:x:0:\nsudo:x:27:\n"


def users(*names: str, **uids: int) -> list[dict[str, object]]:
    return [{"name": n, **({"uid": uids[n]} if n in uids else {})} for n in names]


def test_ids_follow_profile_order_without_a_ledger() -> None:
    assert assign(users("admin", "alice", "bob"), {}) == {"admin": 1000, "alice": 1001, "bob": 1002}


def test_a_kept_id_stays_and_a_removed_users_id_is_not_reused() -> None:
    kept = assign(users("admin", "alice", "bob"), {})
    # alice leaves, carol arrives before bob in the file: nobody else's id moves, and carol does
    # not get alice's (alice's files on the storage box would be carol's).
    now = assign(users("admin", "carol", "bob"), kept)
    assert now == {"admin": 1000, "alice": 1001, "bob": 1002, "carol": 1003}


def test_the_profiles_own_uid_wins_and_a_kept_id_it_takes_moves() -> None:
    kept = {"admin": 1000, "alice": 1001}
    now = assign(users("admin", "alice", "bob", bob=1001), kept)
    assert now["bob"] == 1001 and now["alice"] not in (1000, 1001) and now["admin"] == 1000


def test_a_broken_ledger_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "ids.json"
    path.write_text("{not json")
    with pytest.raises(IdsError, match="not readable as the cluster's uid ledger"):
        read_ledger(path)
    path.write_text('{"users": {"alice": "1001"}}')
    with pytest.raises(IdsError, match="expected"):
        read_ledger(path)


def test_a_build_keeps_the_ledger_and_the_accounts_carry_it(tmp_path: Path) -> None:
    profile_file = tmp_path / "p.yaml"
    with_users = GOOD.replace("  network: {lan: 10.42.0.0/24}\n", "  network: {lan: 10.42.0.0/24}\n  users:\n"
                              "    - {name: admin}\n    - {name: alice, groups: [sudo, media]}\n    - {name: bob}\n")
    profile_file.write_text(with_users)
    out = tmp_path / "images"
    first = load_profile(profile_file)
    settle_ids(first, out, write=False)  # a plan writes nothing
    assert not ledger_path(out, "demo").exists()
    settle_ids(first, out, write=True)
    assert json.loads(ledger_path(out, "demo").read_text())["users"] == {"admin": 1000, "alice": 1001, "bob": 1002}
    assert first.model.cluster.users[1].uid == 1001  # the typed model hosts get carries it
    # Rebuilt without alice: bob keeps his id everywhere.
    profile_file.write_text(with_users.replace("    - {name: alice, groups: [sudo, media]}\n", ""))
    second = load_profile(profile_file)
    settle_ids(second, out, write=True)
    files, accounts = add_users({"etc/passwd": PASSWD, "etc/group": GROUP, "etc/shadow": "", "etc/gshadow": ""},
                                second.data["cluster"]["users"])
    assert {a.name: (a.uid, a.gid) for a in accounts} == {"admin": (1000, 1000), "bob": (1002, 1002)}
    assert "bob:x:1002:1002:" in files["etc/passwd"]


def test_a_new_group_never_takes_a_users_id() -> None:
    files, _ = add_users({"etc/passwd": PASSWD, "etc/group": GROUP, "etc/shadow": "", "etc/gshadow": ""},
                                [{"name": "alice", "uid": 1000, "groups": ["media"]}, {"name": "bob", "uid": 1001}])
    media = next(line for line in files["etc/group"].splitlines() if line.startswith("media:"))
    assert media.split(":")[2] not in ("1000", "1001")
