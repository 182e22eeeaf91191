"""hardware.match / selectors / ledger on the JSON inventory fixtures (what detection produced)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from builder.profile import load_profile
from hardware import ledger
from hardware.match import indistinguishable_hosts, rank
from hardware.selectors import SelectorError, choose_disk, evaluate
from tests.hwfixtures import ROOT, load_inventory

DESKTOP, STORAGE, LAPTOP = (load_inventory(n) for n in ("nano-itx-desktop", "storage-box", "laptop"))
MINI, CLOUD = load_inventory("mini-pc-two-disks"), load_inventory("cloud-vm")


@pytest.fixture(scope="module")
def dual() -> dict[str, Any]:
    return load_profile(ROOT / "profiles" / "dual-nano-itx.yaml").data


def with_host(profile: dict[str, Any], host: str, **changes: Any) -> dict[str, Any]:
    p = copy.deepcopy(profile)
    p["hosts"][host].update(changes)
    return p


# --- ranking ------------------------------------------------------------------------------


def test_desktop_is_left_for_certain(dual: dict[str, Any]) -> None:
    r = rank(dual, DESKTOP)
    assert r.outcome == "certain" and r.best is not None
    assert (r.best.host, r.best.role) == ("left", "desktop")
    assert r.best.reasons == ["chassis desktop", "display connected"]
    assert 0.5 < r.best.score < 1.0  # selectors alone never reach the certainty of a pin
    right = r.ranked[1]
    assert right.host == "right" and not right.eligible and right.reasons == ["1 disk, wanted ≥ 2"]


def test_storage_box_is_right(dual: dict[str, Any]) -> None:
    r = rank(dual, STORAGE)
    assert r.outcome == "certain" and r.best is not None and r.best.host == "right"
    assert r.best.reasons == ["3 disks (≥ 2 wanted)"]  # the USB stick is not counted
    left = next(c for c in r.ranked if c.host == "left")
    assert left.excluded == "no display connected (wanted one)"


def test_laptop_matches_nothing_but_is_told_why(dual: dict[str, Any]) -> None:
    r = rank(dual, LAPTOP)
    assert r.outcome == "none" and r.best is None and r.candidates == []
    assert [c.host for c in r.ranked] == ["left", "right"]  # partial matches first
    assert r.ranked[0].reasons[0] == "chassis laptop, not desktop/mini-pc"
    assert r.ranked[0].score > r.ranked[1].score == 0.0


def test_two_roles_fit_is_ambiguous_and_ranked(dual: dict[str, Any]) -> None:
    r = rank(dual, MINI)
    assert r.outcome == "ambiguous" and r.best is None
    assert [c.host for c in r.candidates] == ["left", "right"]
    assert r.candidates[0].score > r.candidates[1].score
    fields = r.event_fields()
    assert fields["outcome"] == "ambiguous" and fields["candidates"] == ["left", "right"]


def test_hosts_filter_limits_to_a_sticks_hosts(dual: dict[str, Any]) -> None:
    r = rank(dual, MINI, hosts=["right"])
    assert r.outcome == "certain" and r.best is not None and r.best.host == "right"


def test_serial_pin_makes_certain_and_dominates(dual: dict[str, Any]) -> None:
    p = with_host(dual, "right", pin={"serial": "M80-B1000123"})
    r = rank(p, MINI)
    assert r.outcome == "certain" and r.best is not None and r.best.host == "right"
    assert r.best.score == 1.0 and r.best.pinned and r.best.reasons[0] == "serial M80-B1000123 pinned"
    # The same pin on another box contradicts: right is ruled out there.
    r2 = rank(p, STORAGE)
    assert r2.outcome == "none"
    right = next(c for c in r2.ranked if c.host == "right")
    assert right.excluded == "serial JW-NF9-0002 is not the pinned M80-B1000123"


def test_mac_pin_list_and_case(dual: dict[str, Any]) -> None:
    p = with_host(dual, "left", pin={"mac": ["52:54:00:00:00:01", "00:30:18:C1:01:01"]})
    r = rank(p, DESKTOP)
    assert r.best is not None and r.best.pinned and "MAC 00:30:18:c1:01:01 pinned" in r.best.reasons


def test_pin_beats_failing_selectors(dual: dict[str, Any]) -> None:
    p = with_host(dual, "left", pin={"serial": "PF2ABCDE"})
    r = rank(p, LAPTOP)
    assert r.outcome == "certain" and r.best is not None and r.best.host == "left"
    assert "despite: chassis laptop, not desktop/mini-pc" in r.best.reasons


def test_host_match_adds_to_role(dual: dict[str, Any]) -> None:
    p = with_host(dual, "left", match={"vendor": "jet*", "memory": ">=8GiB"})
    r = rank(p, DESKTOP)  # 4 GiB: the host-level key fails
    left = next(c for c in r.ranked if c.host == "left")
    assert not left.eligible and left.reasons[0] == "4 GiB memory, wanted ≥ 8 GiB"
    assert "vendor 'Jetway'" in left.reasons


# --- the ledger ---------------------------------------------------------------------------


def test_claimed_host_is_not_proposed_again(dual: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "claims.json"
    book = ledger.load(path)  # absent: empty
    ledger.claim(book, "left", DESKTOP, now=0)
    ledger.save(path, book)
    on_disk = json.loads(path.read_text())
    assert on_disk["claims"]["left"] == {"serial": "JW-NF9-0001", "macs": ["00:30:18:c1:01:01"],
                                         "product": "Jetway NF9HG-2930", "at": "1970-01-01T00:00:00Z"}
    # A second desktop-like box: left is taken, nothing else fits.
    twin = copy.deepcopy(DESKTOP)
    twin["system"]["serial"], twin["nics"][0]["mac"] = "JW-NF9-0099", "00:30:18:c1:09:09"
    r = rank(dual, twin, ledger.load(path))
    assert r.outcome == "none"
    assert r.ranked[0].excluded.startswith("already installed on Jetway NF9HG-2930 on 1970-01-01T00:00:00Z")
    # The box that claimed it may reinstall.
    again = rank(dual, DESKTOP, ledger.load(path))
    assert again.outcome == "certain" and "already installed on this machine on 1970-01-01T00:00:00Z" in \
        again.best.reasons  # type: ignore[union-attr]
    # A person releases it by editing the file.
    on_disk["claims"]["left"]["released"] = True
    path.write_text(json.dumps(on_disk))
    assert rank(dual, twin, ledger.load(path)).outcome == "certain"
    book = ledger.load(path)
    assert ledger.release(book, "left") and not ledger.release(book, "left")


def test_bad_ledger_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "claims.json"
    path.write_text("{not json")
    with pytest.raises(ledger.LedgerError, match="not valid JSON"):
        ledger.load(path)
    path.write_text('{"claims": []}')
    with pytest.raises(ledger.LedgerError, match='"claims" object'):
        ledger.load(path)


def test_junk_serial_is_no_identity() -> None:
    box = copy.deepcopy(DESKTOP)
    box["system"]["serial"] = "To be filled by O.E.M."
    entry = ledger.claim(ledger.empty(), "left", box)
    assert entry["serial"] is None
    other = copy.deepcopy(box)
    other["nics"][0]["mac"] = "00:30:18:ff:ff:ff"
    assert ledger.is_same_machine(entry, box) and not ledger.is_same_machine(entry, other)


# --- selectors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "inventory", "ok", "reason"),
    [
        ({"chassis": "notebook"}, LAPTOP, True, "chassis laptop"),
        ({"chassis": ["server", "tower"]}, STORAGE, False, "chassis desktop, not server/tower"),
        ({"vendor": "lenovo"}, LAPTOP, True, "vendor 'LENOVO'"),
        ({"product": "NF9HG-*"}, STORAGE, True, "product 'NF9HG-2930'"),
        ({"product": "NUC*"}, STORAGE, False, "product 'NF9HG-2930' is not 'NUC*'"),
        ({"battery": True}, LAPTOP, True, "battery present"),
        ({"battery": False}, LAPTOP, False, "battery present (wanted none)"),
        ({"display": False}, STORAGE, True, "no display connected"),
        ({"cpus": ">=8"}, LAPTOP, True, "8 CPUs"),
        ({"cpus": 2}, DESKTOP, False, "4 CPUs, wanted = 2"),
        ({"memory": ">=16GiB"}, LAPTOP, True, "16 GiB memory"),
        ({"disks": {"count": ">=2", "size": ">=1TB"}}, STORAGE, True, "2 disks ≥ 1 TB (≥ 2 wanted)"),
        ({"disks": {"count": 1, "rotational": True}}, STORAGE, True, "1 rotational disk"),
        ({"disks": {"count": 2, "type": "ssd"}}, STORAGE, True, "2 SSD disks"),
        ({"disks": {"type": "nvme"}}, STORAGE, False, "0 NVMe disks, wanted ≥ 1"),
        ({"disks": {"count": 1, "type": "virtio"}}, CLOUD, False, "0 virtio disks, wanted = 1"),
        ({"nics": {"count": ">=2"}}, STORAGE, True, "2 NICs"),
        ({"nics": {"count": 0}}, LAPTOP, False, "1 NIC, wanted = 0"),
    ],
)
def test_criteria(selector: dict[str, Any], inventory: dict[str, Any], ok: bool, reason: str) -> None:
    [c] = evaluate(selector, inventory)
    assert (c.ok, c.reason) == (ok, reason)


def test_unknown_selector_key_raises() -> None:
    with pytest.raises(SelectorError, match="colour"):
        evaluate({"colour": "red"}, DESKTOP)
    with pytest.raises(SelectorError, match="cpus"):
        evaluate({"cpus": ">>2"}, DESKTOP)


# --- the install disk ----------------------------------------------------------------------


def test_disk_nvme_on_desktop_is_empty() -> None:
    c = choose_disk({"type": "nvme", "wipe": False}, DESKTOP)
    assert c.disk is not None and c.disk["name"] == "nvme0n1" and not c.holds_data and not c.needs_confirmation
    assert ("sda", "the medium this system booted from") in c.rejected


def test_disk_smallest_never_the_stick() -> None:
    c = choose_disk({"smallest": True}, STORAGE)  # the 31 GB stick is smaller than the 32 GB SSD
    assert c.disk is not None and c.disk["name"] == "sda"
    assert [d["name"] for d in c.candidates] == ["sda", "sdb", "sdc"]


def test_disk_largest_tie_broken_by_name() -> None:
    c = choose_disk({"largest": True}, STORAGE)
    assert c.disk is not None and c.disk["name"] == "sdb"


def test_disk_ambiguous_lists_candidates() -> None:
    c = choose_disk({"type": "ssd"}, STORAGE)
    assert c.disk is None and c.error is not None
    assert "2 disks fit the selector, exactly one must" in c.error
    assert "sda (SSD, 32 GB, TS32GSSD370S, C123456789)" in c.error and "sdc (SSD, 2 TB" in c.error


def test_disk_with_data_is_flagged_unless_wipe() -> None:
    c = choose_disk({"type": "nvme"}, LAPTOP)
    assert c.holds_data and c.needs_confirmation
    assert choose_disk({"type": "nvme", "wipe": True}, LAPTOP).needs_confirmation is False
    picked = choose_disk({"serial": "S6PNNS0T100002K"}, STORAGE)
    assert picked.disk is not None and picked.needs_confirmation


def test_disk_none_fits_says_why() -> None:
    c = choose_disk({"type": "usb"}, DESKTOP)
    assert c.disk is None
    assert c.error == ("no internal disk fits the selector (nvme0n1: type nvme, not usb; "
                       "sda: the medium this system booted from)")
    c2 = choose_disk({"size": ">=1TB", "model": "WDC*"}, STORAGE)
    assert c2.disk is not None and c2.disk["name"] == "sdb"


def test_disk_selector_contradiction() -> None:
    with pytest.raises(SelectorError):
        choose_disk({"smallest": True, "largest": True}, STORAGE)


# --- telling hosts apart from the text alone ------------------------------------------------


def two_hosts(a: dict[str, Any], b: dict[str, Any], pin_a: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "roles": {"r": {"match": {}}},
        "hosts": {"a": {"role": "r", "match": a, "pin": pin_a or {}}, "b": {"role": "r", "match": b, "pin": {}}},
    }


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ({}, {}, True),
        ({"chassis": "desktop"}, {"chassis": "desktop"}, True),
        ({"chassis": "desktop"}, {"chassis": ["desktop"], "display": True}, True),  # b narrower
        ({"chassis": ["desktop", "mini-pc"]}, {"chassis": "mini-pc"}, True),
        ({"chassis": "desktop"}, {"chassis": "laptop"}, False),
        ({"cpus": ">=2"}, {"cpus": ">=4"}, True),
        ({"cpus": "<=2"}, {"cpus": ">=4"}, False),
        ({"memory": ">=8GiB"}, {"memory": ">8GB"}, True),  # a is narrower: 8 GiB > 8 GB
        ({"memory": ">=8GiB"}, {"memory": "<8GiB"}, False),
        ({"memory": ">=8GB"}, {"memory": ">=8GiB"}, True),
        ({"disks": {"count": ">=2"}}, {"disks": {"count": ">=2", "type": "hdd"}}, True),
        ({"disks": {"count": 1}}, {"disks": {"count": 1, "type": "hdd"}}, False),
        ({"vendor": "Jet*"}, {"vendor": "Jetway"}, True),
        ({"display": True}, {"display": False}, False),
    ],
)
def test_indistinguishable(a: dict[str, Any], b: dict[str, Any], same: bool) -> None:
    assert indistinguishable_hosts(two_hosts(a, b), ["a", "b"]) == ([("a", "b")] if same else [])


def test_a_pin_tells_hosts_apart(dual: dict[str, Any]) -> None:
    assert indistinguishable_hosts(two_hosts({}, {}, pin_a={"mac": "52:54:00:00:00:01"}), ["a", "b"]) == []
    assert indistinguishable_hosts(dual, ["left", "right"]) == []
