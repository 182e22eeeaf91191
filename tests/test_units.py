"""core.units: the one grammar for sizes and comparisons (profiles, boards, selectors)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.units import Comparison, UnitError, format_size, parse_comparison, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8GiB", 8 * 2**30),
        ("500G", 500 * 10**9),
        ("500GB", 500 * 10**9),
        ("1.5TB", 1_500_000_000_000),
        ("1.5KiB", 1536),
        ("2Ti", 2 * 2**40),
        ("512", 512),
        ("512B", 512),
        (" 64 MiB ", 64 * 2**20),
        (4096, 4096),
    ],
)
def test_sizes(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "GiB", "8 gigs", "1,5TB", "-3", "8XB", True, None, 1.5, -1, "1.5.2G"])
def test_bad_sizes(bad: object) -> None:
    with pytest.raises(UnitError):
        parse_size(bad)  # type: ignore[arg-type]


def test_lower_case_unit_hint() -> None:
    with pytest.raises(UnitError, match="write the unit as GiB"):
        parse_size("8gib")


@pytest.mark.parametrize(
    ("text", "size", "op", "value"),
    [
        (">=2", False, ">=", 2),
        ("<= 1TB", True, "<=", 10**12),
        (">500G", True, ">", 500 * 10**9),
        ("==2", False, "==", 2),
        ("2", False, "==", 2),
        (3, False, "==", 3),
        ("!=0", False, "!=", 0),
        ("<8GiB", True, "<", 8 * 2**30),
    ],
)
def test_comparisons(text: str | int, size: bool, op: str, value: int) -> None:
    assert parse_comparison(text, size=size) == Comparison(op, value, size)


@pytest.mark.parametrize("bad", [">=", "=>2", "=2", ">>2", ">=2GiB", "two", "2.5", True, None])
def test_bad_count_comparisons(bad: object) -> None:
    with pytest.raises(UnitError):
        parse_comparison(bad)  # type: ignore[arg-type]


def test_holds() -> None:
    c = parse_comparison(">=1TB", size=True)
    assert c.holds(10**12) and c.holds(2 * 10**12)
    assert not c.holds(10**12 - 1) and not c.holds(None)
    assert parse_comparison("!=2").holds(3) and not parse_comparison("!=2").holds(2)
    assert parse_comparison("<3").holds(2) and not parse_comparison("<3").holds(3)


def test_describe() -> None:
    assert parse_comparison(">=1TB", size=True).describe() == "≥ 1 TB"
    assert parse_comparison("<=1.5TB", size=True).describe() == "≤ 1.5 TB"
    assert parse_comparison("2").describe() == "= 2"
    assert format_size(8 * 2**30, binary=True) == "8 GiB"
    assert format_size(256 * 2**30) == "275 GB"


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["", "B", "K", "KB", "Ki", "KiB", "M", "GiB", "T"]))
def test_size_roundtrip(number: int, unit: str) -> None:
    factor = parse_size(f"1{unit}")
    assert parse_size(f"{number}{unit}") == number * factor
    assert parse_comparison(f">={number}{unit}", size=True).holds(number * factor)
