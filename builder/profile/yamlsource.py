"""Safe YAML reading with source positions, built from the parser's events.

PyYAML's loaders keep the last of duplicate keys silently, recurse on deep nesting, expand
alias bombs and construct objects from tags. This reader builds plain data (dicts, lists,
scalars) from libyaml's event stream iteratively, so it can refuse each of those with a
located message, and it remembers where every mapping key and list item came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import ScalarNode
from yaml.resolver import Resolver

from builder.profile.errors import Diagnostics, Mark

MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_DEPTH = 64
# Aliases may add at most this many nodes beyond the document's own: enough for honest
# reuse of a few stanzas, far too few for a "billion laughs" document.
ALIAS_NODE_ALLOWANCE = 100_000

_PLAIN_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:timestamp",
    "tag:yaml.org,2002:map",
    "tag:yaml.org,2002:seq",
}

try:  # libyaml's parser is ~10x faster; fall back to the pure-Python one where it is absent.
    _Loader: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    _Loader = yaml.SafeLoader


class MMap(dict):
    """A mapping that remembers where it and each of its keys were written."""

    __slots__ = ("key_marks", "mark")

    def __init__(self, mark: Mark, *args: Any):
        super().__init__(*args)
        self.mark = mark
        self.key_marks: dict[str, Mark] = {}


class MSeq(list):
    """A sequence that remembers where it and each of its items were written."""

    __slots__ = ("item_marks", "mark")

    def __init__(self, mark: Mark, *args: Any):
        super().__init__(*args)
        self.mark = mark
        self.item_marks: list[Mark] = []


def mark_of_key(container: Any, key: Any, fallback: Mark) -> Mark:
    """Where ``container[key]`` was written, as well as is known."""
    if type(container) is MMap:  # the hot path: every key of a large profile comes here
        return container.key_marks.get(key, container.mark)
    if isinstance(container, MSeq) and isinstance(key, int) and 0 <= key < len(container.item_marks):
        return container.item_marks[key]
    return getattr(container, "mark", fallback)


class YamlRefused(Exception):
    """The document cannot be read safely; the diagnostics say why and where."""


@dataclass(slots=True)
class _Frame:
    value: Any  # MMap | MSeq
    anchor: str | None
    is_map: bool
    nodes: int = 1
    pending_key: str | None = None
    pending_key_mark: Mark | None = None


class _Builder:
    def __init__(self, filename: str, diagnostics: Diagnostics):
        self.filename = filename
        self.diag = diagnostics
        self.resolver = Resolver()
        self.implicit_firsts = {c for c in self.resolver.yaml_implicit_resolvers if c is not None}
        self.constructor = SafeConstructor()
        self.anchors: dict[str, tuple[Any, int]] = {}
        self.own_nodes = 0
        self.alias_nodes = 0

    def mark(self, ev: yaml.Event) -> Mark:
        m = ev.start_mark
        return Mark(self.filename, m.line + 1, m.column + 1)

    def refuse(self, ev: yaml.Event, message: str) -> YamlRefused:
        self.diag.add(self.mark(ev), message)
        return YamlRefused(message)

    def check_tag(self, ev: Any) -> None:
        tag = getattr(ev, "tag", None)
        if tag is None or tag == "!":
            return
        if tag not in _PLAIN_TAGS:
            raise self.refuse(ev, f"YAML tag {tag!r} is not allowed: a profile holds plain data only")

    def scalar(self, ev: yaml.ScalarEvent) -> Any:
        value = ev.value
        if ev.tag is None and ev.implicit[0] and value and value[0] not in self.implicit_firsts:
            return value  # plain text that no implicit type claims: skip the resolver's regexes
        self.check_tag(ev)
        tag = ev.tag if ev.tag not in (None, "!") else self.resolver.resolve(ScalarNode, value, ev.implicit)
        if tag in ("tag:yaml.org,2002:str", "tag:yaml.org,2002:timestamp"):
            return ev.value  # dates stay text: nothing in a profile is a date
        ctor = self.constructor.yaml_constructors.get(tag)
        if ctor is None:
            return ev.value
        try:
            return ctor(self.constructor, ScalarNode(tag, ev.value))
        except (ValueError, yaml.YAMLError):
            return ev.value

    def build(self, events: Any) -> Any:
        # Hot loop: a 200,000-host profile is millions of events, so dispatch on exact types
        # with the most frequent (scalars) first, and make marks only where they are kept.
        stack: list[_Frame] = []
        root: Any = None
        have_root = False
        filename = self.filename
        for ev in events:
            t = type(ev)
            if t is yaml.ScalarEvent:
                self.own_nodes += 1
                parent = stack[-1] if stack else None
                if parent is not None and parent.is_map and parent.pending_key is None:
                    key = ev.value
                    if ev.tag is not None:
                        self.check_tag(ev)
                    m = ev.start_mark
                    kmark = Mark(filename, m.line + 1, m.column + 1)
                    if key == "<<":
                        raise self.refuse(ev, "YAML merge keys (<<) are not supported: use 'extends' or 'include'")
                    if key in parent.value:
                        first = parent.value.key_marks[key]
                        self.diag.add(kmark, f'duplicate key "{key}" (first at line {first.line}); '
                                      "YAML would silently keep only the last one")
                    parent.pending_key, parent.pending_key_mark = key, kmark
                    continue
                value, nodes = self.scalar(ev), 1
                if ev.anchor is not None:
                    self.anchors[ev.anchor] = (value, 1)
            elif t is yaml.MappingStartEvent or t is yaml.SequenceStartEvent:
                if ev.tag is not None:
                    self.check_tag(ev)
                if len(stack) >= MAX_DEPTH:
                    raise self.refuse(ev, f"nesting deeper than {MAX_DEPTH} levels")
                if stack and stack[-1].is_map and stack[-1].pending_key is None:
                    raise self.refuse(ev, "a mapping key must be a plain scalar, not a list or mapping")
                self.own_nodes += 1
                is_map = t is yaml.MappingStartEvent
                container: MMap | MSeq = MMap(self.mark(ev)) if is_map else MSeq(self.mark(ev))
                stack.append(_Frame(container, ev.anchor, is_map))
                continue
            elif t is yaml.MappingEndEvent or t is yaml.SequenceEndEvent:
                frame = stack.pop()
                if frame.anchor is not None:
                    self.anchors[frame.anchor] = (frame.value, frame.nodes)
                value, nodes = frame.value, frame.nodes
            elif t is yaml.AliasEvent:
                if ev.anchor not in self.anchors:
                    raise self.refuse(ev, f"alias *{ev.anchor} refers to no finished anchor")
                value, nodes = self.anchors[ev.anchor]
                self.alias_nodes += nodes
                if self.alias_nodes > self.own_nodes + ALIAS_NODE_ALLOWANCE:
                    raise self.refuse(
                        ev, "aliases expand to far more data than the file holds (an alias bomb?); refused"
                    )
            elif t is yaml.DocumentStartEvent:
                if have_root:
                    raise self.refuse(ev, "a profile is one YAML document; found a second one (---)")
                continue
            else:  # stream start/end, document end
                continue

            if not stack:
                root, have_root = value, True
                continue
            parent = stack[-1]
            parent.nodes += nodes
            if parent.is_map:
                key = parent.pending_key
                parent.value[key] = value
                parent.value.key_marks[key] = parent.pending_key_mark
                parent.pending_key = None
            else:
                parent.value.append(value)
                parent.value.item_marks.append(self.mark(ev))
        return root


def read_text(path: str, diagnostics: Diagnostics) -> str | None:
    """A profile file's text, or None (with a diagnostic) when it is not readable text."""
    mark = Mark(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        diagnostics.add(mark, "no such file")
        return None
    except IsADirectoryError:
        diagnostics.add(mark, "is a directory, not a YAML file")
        return None
    except OSError as e:
        diagnostics.add(mark, f"cannot read: {e.strerror}")
        return None
    if len(data) > MAX_FILE_BYTES:
        diagnostics.add(mark, f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB; refusing to read it")
        return None
    if b"\0" in data:
        diagnostics.add(Mark(path, 1, 1), "binary data (NUL bytes), not a YAML text file")
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        diagnostics.add(Mark(path, line, column), "not UTF-8 text; save the file as UTF-8")
        return None


def parse_yaml(text: str, filename: str, diagnostics: Diagnostics) -> Any:
    """Plain data with marks, or None when the text is refused (diagnostics say why)."""
    builder = _Builder(filename, diagnostics)
    loader = _Loader(text)

    def events() -> Any:
        get = loader.get_event
        while True:
            ev = get()
            yield ev
            if type(ev) is yaml.StreamEndEvent:
                return

    try:
        return builder.build(events())
    except YamlRefused:
        return None
    except yaml.MarkedYAMLError as e:
        m = e.problem_mark or e.context_mark
        where = Mark(filename, m.line + 1, m.column + 1) if m else Mark(filename)
        problem = e.problem or e.context or "not valid YAML"
        ctx = f" ({e.context})" if e.context and e.problem else ""
        diagnostics.add(where, f"YAML syntax: {problem}{ctx}")
        return None
    except yaml.YAMLError as e:
        diagnostics.add(Mark(filename), f"YAML: {e}")
        return None
    finally:
        loader.dispose()


def load_yaml_file(path: str, diagnostics: Diagnostics) -> Any:
    text = read_text(path, diagnostics)
    if text is None:
        return None
    if not text.strip():  # whitespace only (tabs too, which YAML would call a syntax error): empty
        return None
    return parse_yaml(text, path, diagnostics)
