"""indistinguishable_hosts must be sound: when it says selector b implies a, every box that fits b fits a."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from hardware.match import rank, selector_implies
from hardware.selectors import evaluate
from tests.hwfixtures import load_inventory

BOXES = [load_inventory(n) for n in ("nano-itx-desktop", "storage-box", "laptop", "mini-pc-two-disks", "cloud-vm")]

comparisons = st.sampled_from(["0", "1", "2", "3", ">=1", ">=2", ">=4", "<=2", "<4", ">1", "!=2", "==8", 4, 2])
sizes = st.sampled_from([">=1TB", ">=1TiB", "<=100G", ">30GB", ">=2000398934016", "<64GiB", "==4GiB", ">=8GiB",
                         ">=16GiB", "!=8GiB"])
disks = st.fixed_dictionaries({}, optional={
    "count": comparisons, "size": sizes, "type": st.sampled_from(["nvme", "ssd", "hdd", "virtio"]),
    "rotational": st.booleans()})
selectors = st.fixed_dictionaries({}, optional={
    "chassis": st.one_of(st.sampled_from(["desktop", "laptop", "notebook", "mini-pc", "other"]),
                         st.lists(st.sampled_from(["desktop", "laptop", "mini-pc", "server"]), min_size=1,
                                  max_size=3, unique=True)),
    "vendor": st.sampled_from(["Jetway", "jet*", "LENOVO", "*", "ASRock"]),
    "product": st.sampled_from(["NF9HG-2930", "NF9HG-*", "20XW*"]),
    "display": st.booleans(),
    "battery": st.booleans(),
    "cpus": comparisons,
    "memory": sizes,
    "disks": disks,
    "nics": st.fixed_dictionaries({"count": comparisons}),
})


def fits(selector: dict[str, Any], box: dict[str, Any]) -> bool:
    return all(c.ok for c in evaluate(selector, box))


def variants(box: dict[str, Any]) -> list[dict[str, Any]]:
    """The box, and the box with its first internal disk dropped or its display unplugged."""
    out = [box]
    fewer = copy.deepcopy(box)
    fewer["disks"] = [d for d in fewer["disks"] if d["boot_medium"]] + [d for d in fewer["disks"]
                                                                         if not d["boot_medium"]][1:]
    out.append(fewer)
    dark = copy.deepcopy(box)
    for d in dark["displays"]:
        d["connected"] = False
    out.append(dark)
    return out


@settings(max_examples=400, deadline=None)
@given(selectors, selectors)
def test_implication_is_sound(a: dict[str, Any], b: dict[str, Any]) -> None:
    if selector_implies(b, a):
        for box in BOXES:
            for v in variants(box):
                assert not fits(b, v) or fits(a, v), (a, b, v["system"]["product"])


@settings(max_examples=200, deadline=None)
@given(selectors, selectors)
def test_extra_keys_narrow(a: dict[str, Any], c: dict[str, Any]) -> None:
    """A selector with more keys (the same values for a's keys) is recognised as narrower."""
    assert selector_implies(a, a)
    assert selector_implies({**c, **a}, a)


@settings(max_examples=200, deadline=None)
@given(selectors, st.sampled_from(range(len(BOXES))))
def test_outcome_agrees_with_candidates(sel: dict[str, Any], i: int) -> None:
    profile = {"roles": {"r": {"match": sel}, "s": {"match": {}}},
               "hosts": {"a": {"role": "r", "match": {}, "pin": {}}, "b": {"role": "s", "match": {}, "pin": {}}}}
    result = rank(profile, BOXES[i])
    # b has no selector: it fits everything, so the outcome is certain only when a does not fit.
    assert result.outcome == ("ambiguous" if fits(sel, BOXES[i]) else "certain")
    assert all(0.0 <= c.score < 1.0 for c in result.ranked)
