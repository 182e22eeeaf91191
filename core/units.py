"""Sizes and comparisons as profiles write them: ``8GiB``, ``500G``, ``1.5TB``, ``>=2``, ``<=1TB``.

Decimal units (K, M, G, T, P with or without a trailing B) are powers of 1000, as disk vendors
count; binary units (KiB ... PiB, or Ki ... Pi) are powers of 1024. So ``500G`` is 500·10⁹ bytes
and ``8GiB`` is 8·2³⁰ bytes. A bare number is bytes (sizes) or a count.

A comparison is an optional operator (``>= <= > < == !=``) and a value; without an operator it
means equal. Runs inside the images too: standard library only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction

__all__ = ["Comparison", "UnitError", "format_size", "parse_comparison", "parse_count", "parse_size"]


class UnitError(ValueError):
    """A size or comparison that does not parse; the message says what was wrong."""


_FACTORS: dict[str, int] = {"": 1, "B": 1}
for _i, _p in enumerate("KMGTP", start=1):
    _FACTORS[_p] = _FACTORS[_p + "B"] = 1000**_i
    _FACTORS[_p + "i"] = _FACTORS[_p + "iB"] = 1024**_i

# Mirrors builder.profile.types.SIZE_PATTERN (the JSON Schema editors see), so both agree.
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGTP]i?B?|B)?\s*$")
_COUNT_RE = re.compile(r"^\s*([0-9]+)\s*$")
_COMPARE_RE = re.compile(r"^\s*(>=|<=|==|!=|>|<)?\s*(.*?)\s*$")

OPERATORS = (">=", "<=", "==", "!=", ">", "<")
_SYMBOLS = {">=": "≥", "<=": "≤", "==": "=", "!=": "≠", ">": ">", "<": "<"}


def parse_size(value: str | int) -> int:
    """Bytes in ``value`` (``"8GiB"``, ``"1.5TB"``, ``"512"`` or an int); fractions of a byte round down."""
    if isinstance(value, bool):
        raise UnitError(f"{value!r} is not a size")
    if isinstance(value, int):
        if value < 0:
            raise UnitError(f"{value} is negative; a size is zero or more bytes")
        return value
    if not isinstance(value, str):
        raise UnitError(f"{value!r} is not a size")
    m = _SIZE_RE.match(value)
    if not m:
        hint = ""
        unit = value.strip().lstrip("0123456789. ")
        canonical = {k.lower(): k for k in _FACTORS}.get(unit.lower())
        if unit and canonical and canonical != unit:
            hint = f" (write the unit as {canonical})"
        raise UnitError(f"{value!r} is not a size such as 8GiB, 500G or 1.5TB{hint}")
    number, unit = m.group(1), m.group(2) or ""
    return int(Fraction(number) * _FACTORS[unit])


def parse_count(value: str | int) -> int:
    """A non-negative whole number (``"4"`` or 4)."""
    if isinstance(value, bool):
        raise UnitError(f"{value!r} is not a count")
    if isinstance(value, int):
        if value < 0:
            raise UnitError(f"{value} is negative; a count is zero or more")
        return value
    m = _COUNT_RE.match(value) if isinstance(value, str) else None
    if not m:
        raise UnitError(f"{value!r} is not a whole number")
    return int(m.group(1))


@dataclass(frozen=True)
class Comparison:
    """``op value``: does a measured count or size satisfy it?"""

    op: str
    value: int
    size: bool = False
    shown: str = field(default="", compare=False)  # the value as written, for reasons ("8 GiB")

    def holds(self, measured: int | None) -> bool:
        if measured is None:
            return False
        v = self.value
        return {
            ">=": measured >= v,
            "<=": measured <= v,
            ">": measured > v,
            "<": measured < v,
            "==": measured == v,
            "!=": measured != v,
        }[self.op]

    def describe(self) -> str:
        """Short human form for reasons: ``≥ 1 TB``, ``= 2``."""
        shown = self.shown or (format_size(self.value) if self.size else str(self.value))
        return f"{_SYMBOLS[self.op]} {shown}"

    def __str__(self) -> str:
        return self.describe()


def parse_comparison(value: str | int, size: bool = False) -> Comparison:
    """``">=2"``, ``"<=1TB"``, ``"2"`` (equal) or an int (equal) as a Comparison.

    ``size`` says whether the value is a size (units allowed) or a count.
    """
    if isinstance(value, bool):
        raise UnitError(f"{value!r} is not a comparison")
    if isinstance(value, int):
        return Comparison("==", parse_size(value) if size else parse_count(value), size)
    if not isinstance(value, str):
        raise UnitError(f"{value!r} is not a comparison")
    m = _COMPARE_RE.match(value)
    assert m is not None  # the pattern matches every string
    op, rest = m.group(1) or "==", m.group(2)
    if not rest:
        raise UnitError(f"{value!r} has an operator but no value")
    if rest[0] in "<>=!":
        raise UnitError(f"{value!r} has an unknown operator; use one of {', '.join(OPERATORS)}")
    number = parse_size(rest) if size else parse_count(rest)
    shown = ""
    if size:
        m = _SIZE_RE.match(rest)
        assert m is not None  # parse_size accepted it
        shown = f"{m.group(1)} {m.group(2)}" if m.group(2) else format_size(number)
    return Comparison(op, number, size, shown)


def format_size(n: int, binary: bool = False) -> str:
    """``n`` bytes for people: ``1 TB``, ``512 GB``, ``1.5 TB`` (or GiB etc. when ``binary``)."""
    base = 1024 if binary else 1000
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"] if binary else ["B", "KB", "MB", "GB", "TB", "PB"]
    value = Fraction(n)
    i = 0
    while value >= base and i < len(units) - 1:
        value /= base
        i += 1
    if value.denominator == 1:
        return f"{value.numerator} {units[i]}"
    # Three significant figures at most, like a disk's label: 32 GB, 1.5 TB, 256 GB.
    shown = f"{float(value):.1f}" if value < 10 else f"{round(float(value))}"
    return f"{shown.removesuffix('.0')} {units[i]}"
