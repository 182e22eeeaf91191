"""Which firmware booted this machine, and whether Secure Boot is on.

Read from sysfs: /sys/firmware/efi exists only when UEFI started the kernel, and the UEFI
global variables SecureBoot and SetupMode (efivarfs: 4 bytes of attributes, then the value)
say whether the firmware enforces signatures. Served as hw/firmware/ and carried by the
``ready`` event, so a person can tell from anywhere in the cluster which boxes boot with it on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

EFI_GLOBAL_GUID = "8be4df61-93ca-11d2-aa0d-00e098032b8c"


def _efi_flag(efivars: Path, name: str) -> bool | None:
    try:
        data = (efivars / f"{name}-{EFI_GLOBAL_GUID}").read_bytes()
    except OSError:
        return None  # efivarfs not mounted, or the firmware does not have the variable
    return bool(data[4]) if len(data) >= 5 else None


def firmware(sys_root: str | Path = "/sys") -> dict[str, Any]:
    """``mode`` (uefi or bios), ``secure_boot`` (on, off, or None when not known: BIOS, or no
    efivarfs) and ``setup_mode`` (UEFI keys not yet enrolled: Secure Boot cannot be on)."""
    efi = Path(sys_root) / "firmware" / "efi"
    if not efi.is_dir():
        return {"mode": "bios", "secure_boot": None, "setup_mode": None}
    efivars = efi / "efivars"
    return {"mode": "uefi", "secure_boot": _efi_flag(efivars, "SecureBoot"),
            "setup_mode": _efi_flag(efivars, "SetupMode")}


def board_firmware(facts: dict[str, Any]) -> str:
    """The board file's ``firmware`` for these facts: uefi-secure, uefi or bios."""
    if facts.get("mode") != "uefi":
        return "bios"
    return "uefi-secure" if facts.get("secure_boot") else "uefi"
