"""A role's data disks (``roles.<role>.volumes``): found, formatted when blank, mounted.

Runs at every boot of an installed host (clusterctl-volumes.service, before the agent, so an
export such as the storage role's ``drive`` is the disk and not a folder of the root). Which
disk: first one that already holds the volume (ext4 labelled with the volume's name: kernel
names of SATA disks change between boots, a label does not), else the one the volume's disk
selector picks among internal disks, never the disk the system runs from. A disk that holds
anything else (a partition table, a file system) is left alone unless ``disk.wipe`` is true;
that is a ``refused`` volume and an ``error`` event, not a silent format.

Each volume gives one ``volume`` event: state ``mounted`` (with ``formatted: true`` the first
time), ``refused`` or ``missing`` (no disk fits), or ``failed`` (a tool said no).
Runs inside the images on Debian's python3: standard library and hardware/ only.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from core.disk.tools import InstallError, run
from core.events import emit
from hardware.selectors import (
    SelectorError,
    choose_disk,
    describe_contents,
    describe_disk,
    disk_fits,
    disk_holds_data,
    internal_disks,
)

FILESYSTEM = "ext4"
ALWAYS_OPTIONS = ("nosuid", "nodev")
# -m 0: a data disk needs no blocks kept for root. Inode tables are initialised lazily (the
# kernel finishes them in the background), so a multi-terabyte disk is ready in seconds.
MKFS = ("mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=1,nodiscard")


@dataclass
class VolumeStep:
    """What to do for one volume on this machine."""

    name: str
    path: str
    action: str  # mount (the disk holds the volume), format (blank, or wipe allowed), refuse, missing
    disk: dict[str, Any] | None
    why: str
    options: tuple[str, ...] = ()


def _selector_keys(selector: dict[str, Any]) -> dict[str, Any]:
    """The keys that describe a disk (not how to choose among several, nor wipe)."""
    return {k: v for k, v in selector.items() if k not in ("smallest", "largest", "wipe")}


def _holds_volume(disk: dict[str, Any], name: str) -> bool:
    return disk.get("filesystem") == FILESYSTEM and disk.get("label") == name and not disk.get("partitions")


def plan_volumes(volumes: dict[str, dict[str, Any]], inventory: dict[str, Any]) -> list[VolumeStep]:
    """One step per volume, in name order; no disk serves two volumes."""
    internal = internal_disks(inventory)
    options = {name: tuple(vol.get("options") or ()) for name, vol in volumes.items()}
    steps: dict[str, VolumeStep] = {}
    taken: dict[str, str] = {}
    # First every volume whose disk is already there, so a volume allowed to wipe can never
    # pick the disk of another volume still to come.
    for name, vol in sorted(volumes.items()):
        own = [d for d in internal if _holds_volume(d, name) and d["name"] not in taken
               and not disk_fits(d, _selector_keys(vol.get("disk") or {}), f"volumes.{name}.disk")]
        if own:
            d = own[0]
            taken[d["name"]] = f'holds volume "{name}"'
            steps[name] = VolumeStep(name, vol["path"], "mount", d, f"{describe_disk(d)} holds the volume",
                                     options[name])
    for d in internal:  # a labelled disk of a volume this role no longer has is not free either
        if d["name"] not in taken and d.get("filesystem") == FILESYSTEM and d.get("label") in volumes:
            taken[d["name"]] = f'labelled for volume "{d["label"]}"'
    for name, vol in sorted(volumes.items()):
        if name in steps:
            continue
        choice = choose_disk(vol.get("disk"), inventory, f"volumes.{name}.disk", taken)
        if choice.disk is None:
            steps[name] = VolumeStep(name, vol["path"], "missing", None, choice.error or "no disk fits",
                                     options[name])
            continue
        d = choice.disk
        if disk_holds_data(d) and not choice.wipe_allowed:
            steps[name] = VolumeStep(name, vol["path"], "refuse", d,
                                     f"{describe_disk(d)} holds {describe_contents(d)}; it is left alone "
                                     "(disk.wipe: true allows formatting it)", options[name])
            continue
        taken[d["name"]] = f'chosen for volume "{name}"'
        was = "blank" if not disk_holds_data(d) else f"held {describe_contents(d)}, wipe allowed"
        steps[name] = VolumeStep(name, vol["path"], "format", d, f"{describe_disk(d)} ({was})",
                                 options[name])
    return [steps[n] for n in sorted(steps)]


def still_blank(device: str) -> bool:
    """Probe the device itself right before formatting (udev's view may be a boot old)."""
    # blkid -p exits 2 when it finds no signature at all.
    try:
        run("volumes", ["blkid", "-p", "-o", "export", device], ok=(2,))
    except InstallError:
        return False
    return True


def format_disk(device: str, name: str, wipe: bool) -> None:
    if wipe:
        run("volumes", ["wipefs", "-a", device])
    elif not still_blank(device):
        raise InstallError("volumes", f"{device} is no longer blank; it is left alone")
    run("volumes", [*MKFS, "-L", name, device])


def _mounted_at(path: str, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The major:minor mounted at ``path``, if anything is."""
    try:
        text = Path(mountinfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4] == path:
            return fields[2]
    return None


def mount_volume(device: str, path: str, options: tuple[str, ...]) -> None:
    """Mount ``device`` at ``path``, unless it is mounted there already (the unit ran before)."""
    st = os.stat(device)
    here = _mounted_at(path)
    if here == f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}":
        return
    if here is not None:
        raise InstallError("volumes", f"{path} already has another file system mounted ({here})")
    os.makedirs(path, exist_ok=True)
    run("volumes", ["mount", "-t", FILESYSTEM, "-o", ",".join((*ALWAYS_OPTIONS, *options)), device, path])


def apply(steps: list[VolumeStep], events: TextIO | None = None) -> bool:
    """Carry the steps out; one event each. True when every volume ended mounted."""
    ok = True
    for s in steps:
        base = {"name": s.name, "path": s.path}
        if s.disk is None or s.action in ("missing", "refuse"):
            state = "missing" if s.action == "missing" else "refused"
            emit("volume", events, **base, state=state, disk=s.disk and s.disk.get("name"), why=s.why)
            emit("error", events, stage="volumes", message=f"volume {s.name} ({s.path}): {s.why}")
            ok = False
            continue
        device = str(s.disk.get("path") or f"/dev/{s.disk['name']}")
        try:
            if s.action == "format":
                format_disk(device, s.name, wipe=disk_holds_data(s.disk))
            mount_volume(device, s.path, s.options)
        except (InstallError, OSError) as exc:
            emit("volume", events, **base, state="failed", disk=s.disk.get("name"), why=str(exc))
            emit("error", events, stage="volumes", message=f"volume {s.name} ({s.path}): {exc}")
            ok = False
            continue
        emit("volume", events, **base, state="mounted", formatted=s.action == "format", disk=s.disk.get("name"),
             serial=s.disk.get("serial"), size=s.disk.get("size"), why=s.why)
    return ok


def prepare(volumes: dict[str, dict[str, Any]], collect: Callable[[], dict[str, Any]],
            events: TextIO | None = None, wait: float = 30.0, sleep: Callable[[float], None] = time.sleep) -> bool:
    """Plan against this machine's disks and carry it out. A disk still being probed at boot may
    show up late: while some volume has no disk, look again for up to ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        try:
            steps = plan_volumes(volumes, collect())
        except SelectorError as exc:
            emit("error", events, stage="volumes", message=str(exc))
            return False
        if all(s.action != "missing" for s in steps) or time.monotonic() >= deadline:
            return apply(steps, events)
        sleep(2.0)
