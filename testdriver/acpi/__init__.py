"""ACPI tables a QEMU guest gets beside QEMU's own (``-acpitable``): a board's battery.

QEMU has no battery device; an SSDT declaring one (battery.asl, compiled with acpica-tools'
``iasl``) is enough for Linux's ACPI battery and AC drivers to bind, so a guest sees
/sys/class/power_supply/BAT0 (type Battery) and AC (type Mains) as on a real laptop.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

IASL = "iasl"
BATTERY_ASL = Path(__file__).resolve().parent / "battery.asl"


class AcpiError(RuntimeError):
    """A table could not be compiled (no iasl, or the source does not compile)."""


def compile_asl(source: Path, aml: Path) -> Path:
    """``source`` compiled to ``aml`` (iasl names its output after the prefix it is given)."""
    if aml.suffix != ".aml":
        raise ValueError(f"{aml}: iasl writes <prefix>.aml, so the output must end in .aml")
    aml.parent.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            [IASL, "-p", str(aml.with_suffix("")), str(source)], capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        raise AcpiError(f"{IASL} not found: install Debian's 'acpica-tools' package") from None
    if done.returncode != 0 or not aml.is_file():
        raise AcpiError(f"{IASL} {source} failed (status {done.returncode}):\n{(done.stdout + done.stderr).strip()}")
    return aml


def battery_table(aml: Path) -> Path:
    """The battery and AC adapter SSDT, compiled to ``aml`` (a file in the machine's work dir)."""
    return compile_asl(BATTERY_ASL, aml)
