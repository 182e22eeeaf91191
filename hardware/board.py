"""Board definitions: the shape of a machine (firmware, DMI identity, disks, NICs, display).

A board file in ``hardware/boards/<name>.yaml`` says what first boot will detect on a machine
and how QEMU imitates it in tests. Parsing (:func:`board_from_dict`) is kept apart from file
reading (:func:`read_board_file`) so that the profile's validated loader can hand over an
already checked dict.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

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
FIRMWARES = ("uefi", "bios")
DISK_BUSES = ("nvme", "sata", "virtio", "usb", "mmc")
NIC_MODELS = ("virtio", "e1000", "e1000e", "rtl8139")

_TOP_KEYS = {"description", "firmware", "cpus", "memory", "dmi", "disks", "nics", "display", "battery", "name"}
_DMI_KEYS = {"vendor", "product", "version", "serial", "chassis", "board_vendor", "board_product"}
_DISK_KEYS = {"bus", "size", "model", "serial", "rotational", "removable"}
_NIC_KEYS = {"model", "mac"}


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


def _size(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise BoardError(f"{where}: expected a size such as 64GiB, got {value!r}")
    if isinstance(value, int):  # already normalised (the profile's validated loader does that)
        if value <= 0:
            raise BoardError(f"{where}: a size must be positive")
        return value
    from hardware.units import UnitError, parse_size  # the project's one size grammar

    try:
        size = parse_size(value)
    except (UnitError, TypeError) as e:
        raise BoardError(f"{where}: {e}") from None
    if size <= 0:
        raise BoardError(f"{where}: a size must be positive")
    return size


def _str(d: dict[str, Any], key: str, where: str, required: bool = False) -> str:
    value = d.get(key)
    if value is None:
        if required:
            raise BoardError(f"{where}: '{key}' is required")
        return ""
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise BoardError(f"{where}.{key}: expected a string, got {value!r}")
    return str(value)


def _bool(d: dict[str, Any], key: str, where: str, default: bool = False) -> bool:
    value = d.get(key, default)
    if not isinstance(value, bool):
        raise BoardError(f"{where}.{key}: expected true or false, got {value!r}")
    return value


def _choice(value: Any, choices: tuple[str, ...] | dict[str, int], where: str) -> str:
    if value not in choices:
        raise BoardError(f"{where}: {value!r} is not one of {', '.join(choices)}")
    return str(value)


def _map(value: Any, keys: set[str], where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BoardError(f"{where}: expected a mapping, got {type(value).__name__}")
    unknown = sorted(set(value) - keys)
    if unknown:
        raise BoardError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}; known: {', '.join(sorted(keys))}")
    return value


def _disk(raw: Any, where: str) -> Disk:
    d = _map(raw, _DISK_KEYS, where)
    if "size" not in d:
        raise BoardError(f"{where}: 'size' is required")
    return Disk(
        bus=_choice(d.get("bus"), DISK_BUSES, f"{where}.bus"),
        size=_size(d["size"], f"{where}.size"),
        model=_str(d, "model", where),
        serial=_str(d, "serial", where),
        rotational=_bool(d, "rotational", where),
        removable=_bool(d, "removable", where),
    )


def _nic(raw: Any, where: str) -> Nic:
    d = _map(raw, _NIC_KEYS, where)
    mac = _str(d, "mac", where, required=True).lower()
    parts = mac.split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdef" for c in p) for p in parts):
        raise BoardError(f"{where}.mac: {mac!r} is not a MAC address such as 52:54:00:12:34:56")
    return Nic(mac=mac, model=_choice(d.get("model", "virtio"), NIC_MODELS, f"{where}.model"))


def board_from_dict(data: Any, name: str) -> Board:
    """A :class:`Board` from a parsed board file (sizes as text or as byte counts)."""
    d = _map(data, _TOP_KEYS, name)
    dmi_raw = _map(d.get("dmi"), _DMI_KEYS, f"{name}.dmi")
    cpus = d.get("cpus", 2)
    if not isinstance(cpus, int) or isinstance(cpus, bool) or not 1 <= cpus <= 64:
        raise BoardError(f"{name}.cpus: expected a whole number from 1 to 64, got {cpus!r}")
    disks = d.get("disks") or []
    nics = d.get("nics") or []
    if not isinstance(disks, list) or not isinstance(nics, list):
        raise BoardError(f"{name}: 'disks' and 'nics' are lists")
    return Board(
        name=str(d.get("name") or name),
        description=_str(d, "description", name, required=True),
        firmware=_choice(d.get("firmware"), FIRMWARES, f"{name}.firmware"),
        cpus=cpus,
        memory=_size(d.get("memory", "2GiB"), f"{name}.memory"),
        dmi=Dmi(
            vendor=_str(dmi_raw, "vendor", f"{name}.dmi", required=True),
            product=_str(dmi_raw, "product", f"{name}.dmi", required=True),
            chassis=_choice(dmi_raw.get("chassis"), CHASSIS_TYPES, f"{name}.dmi.chassis"),
            version=_str(dmi_raw, "version", f"{name}.dmi"),
            serial=_str(dmi_raw, "serial", f"{name}.dmi"),
            board_vendor=_str(dmi_raw, "board_vendor", f"{name}.dmi"),
            board_product=_str(dmi_raw, "board_product", f"{name}.dmi"),
        ),
        disks=tuple(_disk(x, f"{name}.disks[{i}]") for i, x in enumerate(disks)),
        nics=tuple(_nic(x, f"{name}.nics[{i}]") for i, x in enumerate(nics)),
        display=_bool(d, "display", name),
        battery=_bool(d, "battery", name),
    )


def board_path(name_or_path: str | os.PathLike[str], boards_dir: Path = BOARDS_DIR) -> Path:
    """A board name (``nano-itx``) means ``hardware/boards/nano-itx.yaml``; a path means itself."""
    text = os.fspath(name_or_path)
    if text.endswith((".yaml", ".yml")) or os.sep in text:
        return Path(text)
    return boards_dir / f"{text}.yaml"


def read_board_file(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        known = ", ".join(board_names()) or "none"
        raise BoardError(f"no board file {path} (known boards: {known})") from None
    except yaml.YAMLError as e:
        raise BoardError(f"{path}: not valid YAML: {e}") from None


def board_names(boards_dir: Path = BOARDS_DIR) -> list[str]:
    return sorted(p.stem for p in boards_dir.glob("*.yaml"))


def load_board(name_or_path: str | os.PathLike[str], boards_dir: Path = BOARDS_DIR) -> Board:
    path = board_path(name_or_path, boards_dir)
    return board_from_dict(read_board_file(path), path.stem)
