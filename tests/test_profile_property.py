"""Property: any mutation of a valid profile either validates or fails with located messages, exit 2.

Never a traceback, never an unlocated message, whatever the mutation does to the tree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_profile_shapes import check_document

ROOT = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((ROOT / "profiles" / "dual-nano-itx.yaml").read_text())

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 10**12), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12), st.sampled_from(["8GiB", ">=2", "bookworm", "left", "nano-itx", "stable", "10.0.0.0/8"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(min_size=1, max_size=8), inner, max_size=3)), max_leaves=8)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated_profiles(draw: st.DrawFn) -> Any:
    data = yaml.safe_load(yaml.safe_dump(BASE))
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(data) if p]
        path = draw(st.sampled_from(paths))
        parent = data
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1]
        op = draw(st.sampled_from(["delete", "replace", "rename", "add"]))
        if op == "delete":
            del parent[last]
        elif op == "replace":
            parent[last] = draw(values)
        elif op == "rename" and isinstance(parent, dict):
            parent[str(last) + draw(st.text(min_size=1, max_size=2))] = parent.pop(last)
        elif op == "add" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=10))] = draw(values)
    return data


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_profiles())
def test_mutations_validate_or_fail_located(data: Any) -> None:
    check_document(data, lambda p: ["validate", p])
