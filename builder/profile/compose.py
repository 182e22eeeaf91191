"""Composition: ``include`` (ordered, per file) and ``extends`` (roles and hosts).

Merge rules of the spec: maps merge key by key, lists append, a scalar replaces, and
``null`` resets a key to its default. Source marks travel with the merged values, so an
error in an included file still points into that file.
"""

from __future__ import annotations

import os
from typing import Any

from builder.profile.errors import Diagnostics, Mark, did_you_mean
from builder.profile.yamlsource import MMap, MSeq, load_yaml_file, mark_of_key

MAX_INCLUDE_DEPTH = 16
MAX_EXTENDS_DEPTH = 32


def merge(base: Any, over: Any) -> Any:
    """``over`` laid on ``base`` by the spec's rules; neither input is changed."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = MMap(getattr(over, "mark", getattr(base, "mark", Mark(""))))
        out.update(base)
        out.key_marks.update(getattr(base, "key_marks", {}))
        for k, v in over.items():
            out[k] = merge(out[k], v) if k in out and v is not None else v
            km = getattr(over, "key_marks", {}).get(k)
            if km is not None:
                out.key_marks[k] = km
        return out
    if isinstance(base, list) and isinstance(over, list):
        out_list = MSeq(getattr(over, "mark", getattr(base, "mark", Mark(""))))
        out_list.extend(base)
        out_list.extend(over)
        out_list.item_marks.extend(_item_marks(base))
        out_list.item_marks.extend(_item_marks(over))
        return out_list
    return over


def _item_marks(seq: list[Any]) -> list[Mark]:
    marks = getattr(seq, "item_marks", None)
    if marks is not None and len(marks) == len(seq):
        return list(marks)
    fallback = getattr(seq, "mark", Mark(""))
    return [fallback] * len(seq)


def load_composed(path: str, diag: Diagnostics, chain: tuple[str, ...] = (), read: list[str] | None = None) -> Any:
    """A profile file with its includes merged in (includes first, in order, then the file).

    Every file read is appended to ``read`` (for cache keys).
    """
    real = os.path.realpath(path)
    if read is not None:
        read.append(os.path.abspath(path))
    data = load_yaml_file(path, diag)
    if data is None:
        return None
    if not isinstance(data, dict):
        diag.add(getattr(data, "mark", Mark(path, 1, 1)), "a profile must be a mapping of sections "
                 "(cluster, oses, roles, hosts, images)")
        return None
    includes = data.get("include")
    if includes is None:
        return data
    own = MMap(data.mark)
    for k, v in data.items():
        if k != "include":
            own[k] = v
            own.key_marks[k] = data.key_marks[k]
    inc_mark = data.key_marks["include"]
    if isinstance(includes, str):
        includes = MSeq(inc_mark, [includes])
        includes.item_marks.append(inc_mark)
    if not isinstance(includes, list):
        diag.add(inc_mark, "include: expected a list of profile files, relative to this file")
        return own
    result: Any = MMap(data.mark)
    for i, inc in enumerate(includes):
        imark = mark_of_key(includes, i, inc_mark)
        if not isinstance(inc, str) or not inc or "\0" in inc:
            diag.add(imark, f"include[{i}]: expected a file name, relative to this file")
            continue
        target = os.path.normpath(os.path.join(os.path.dirname(path), inc))
        target_real = os.path.realpath(target)
        if target_real in (*chain, real):
            names = [os.path.basename(p) for p in (*chain, real, target_real)]
            diag.add(imark, f"include cycle: {' → '.join(names)}")
            continue
        if len(chain) >= MAX_INCLUDE_DEPTH:
            diag.add(imark, f"includes nest deeper than {MAX_INCLUDE_DEPTH} files")
            continue
        if not os.path.isfile(target):
            diag.add(imark, f'include[{i}]: "{inc}" does not exist (looked for {target})')
            continue
        sub = load_composed(target, diag, (*chain, real), read)
        if sub is not None:
            result = merge(result, sub)
    return merge(result, own)


def resolve_extends(section: dict[str, Any] | None, section_name: str, diag: Diagnostics) -> Any:
    """Each entry of ``section`` with its ``extends`` chain merged in, parents first."""
    if not isinstance(section, dict):
        return section
    resolved: dict[str, Any] = {}
    done: set[str] = set()

    def resolve(name: str, stack: tuple[str, ...]) -> Any:
        if name in done:
            return resolved[name]
        entry = section[name]
        if not isinstance(entry, dict) or "extends" not in entry:
            resolved[name] = entry
            done.add(name)
            return entry
        parent = entry["extends"]
        pmark = mark_of_key(entry, "extends", getattr(entry, "mark", Mark("")))
        own = MMap(getattr(entry, "mark", pmark))
        for k, v in entry.items():
            if k != "extends":
                own[k] = v
                own.key_marks[k] = mark_of_key(entry, k, own.mark)
        value: Any = own
        if not isinstance(parent, str):
            diag.add(pmark, f"{section_name}.{name}.extends: expected the name of another entry of {section_name}")
        elif parent not in section:
            diag.add(pmark, f'{section_name}.{name}.extends: no {section_name[:-1]} "{parent}"'
                     f"{did_you_mean(parent, section)}")
        elif len(stack) >= MAX_EXTENDS_DEPTH:
            diag.add(pmark, f"{section_name}.{name}.extends: chain longer than {MAX_EXTENDS_DEPTH}")
        elif parent in stack or parent == name:
            diag.add(pmark, f"{section_name}.{name}.extends: cycle {' → '.join((*stack, name, parent))}")
        else:
            value = merge(resolve(parent, (*stack, name)), own)
        resolved[name] = value
        done.add(name)
        return value

    out = MMap(getattr(section, "mark", Mark("")))
    for name in section:
        out[name] = resolve(name, ())
        out.key_marks[name] = mark_of_key(section, name, out.mark)
    return out
