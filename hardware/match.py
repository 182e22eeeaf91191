"""Which host of the profile is this machine? Every host ranked, with a score and the reasons.

Scoring (docs/selectors.md):

* each key of a host's effective selector (role ``match`` plus host ``match``) is a criterion
  with a specificity weight (selectors.WEIGHTS); a host is a *candidate* only when all hold;
* score = satisfied weight / (total weight + 1): the more that was checked and held, the closer
  to 1, but selectors alone never reach 1; a host with no selector scores 0 and matches anything;
* a matching pin (DMI serial or MAC) scores 1.0 and makes the match certain; a contradicting
  pin rules the host out; a host claimed in the ledger by another machine is ruled out.

Outcomes: ``certain`` (exactly one candidate, or exactly one pinned candidate), ``ambiguous``
(several), ``none``. Standard library only: it runs inside the images.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from functools import lru_cache
from itertools import combinations
from typing import Any

from core.model import Profile
from core.units import UnitError, parse_comparison
from hardware import ledger as ledger_mod
from hardware.selectors import (
    HOST_KEYS,
    chassis_names,
    check_pins,
    evaluate,
    merge_selectors,
)

OUTCOMES = ("certain", "ambiguous", "none")


@dataclass
class Candidate:
    host: str
    role: str | None
    score: float
    reasons: list[str]
    eligible: bool  # all selectors hold (or a pin matched), no pin contradicts, not claimed elsewhere
    pinned: bool = False
    excluded: str | None = None  # why not eligible, in one phrase

    def as_dict(self) -> dict[str, Any]:
        return {"host": self.host, "role": self.role, "score": self.score, "why": self.reasons,
                "eligible": self.eligible, "pinned": self.pinned, "excluded": self.excluded}


@dataclass
class MatchResult:
    outcome: str
    ranked: list[Candidate] = field(default_factory=list)

    @property
    def candidates(self) -> list[Candidate]:
        return [c for c in self.ranked if c.eligible]

    @property
    def best(self) -> Candidate | None:
        """The host when the outcome is certain."""
        return self.candidates[0] if self.outcome == "certain" else None

    def event_fields(self) -> dict[str, Any]:
        """Fields of the ``matched`` event (core/events.py)."""
        top = self.candidates[0] if self.candidates else None
        return {
            "host": top.host if top else None,
            "role": top.role if top else None,
            "score": top.score if top else 0.0,
            "outcome": self.outcome,
            "why": top.reasons if top else [],
            "candidates": [c.host for c in self.candidates],
        }

    def as_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "ranked": [c.as_dict() for c in self.ranked]}


# The profile is the model (core.model.Profile: what host code reads from profile.json), or a
# plain resolved profile: the builder's validator judges a stick's hosts before the model exists.
ProfileLike = Profile | Mapping[str, Any]


@dataclass(frozen=True)
class _HostSelectors:
    role: str | None
    role_match: Mapping[str, Any] | None
    host_match: Mapping[str, Any] | None
    pin: Mapping[str, Any] | None


def _host_names(profile: ProfileLike) -> list[str]:
    hosts = profile.hosts if isinstance(profile, Profile) else (profile.get("hosts") or {})
    return list(hosts)


def _selectors_of(profile: ProfileLike, host: str) -> _HostSelectors | None:
    """What matching needs of one host: its role, the role's and its own match, its pin."""
    if isinstance(profile, Profile):
        h = profile.hosts.get(host)
        if h is None:
            return None
        role_match, host_match = profile.host_selector(host)
        return _HostSelectors(h.role, role_match, host_match, h.pin)
    hd = (profile.get("hosts") or {}).get(host)
    if not isinstance(hd, Mapping):
        return None
    role = (profile.get("roles") or {}).get(hd.get("role")) or {}
    return _HostSelectors(hd.get("role"), role.get("match"), hd.get("match"), hd.get("pin"))


def effective_selector(profile: ProfileLike, host: str) -> dict[str, Any]:
    sel = _selectors_of(profile, host)
    if sel is None:
        return {}
    return merge_selectors(dict(sel.role_match or {}), dict(sel.host_match or {}))


def _judge(profile: ProfileLike, host: str, inventory: dict[str, Any],
           claims: dict[str, dict[str, Any]]) -> Candidate:
    sel = _selectors_of(profile, host)
    if sel is None:
        raise KeyError(f"no host {host!r} in the profile")
    role = sel.role
    criteria = evaluate(effective_selector(profile, host), inventory)
    pins = check_pins(dict(sel.pin) if sel.pin else None, inventory)
    total = sum(c.weight for c in criteria)
    held = sum(c.weight for c in criteria if c.ok)
    failed = [c.reason for c in criteria if not c.ok]
    good = [c.reason for c in criteria if c.ok]
    excluded: str | None = None
    if pins.matched:
        score, eligible = 1.0, True
        reasons = [*pins.reasons, *good, *(f"despite: {r}" for r in failed)]
    elif pins.contradicted:
        score, eligible = round(held / (total + 1.0), 2), False
        reasons = [*pins.reasons, *failed, *good]
        excluded = pins.reasons[0]
    else:
        score, eligible = round(held / (total + 1.0), 2), not failed
        reasons = [*failed, *good] if failed else (good or ["no selectors: matches any machine"])
        if failed:
            excluded = failed[0]
    c = claims.get(host)
    if c is not None:
        when = f" on {c['at']}" if c.get("at") else ""
        if ledger_mod.is_same_machine(c, inventory):
            reasons.append(f"already installed on this machine{when}")
        elif pins.matched:
            reasons.append(f"ledger says installed on {c.get('product') or c.get('serial') or 'another box'}; "
                           "the pin wins")
        else:
            where = c.get("product") or c.get("serial") or "another machine"
            excluded = f"already installed on {where}{when} (release it in the ledger to reuse)"
            reasons.insert(0, excluded)
            eligible = False
    return Candidate(host, role, score, reasons, eligible, pins.matched, excluded)


def rank(profile: ProfileLike, inventory: dict[str, Any], ledger: dict[str, Any] | None = None,
         hosts: list[str] | None = None) -> MatchResult:
    """Every host (or those in ``hosts``, e.g. a stick's) judged against this machine, best first."""
    names = list(hosts) if hosts is not None else _host_names(profile)
    claims = ledger_mod.active_claims(ledger)
    judged = [_judge(profile, n, inventory, claims) for n in names]
    judged.sort(key=lambda c: (not c.eligible, not c.pinned, -c.score, c.host))
    eligible = [c for c in judged if c.eligible]
    pinned = [c for c in eligible if c.pinned]
    if len(pinned) == 1 or (not pinned and len(eligible) == 1):
        outcome = "certain"
    elif eligible:
        outcome = "ambiguous"
    else:
        outcome = "none"
    return MatchResult(outcome, judged)


# --- telling hosts apart from their selectors alone ---------------------------------------


@lru_cache(maxsize=4096)
def _interval(value: Any, size: bool) -> tuple[float, float] | None:
    """The set of values a comparison admits, as a closed interval (None for ``!=``)."""
    try:
        c = parse_comparison(value, size=size)
    except UnitError:
        return None
    v = c.value
    return {
        ">=": (v, float("inf")), ">": (v + 1, float("inf")),
        "<=": (float("-inf"), v), "<": (float("-inf"), v - 1),
        "==": (v, v),
    }.get(c.op)


def _cmp_implies(b: Any, a: Any, size: bool) -> bool:
    """Every value admitted by comparison ``b`` is admitted by ``a``."""
    ib, ia = _interval(b, size), _interval(a, size)
    if ib is None or ia is None:
        return str(a).replace(" ", "") == str(b).replace(" ", "")
    return ia[0] <= ib[0] and ib[1] <= ia[1]


def _glob_implies(b: Any, a: Any) -> bool:
    bs, as_ = str(b).lower(), str(a).lower()
    if bs == as_:
        return True
    # A literal value implies any glob that matches it.
    return not any(ch in bs for ch in "*?[") and fnmatchcase(bs, as_)


def _disks_implies(b: dict[str, Any], a: dict[str, Any]) -> bool:
    fa = {k: v for k, v in a.items() if k != "count"}
    fb = {k: v for k, v in b.items() if k != "count"}
    ca, cb = a.get("count", ">=1"), b.get("count", ">=1")
    for k, v in fa.items():
        if k not in fb:
            return False
        same = _cmp_implies(fb[k], v, True) if k == "size" else fb[k] == v
        if not same:
            return False
    if fa.keys() == fb.keys() and all(fa[k] == fb[k] for k in fa):
        return _cmp_implies(cb, ca, False)
    # b counts a subset of a's disks: only a lower bound on a's count carries over.
    ia, ib = _interval(ca, False), _interval(cb, False)
    return ia is not None and ib is not None and ia[1] == float("inf") and ib[0] >= ia[0]


def selector_implies(b: dict[str, Any], a: dict[str, Any]) -> bool:
    """Every machine that satisfies selector ``b`` also satisfies ``a`` (decided from the text alone;
    when unsure it says no, so a validator never refuses a profile that could work)."""
    for key in HOST_KEYS:
        if key not in a:
            continue
        if key not in b:
            return False
        va, vb = a[key], b[key]
        if key == "chassis":
            ok = set(chassis_names(vb)) <= set(chassis_names(va))
        elif key in ("vendor", "product"):
            ok = _glob_implies(vb, va)
        elif key in ("display", "battery"):
            ok = bool(va) == bool(vb)
        elif key == "cpus":
            ok = _cmp_implies(vb, va, False)
        elif key == "memory":
            ok = _cmp_implies(vb, va, True)
        elif key == "disks":
            ok = isinstance(va, dict) and isinstance(vb, dict) and _disks_implies(vb, va)
        else:  # nics
            ok = isinstance(va, dict) and isinstance(vb, dict) and _cmp_implies(
                vb.get("count", ">=1"), va.get("count", ">=1"), False)
        if not ok:
            return False
    return True


def _pin_key(pin: Mapping[str, Any] | None) -> tuple[str | None, frozenset[str]]:
    pin = pin or {}
    macs = pin.get("mac")
    macs_list = macs if isinstance(macs, list) else ([macs] if macs else [])
    serial = pin.get("serial")
    return (str(serial) if serial is not None else None, frozenset(str(m).lower() for m in macs_list))


def indistinguishable_hosts(profile: ProfileLike, host_names: list[str]) -> list[tuple[str, str]]:
    """Pairs of hosts no machine could tell apart at first boot from a universal stick.

    Two hosts are indistinguishable when neither has a pin and one's selector implies the
    other's (identical, or one a narrower version of the other: the machine of the narrower host
    matches both), or when their pins are identical and so are their selectors.
    """
    found = {h: _selectors_of(profile, h) for h in host_names}
    known = [h for h in host_names if found[h] is not None]
    sel = {h: effective_selector(profile, h) for h in known}
    pins = {h: _pin_key(found[h].pin) for h in known}  # type: ignore[union-attr]
    out: list[tuple[str, str]] = []
    for a, b in combinations(known, 2):
        sa, sb = sel[a], sel[b]
        pa, pb = pins[a], pins[b]
        unpinned = pa == (None, frozenset()) and pb == (None, frozenset())
        if unpinned:
            if selector_implies(sa, sb) or selector_implies(sb, sa):
                out.append((a, b))
        elif pa == pb and selector_implies(sa, sb) and selector_implies(sb, sa):
            out.append((a, b))
    return out
