"""Board definitions: the shape of a machine (firmware, DMI identity, disks, NICs, display).

A board file in ``testdriver/boards/<name>.yaml`` says what first boot will detect on a machine
and how QEMU imitates it in tests. Parsing (:func:`board_from_dict`) is kept apart from file
checking, which the profile's field table does (builder.profile.load_board), so boards and
profiles obey one set of rules and report mistakes the same located way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.profile import ProfileInvalid
from builder.profile import load_board as load_checked

BOARDS_DIR = Path(__file__).resolve().parent / "boards"

# SMBIOS 3.x, type 3 "System Enclosure or Chassis Types" (DSP0134 §7.4.1).
CHASSIS_TYPES: dict[str, int] = {
    "other": 0x01,
    "desktop": 0x03,
    "tower": 0x07,
    "laptop": 0x09,
    "notebook": 0x0A,
    "all-in-one": 0x0D,
    "server": 0x11,  # "Main Server Chassis"
    "tablet": 0x1E,
    "mini-pc": 0x23,
}


class BoardError(ValueError):
    """A board definition that cannot describe a machine; the text says where and why."""


@dataclass(frozen=True)
class Dmi:
    vendor: str
    product: str
    chassis: str
    version: str = ""
    serial: str = ""
    board_vendor: str = ""
    board_product: str = ""

    @property
    def chassis_type(self) -> int:
        """The SMBIOS type 3 chassis type number, as /sys/class/dmi/id/chassis_type shows it."""
        return CHASSIS_TYPES[self.chassis]


@dataclass(frozen=True)
class Disk:
    bus: str
    size: int  # bytes
    model: str = ""
    serial: str = ""
    rotational: bool = False
    removable: bool = False


@dataclass(frozen=True)
class Nic:
    mac: str
    model: str = "virtio"


@dataclass(frozen=True)
class Board:
    name: str
    description: str
    firmware: str
    dmi: Dmi
    cpus: int = 2
    memory: int = 2 * 1024**3  # bytes
    disks: tuple[Disk, ...] = ()
    nics: tuple[Nic, ...] = ()
    display: bool = False
    battery: bool = False


def board_from_dict(data: dict[str, Any], name: str) -> Board:
    """A :class:`Board` from a board dict already checked by the field table (builder.profile)."""
    dmi = data["dmi"]
    return Board(
        name=str(data.get("name") or name),
        description=data["description"],
        firmware=data["firmware"],
        cpus=data["cpus"],
        memory=data["memory"],
        dmi=Dmi(
            vendor=dmi["vendor"], product=dmi["product"], chassis=dmi["chassis"],
            version=dmi.get("version", ""), serial=dmi.get("serial", ""),
            board_vendor=dmi.get("board_vendor", ""), board_product=dmi.get("board_product", ""),
        ),
        disks=tuple(Disk(bus=d["bus"], size=d["size"], model=d.get("model", ""), serial=d.get("serial", ""),
                         rotational=d["rotational"], removable=d["removable"]) for d in data["disks"]),
        nics=tuple(Nic(mac=n["mac"].lower(), model=n["model"]) for n in data["nics"]),
        display=data["display"],
        battery=data["battery"],
    )


def board_path(name_or_path: str | os.PathLike[str], boards_dir: Path = BOARDS_DIR) -> Path:
    """A board name (``nano-itx``) means ``testdriver/boards/nano-itx.yaml``; a path means itself."""
    text = os.fspath(name_or_path)
    if text.endswith((".yaml", ".yml")) or os.sep in text:
        return Path(text)
    return boards_dir / f"{text}.yaml"


def board_names(boards_dir: Path = BOARDS_DIR) -> list[str]:
    return sorted(p.stem for p in boards_dir.glob("*.yaml"))


def load_board(name_or_path: str | os.PathLike[str], boards_dir: Path = BOARDS_DIR) -> Board:
    """A board by name or path, checked by the profile's field table (one set of rules for both)."""
    path = board_path(name_or_path, boards_dir)
    if not path.exists():
        known = ", ".join(board_names(boards_dir)) or "none"
        raise BoardError(f"no board file {path} (known boards: {known})")
    try:
        data = load_checked(path)
    except ProfileInvalid as err:
        raise BoardError(str(err)) from None
    return board_from_dict(data, path.stem)
