"""The ACPI battery table a board with ``battery: true`` gets, compiled by the real iasl."""

from __future__ import annotations

from pathlib import Path

import pytest

from testdriver.acpi import BATTERY_ASL, AcpiError, battery_table, compile_asl


def test_the_battery_source_compiles_to_an_ssdt(tmp_path: Path) -> None:
    aml = battery_table(tmp_path / "acpi" / "battery.aml").read_bytes()
    # The ACPI table header: signature, length, and a checksum that makes all bytes sum to 0.
    assert aml[:4] == b"SSDT"
    assert int.from_bytes(aml[4:8], "little") == len(aml)
    assert sum(aml) % 256 == 0
    assert aml[10:16] == b"CLUCTL" and aml[16:24] == b"BATTERY\0"
    # What Linux's drivers bind: a PNP0C0A battery (an EISA id, packed) named BAT0, an ACPI0003 AC.
    assert b"BAT0" in aml and b"\x41\xd0\x0c\x0a" in aml and b"ACPI0003" in aml
    for method in (b"_STA", b"_BIF", b"_BST", b"_PSR"):
        assert method in aml
    assert sorted(p.name for p in (tmp_path / "acpi").iterdir()) == ["battery.aml"]  # iasl leaves nothing else


def test_a_source_that_does_not_compile_reports_iasls_words(tmp_path: Path) -> None:
    bad = tmp_path / "bad.asl"
    bad.write_text(BATTERY_ASL.read_text().replace("Return (0x1F)", "Return (0x1F"))
    with pytest.raises(AcpiError, match=r"(?s)failed \(status \d+\).*bad\.asl"):
        compile_asl(bad, tmp_path / "bad.aml")
    assert not (tmp_path / "bad.aml").exists()
