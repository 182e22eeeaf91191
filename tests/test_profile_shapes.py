"""Property: documents generated from the field table's own shapes, right and wrong, validate
or fail with located messages (exit 0 or 2), never a traceback, within a time and memory bound.

Where tests/test_profile_property.py mutates one example, this walks the table (every record,
list, map and scalar kind) so every field is reached, including ones no example uses, and puts
hostile values (huge sizes, `/` as an overlay, control characters, deep nesting) anywhere.
"""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builder.cli import main
from builder.profile.fields import BOARD, PROFILE
from builder.profile.types import (
    Bool,
    Choice,
    Cidr,
    Compare,
    Int,
    IpAddress,
    Kind,
    ListOf,
    MapOf,
    Record,
    Ref,
    Size,
    Str,
)
from builder.profile.types import (
    Path as PathKind,
)
from core.units import OPERATORS

LOCATED = re.compile(r"^\S+:\d+:\d+: \S.*$")
NAMES = ("left", "right", "stable", "rescue", "desktop", "nano-itx", "stick")  # keys and refs meet here
FILES = ("file.txt", "folder", "/", "/etc", "~", "missing")  # beside the profile, or hostile
HOSTILE = st.sampled_from([
    "10000000000000000000000TiB", 10**30, "/", "/dev", "", "\x00", "\u202e", "a" * 5000, -1, 2**64,
    "1e400", ">=", "dhcp", "0.0.0.0/0", "::/0", [[[[[]]]]], {"": {"": {}}},
])
# Any value at all: what a person's typo or a hostile file can put anywhere.
ANY = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=16), HOSTILE),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=10,
)
# Memory and time per document, far above what validating one small profile takes (tens of
# milliseconds, a few MiB): a bound on runaway work, not a benchmark (bench/ has those).
MAX_SECONDS = 20.0
MAX_BYTES = 256 * 2**20


def _right(kind: Kind) -> st.SearchStrategy[Any]:
    """Values of the kind's own shape (not always valid: refs may dangle, sizes may not fit)."""
    if isinstance(kind, Record):
        required = {f.name: shape(f.kind) for f in kind.fields if f.required}
        optional = {f.name: shape(f.kind) for f in kind.fields if not f.required}
        return st.fixed_dictionaries(required, optional=optional)
    if isinstance(kind, MapOf):
        keys = st.one_of(st.sampled_from(NAMES), _right(kind.key))
        return st.dictionaries(keys, shape(kind.value), max_size=3)
    if isinstance(kind, ListOf):
        items = st.lists(shape(kind.item), min_size=kind.min_items, max_size=3)
        return st.one_of(items, shape(kind.item)) if kind.single_ok else items
    if isinstance(kind, Ref):
        return st.sampled_from(NAMES)
    if isinstance(kind, Choice):
        return st.sampled_from([*kind.values, *kind.synonyms])
    if isinstance(kind, Bool):
        return st.booleans()
    if isinstance(kind, Int):
        return st.integers(kind.minimum if kind.minimum is not None else -(2**40),
                           kind.maximum if kind.maximum is not None else 2**40)
    if isinstance(kind, Size):
        n = st.integers(0, kind.maximum * 2)
        return st.one_of(n, st.builds(lambda v, u: f"{v}{u}", st.integers(0, 10**6),
                                      st.sampled_from(["", "B", "K", "MiB", "GiB", "TB", "TiB", "PB"])))
    if isinstance(kind, Compare):
        unit = st.sampled_from(["", "GB", "TiB"]) if kind.sizes else st.just("")
        return st.builds(lambda op, v, u: f"{op}{v}{u}", st.sampled_from([*OPERATORS, ""]),
                         st.integers(0, 10**4), unit)
    if isinstance(kind, Cidr):
        return st.sampled_from(["10.42.0.0/24", "192.168.1.0/24", "fd00::/64", "dhcp", "10.42.0.1/24"])
    if isinstance(kind, IpAddress):
        return st.sampled_from(["10.42.0.1", "10.42.0.200", "192.168.9.9", "fd00::1", "dhcp"])
    if isinstance(kind, PathKind):
        return st.sampled_from(FILES)
    if isinstance(kind, Str):
        if kind.pattern:
            return st.from_regex(kind.pattern, fullmatch=True).filter(lambda s: len(s) <= kind.max_length)
        return st.text(max_size=min(kind.max_length, 40))
    raise AssertionError(f"no strategy for {type(kind).__name__}: add one when adding a kind")


_MEMO: dict[int, st.SearchStrategy[Any]] = {}


def shape(kind: Kind) -> st.SearchStrategy[Any]:
    """The kind's own shape most of the time, anything (hostile included) now and then."""
    if id(kind) not in _MEMO:
        right = _right(kind)
        _MEMO[id(kind)] = st.integers(0, 11).flatmap(lambda roll, right=right: ANY if roll == 0 else right)
    return _MEMO[id(kind)]


def run_validate(args: list[str]) -> tuple[int, list[str], float, int]:
    """(exit status, stderr lines, seconds, peak bytes allocated) of one in-process validate."""
    err = io.StringIO()
    tracemalloc.start()
    began = time.monotonic()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            status = main(args)
    finally:
        took = time.monotonic() - began
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return status, err.getvalue().splitlines(), took, peak


def check_document(data: Any, command: Callable[[str], list[str]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "file.txt").write_text("not a profile\n")
        (Path(tmp) / "folder").mkdir()
        path = Path(tmp) / "p.yaml"
        path.write_text(yaml.safe_dump(data, allow_unicode=True))
        status, lines, took, peak = run_validate(command(str(path)))
    assert status in (0, 2), lines
    assert took < MAX_SECONDS and peak < MAX_BYTES, (took, peak)
    if status == 2:
        assert lines and lines[-1].startswith("clusterctl: ") and "error" in lines[-1]
        assert len(lines) > 1, "exit 2 with no located message"
        for line in lines[:-1]:
            assert LOCATED.match(line), line
            assert "Traceback" not in line


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(shape(PROFILE))
def test_profiles_from_the_table_validate_or_fail_located(data: Any) -> None:
    check_document(data, lambda p: ["validate", p])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(shape(BOARD))
def test_boards_from_the_table_validate_or_fail_located(data: Any) -> None:
    check_document(data, lambda p: ["validate", "--board", p])


def test_the_strategies_reach_every_kind_of_the_table() -> None:
    """A kind added to the table without a strategy fails here, not silently in a draw."""
    seen: set[int] = set()

    def walk(kind: Kind) -> None:
        if id(kind) in seen:
            return
        seen.add(id(kind))
        _right(kind)
        if isinstance(kind, Record):
            for f in kind.fields:
                walk(f.kind)
        elif isinstance(kind, MapOf):
            walk(kind.key)
            walk(kind.value)
        elif isinstance(kind, ListOf):
            walk(kind.item)

    walk(PROFILE)
    walk(BOARD)
