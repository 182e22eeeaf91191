"""The selector language, evaluated against a normalised inventory (see docs/selectors.md).

A host selector is a dict of keys (chassis, vendor, product, display, battery, cpus, memory,
disks, nics); each key is one *criterion* that holds or not, with a short reason either way.
Pins (serial, mac) are identity: they match, contradict, or are absent. A disk selector picks
the install target among the machine's internal disks.

Runs inside the images: standard library only (plus core.units).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from core.units import Comparison, UnitError, format_size, parse_comparison

CHASSIS_SYNONYMS = {"notebook": "laptop"}

# How much a criterion narrows the field of machines: the specificity weights of the score.
# A vendor/product glob or a disk layout tells boxes apart better than "has a display".
WEIGHTS: dict[str, float] = {
    "chassis": 2.0,
    "vendor": 2.0,
    "product": 3.0,
    "display": 1.0,
    "battery": 1.5,
    "cpus": 1.0,
    "memory": 1.0,
    "disks": 2.0,
    "nics": 1.0,
}
HOST_KEYS = tuple(WEIGHTS)
TYPE_NAMES = {"nvme": "NVMe", "ssd": "SSD", "hdd": "HDD", "usb": "USB", "virtio": "virtio", "mmc": "MMC"}
DISKS_KEYS = ("count", "size", "type", "rotational")
PIN_KEYS = ("serial", "mac")
DISK_SELECTOR_KEYS = ("type", "size", "model", "serial", "smallest", "largest", "wipe")

# DMI serials that firmware vendors ship unset; they identify nothing.
JUNK_SERIALS = {"", "0", "none", "default string", "to be filled by o.e.m.", "system serial number",
                "not specified", "not applicable", "0123456789", "unknown"}


class SelectorError(ValueError):
    """A selector the profile validator should have refused; raised rather than guessed at."""


@dataclass(frozen=True)
class Criterion:
    """One selector key judged against one machine."""

    key: str
    ok: bool
    reason: str
    weight: float


@dataclass(frozen=True)
class PinResult:
    """``matched``: some pin identifies this machine; ``contradicted``: a pin says it is another one."""

    matched: bool
    contradicted: bool
    reasons: tuple[str, ...] = ()

    @property
    def present(self) -> bool:
        return self.matched or self.contradicted


# --- inventory helpers -----------------------------------------------------------------


def chassis_names(value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value]
    return [CHASSIS_SYNONYMS.get(str(v).lower(), str(v).lower()) for v in items]


def internal_disks(inventory: dict[str, Any]) -> list[dict[str, Any]]:
    """Disks that belong to the machine: not removable, not on USB, not the medium we booted from."""
    return [
        d for d in inventory.get("disks") or []
        if not d.get("removable") and d.get("type") != "usb" and not d.get("boot_medium")
    ]


def has_display(inventory: dict[str, Any]) -> bool:
    return any(c.get("connected") for c in inventory.get("displays") or [])


def has_battery(inventory: dict[str, Any]) -> bool:
    return bool((inventory.get("power") or {}).get("battery"))


def macs_of(inventory: dict[str, Any]) -> set[str]:
    return {str(n["mac"]).lower() for n in inventory.get("nics") or [] if n.get("mac")}


def usable_serial(serial: Any) -> str | None:
    if not isinstance(serial, str) or serial.strip().lower() in JUNK_SERIALS:
        return None
    return serial.strip()


def _compare(value: Any, size: bool, where: str) -> Comparison:
    try:
        return parse_comparison(value, size=size)
    except UnitError as e:
        raise SelectorError(f"{where}: {e}") from None


def _glob(pattern: str, value: Any) -> bool:
    return isinstance(value, str) and fnmatchcase(value.lower(), str(pattern).lower())


# --- disks ----------------------------------------------------------------------------


def disk_fits(disk: dict[str, Any], selector: dict[str, Any], where: str = "disk") -> list[str]:
    """Why ``disk`` does not satisfy the type/size/rotational/model/serial keys (empty: it does)."""
    misses: list[str] = []
    if "type" in selector and disk.get("type") != selector["type"]:
        misses.append(f"type {disk.get('type')}, not {selector['type']}")
    if "size" in selector:
        cmp = _compare(selector["size"], True, f"{where}.size")
        if not cmp.holds(disk.get("size")):
            misses.append(f"{format_size(disk.get('size') or 0)}, not {cmp}")
    if "rotational" in selector and bool(disk.get("rotational")) != bool(selector["rotational"]):
        misses.append("rotational" if disk.get("rotational") else "solid state")
    if "model" in selector and not _glob(selector["model"], disk.get("model")):
        misses.append(f"model {disk.get('model')!r} is not {selector['model']!r}")
    if "serial" in selector and disk.get("serial") != str(selector["serial"]):
        misses.append(f"serial {disk.get('serial')!r} is not {selector['serial']!r}")
    return misses


def _disk_words(selector: dict[str, Any], n: int) -> str:
    words = []
    if "rotational" in selector:
        words.append("rotational" if selector["rotational"] else "solid-state")
    if "type" in selector:
        words.append(TYPE_NAMES.get(str(selector["type"]), str(selector["type"])))
    words.append("disk" if n == 1 else "disks")
    if "size" in selector:
        words.append(str(_compare(selector["size"], True, "disks.size")))
    return " ".join(words)


def _disks_criterion(selector: dict[str, Any], inventory: dict[str, Any]) -> Criterion:
    if not isinstance(selector, dict):
        raise SelectorError(f"disks: expected a map, got {selector!r}")
    count = _compare(selector.get("count", ">=1"), False, "disks.count")
    counted = [d for d in internal_disks(inventory) if not disk_fits(d, selector, "disks")]
    words = _disk_words(selector, len(counted))
    ok = count.holds(len(counted))
    if ok:
        reason = f"{len(counted)} {words}" + ("" if count.op == "==" else f" ({count} wanted)")
    else:
        reason = f"{len(counted)} {words}, wanted {count}"
    # Each extra disk key narrows the layout further.
    weight = WEIGHTS["disks"] + 0.5 * sum(1 for k in ("size", "type", "rotational") if k in selector)
    return Criterion("disks", ok, reason, weight)


# --- host selectors -------------------------------------------------------------------


def evaluate(selector: dict[str, Any], inventory: dict[str, Any]) -> list[Criterion]:
    """Every key of a host selector judged against the machine, in the order of HOST_KEYS."""
    unknown = set(selector) - set(HOST_KEYS)
    if unknown:
        raise SelectorError(f"unknown selector key(s): {', '.join(sorted(unknown))}")
    system = inventory.get("system") or {}
    out: list[Criterion] = []
    for key in HOST_KEYS:
        if key not in selector:
            continue
        want = selector[key]
        w = WEIGHTS[key]
        if key == "chassis":
            names = chassis_names(want)
            have = ((system.get("chassis") or {}).get("name")) or "unknown"
            ok = have in names
            # A list of many chassis kinds narrows less than one.
            w = w / len(names) ** 0.5 if names else w
            out.append(Criterion(key, ok, f"chassis {have}" if ok else f"chassis {have}, not {'/'.join(names)}", w))
        elif key in ("vendor", "product"):
            field_ = "vendor" if key == "vendor" else "product"
            have = system.get(field_)
            ok = _glob(want, have)
            out.append(Criterion(key, ok, f"{key} {have!r}" if ok else f"{key} {have!r} is not {want!r}", w))
        elif key == "display":
            have = has_display(inventory)
            ok = have == bool(want)
            reason = "display connected" if have else "no display connected"
            out.append(Criterion(key, ok, reason if ok else f"{reason} (wanted {'one' if want else 'none'})", w))
        elif key == "battery":
            have = has_battery(inventory)
            ok = have == bool(want)
            reason = "battery present" if have else "no battery"
            out.append(Criterion(key, ok, reason if ok else f"{reason} (wanted {'one' if want else 'none'})", w))
        elif key == "cpus":
            cmp = _compare(want, False, "cpus")
            have = (inventory.get("cpu") or {}).get("count")
            ok = cmp.holds(have)
            out.append(Criterion(key, ok, f"{have} CPUs" + ("" if ok else f", wanted {cmp}"), w))
        elif key == "memory":
            cmp = _compare(want, True, "memory")
            have = (inventory.get("memory") or {}).get("total")
            ok = cmp.holds(have)
            shown = format_size(have or 0, binary=True)
            out.append(Criterion(key, ok, f"{shown} memory" + ("" if ok else f", wanted {cmp}"), w))
        elif key == "disks":
            out.append(_disks_criterion(want, inventory))
        elif key == "nics":
            if not isinstance(want, dict):
                raise SelectorError(f"nics: expected a map, got {want!r}")
            cmp = _compare(want.get("count", ">=1"), False, "nics.count")
            have = len(inventory.get("nics") or [])
            ok = cmp.holds(have)
            shown = f"{have} NIC{'' if have == 1 else 's'}"
            out.append(Criterion(key, ok, shown + ("" if ok else f", wanted {cmp}"), w))
    return out


def merge_selectors(role_match: dict[str, Any] | None, host_match: dict[str, Any] | None) -> dict[str, Any]:
    """The host's effective selector: the role's keys plus the host's (host wins; ``disks`` merges)."""
    merged: dict[str, Any] = dict(role_match or {})
    for key, value in (host_match or {}).items():
        if key in ("disks", "nics") and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def check_pins(pin: dict[str, Any] | None, inventory: dict[str, Any]) -> PinResult:
    """Judge ``hosts.<h>.pin`` against the machine. Any matching pin wins over a contradicting one
    (a replaced NIC must not hide a box whose serial still matches)."""
    if not pin:
        return PinResult(False, False)
    matched: list[str] = []
    contra: list[str] = []
    if pin.get("serial") is not None:
        have = usable_serial((inventory.get("system") or {}).get("serial"))
        if have is not None and have == str(pin["serial"]).strip():
            matched.append(f"serial {have} pinned")
        else:
            contra.append(f"serial {have or 'unknown'} is not the pinned {pin['serial']}")
    if pin.get("mac") is not None:
        wanted = [str(m).lower() for m in (pin["mac"] if isinstance(pin["mac"], list) else [pin["mac"]])]
        have_macs = macs_of(inventory)
        hits = [m for m in wanted if m in have_macs]
        if hits:
            matched.append(f"MAC {hits[0]} pinned")
        else:
            contra.append(f"no NIC with the pinned MAC {'/'.join(wanted)}")
    if matched:
        return PinResult(True, False, tuple(matched))
    return PinResult(False, bool(contra), tuple(contra))


# --- install disk -----------------------------------------------------------------------


@dataclass
class DiskChoice:
    """The install target a disk selector picked, or why none could be picked."""

    disk: dict[str, Any] | None
    candidates: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (disk name, why not)
    error: str | None = None
    wipe_allowed: bool = False

    @property
    def holds_data(self) -> bool:
        return bool(self.disk and disk_holds_data(self.disk))

    @property
    def needs_confirmation(self) -> bool:
        """The chosen disk holds data and the profile does not allow wiping it."""
        return self.holds_data and not self.wipe_allowed


def disk_holds_data(disk: dict[str, Any]) -> bool:
    return bool(disk.get("partition_table") or disk.get("filesystem") or disk.get("partitions"))


def describe_disk(disk: dict[str, Any]) -> str:
    """``nvme0n1 (NVMe, 256 GB, Samsung SSD 980, S64A...)``."""
    bits = [TYPE_NAMES.get(str(disk.get("type")), "?"), format_size(disk.get("size") or 0)]
    if disk.get("model"):
        bits.append(str(disk["model"]))
    if disk.get("serial"):
        bits.append(str(disk["serial"]))
    return f"{disk.get('name')} ({', '.join(bits)})"


def describe_contents(disk: dict[str, Any]) -> str:
    """What is on a disk now, for the wizard and for errors: ``empty`` or ``gpt: ext4 root, vfat ESP``."""
    if not disk_holds_data(disk):
        return "empty"
    parts = []
    for p in disk.get("partitions") or []:
        fs = p.get("filesystem") or p.get("part_label") or "no file system"
        parts.append(f"{fs} {p['label']}" if p.get("label") else fs)
    head = disk.get("partition_table") or disk.get("filesystem") or "data"
    return f"{head}: {', '.join(parts)}" if parts else str(head)


def choose_disk(selector: dict[str, Any] | None, inventory: dict[str, Any], where: str = "install.disk",
                taken: dict[str, str] | None = None) -> DiskChoice:
    """Pick a disk: internal disks that satisfy the selector, never the boot medium nor one ``taken``
    (disk name -> why: another volume's)."""
    selector = dict(selector or {})
    unknown = set(selector) - set(DISK_SELECTOR_KEYS)
    if unknown:
        raise SelectorError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    if selector.get("smallest") and selector.get("largest"):
        raise SelectorError(f"{where}: smallest and largest exclude each other")
    wipe = bool(selector.get("wipe"))
    rejected: list[tuple[str, str]] = []
    candidates: list[dict[str, Any]] = []
    for d in inventory.get("disks") or []:
        if d.get("boot_medium"):
            rejected.append((d["name"], "the medium this system booted from"))
        elif d.get("removable") or d.get("type") == "usb":
            rejected.append((d["name"], "removable or on USB"))
        elif taken and d["name"] in taken:
            rejected.append((d["name"], taken[d["name"]]))
        else:
            misses = disk_fits(d, selector, where)
            if misses:
                rejected.append((d["name"], "; ".join(misses)))
            else:
                candidates.append(d)
    if not candidates:
        why = "; ".join(f"{n}: {r}" for n, r in rejected) or "the machine has no disks"
        return DiskChoice(None, [], rejected, f"no internal disk fits the selector ({why})", wipe)
    if selector.get("smallest") or selector.get("largest"):
        # Ties broken by name so the same machine always gets the same answer.
        ordered = sorted(candidates, key=lambda d: (d.get("size") or 0, d.get("name") or ""))
        pick = ordered[0] if selector.get("smallest") else sorted(
            candidates, key=lambda d: (-(d.get("size") or 0), d.get("name") or ""))[0]
        return DiskChoice(pick, candidates, rejected, None, wipe)
    if len(candidates) > 1:
        listed = ", ".join(describe_disk(d) for d in candidates)
        return DiskChoice(None, candidates, rejected,
                          f"{len(candidates)} disks fit the selector, exactly one must: {listed}; "
                          "add type, size, model or serial, or smallest/largest", wipe)
    return DiskChoice(candidates[0], candidates, rejected, None, wipe)
