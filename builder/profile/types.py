"""The kinds of value a profile field can hold.

Each kind knows three things, so that one declared table (fields.py) drives everything:
how to check and normalise a value (with located messages), its JSON Schema, and how the
docs describe it.
"""

from __future__ import annotations

import ipaddress
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from builder.profile.errors import Diagnostics, Mark, did_you_mean
from builder.profile.yamlsource import mark_of_key


class _Invalid:
    def __repr__(self) -> str:
        return "INVALID"


INVALID: Any = _Invalid()
MISSING: Any = object()


@dataclass
class Reference:
    """A name that must exist in another section; resolved once the whole file is read."""

    section: str
    name: str
    mark: Mark
    path: str


@dataclass
class CheckContext:
    diag: Diagnostics
    refs: list[Reference] = field(default_factory=list)
    # Folders no overlay may be, hold or sit in (output, cache, keys); see overlayguard.
    guarded: list[str] = field(default_factory=list)

    def error(self, mark: Mark, path: str, message: str) -> Any:
        self.diag.add(mark, f"{path}: {message}" if path else message)
        return INVALID


def _type_name(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, str):
        return f'a string ("{value[:40]}")'
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


class Kind(ABC):
    """Base of every value kind."""

    @abstractmethod
    def check(self, value: Any, ctx: CheckContext, path: str, mark: Mark) -> Any:
        """The normalised value, or INVALID after adding a located diagnostic."""

    @abstractmethod
    def schema(self) -> dict[str, Any]:
        """This kind as JSON Schema."""

    @abstractmethod
    def describe(self) -> str:
        """What a right value looks like, for docs and messages."""

    def wrong(self, value: Any, ctx: CheckContext, path: str, mark: Mark) -> Any:
        return ctx.error(mark, path, f"expected {self.describe()}, got {_type_name(value)}")


@dataclass
class Str(Kind):
    pattern: str | None = None
    pattern_doc: str | None = None
    max_length: int = 4096

    def check(self, value: Any, ctx: CheckContext, path: str, mark: Mark) -> Any:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            return self.wrong(value, ctx, path, mark)
        text = str(value)
        if len(text) > self.max_length:
            return ctx.error(mark, path, f"longer than {self.max_length} characters")
        if self.pattern and not re.fullmatch(self.pattern, text):
            return ctx.error(mark, path, f'"{text[:60]}" is not {self.describe()}')
        return text

    def schema(self) -> dict[str, Any]:
        s: dict[str, Any] = {"type": "string", "maxLength": self.max_length}
        if self.pattern:
            s["pattern"] = f"^(?:{self.pattern})$"
        return s

    def describe(self) -> str:
        return self.pattern_doc or "a string"


NAME_PATTERN = r"[a-z][a-z0-9-]{0,62}"
NAME_DOC = "a name of lower-case letters, digits and '-', starting with a letter (a hostname label)"


def Name() -> Str:
    return Str(NAME_PATTERN, NAME_DOC, 63)


@dataclass
class Choice(Kind):
    values: Sequence[str]
    synonyms: dict[str, str] = field(default_factory=dict)

    def check(self, value: Any, ctx: CheckContext, path: str, mark: Mark) -> Any:
        if not isinstance(value, str):
            return self.wrong(value, ctx, path, mark)
        if value in self.values:
            return value
        if value in self.synonyms:
            return self.synonyms[value]
        allowed = [*self.values, *self.synonyms]
        return ctx.error(mark, path, f'"{value}" is not allowed{did_you_mean(value, allowed)}')

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "enum": [*self.values, *self.synonyms]}

    def describe(self) -> str:
        return "one of " + ", ".join(f"`{v}`" for v in [*self.values, *self.synonyms])


@dataclass
class Bool(Kind):
    def check(self, value: Any, ctx: CheckContext, path: str, mark: Mark) -> Any:
        if not isinstance(value, bool):
            return self.wrong(value, ctx, path, mark)
        return value

    def schema(self) -> dict[str, Any]:
        return {"type": "boolean"}

    def describe(self) -> str:
        return "true or false"


@dataclass
class Int(Kind):
    minimum: int | None = None
    maximum: int | None = None

    def check(self, value: Any, ctx: CheckContext, path: str, mark: Mark) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            return self.wrong(value, ctx, path, mark)
        if self.minimum is not None and value < self.minimum:
            return ctx.error(mark, path, f"{value} is below the minimum {self.minimum}")
        if self.maximum is not None and value > self.maximum:
            return ctx.error(mark, path, f"{value} is above the maximum {self.maximum}")
        return value

    def schema(self) -> dict[str, Any]:
        s: dict[str, Any] = {"type": "integer"}
        if self.minimum is not None:
            s["minimum"] = self.minimum
        if self.maximum is not None:
            s["maximum"] = self.maximum
        return s

    def describe(self) -> str:
        if self.minimum is not None and self.maximum is not None:
            return f"a whole number from {self.minimum} to {self.maximum}"
        return "a whole number"


SIZE_DOC = (
    "a size such as `8GiB`, `500G`, `1.5TB` or a number of bytes "
    "(K/M/G/T are powers of 1000, KiB/MiB/GiB/TiB of 1024)"
)
# Bounds far above any real disk or machine, far below what would overflow a tool on the way
# (sparse files, GPT, QEMU): a size beyond them is a slip, not a plan.
MAX_DISK = 256 * 1024**4
MAX_MEMORY = 16 * 1024**4
SIZE_PATTERN = r"[0-9]+(\.[0-9]+)?\s*([KMGTP]i?B?|B)?"


@dataclass
class Size(Kind):
    """A byte count; normalised to an integer number of bytes, at most ``maximum``."""

    maximum: int = MAX_DISK
    of_what: str = "disk"

    def check(self, value: Any, ctx: CheckContext, path: str, mark: Mark) -> Any:
        from core.units import UnitError, format_size, parse_size

        if isinstance(value, bool) or not isinstance(value, (str, int)):
            return self.wrong(value, ctx, path, mark)
        try:
            n = parse_size(value)
        except UnitError as e:
            return ctx.error(mark, path, f"{e} (K/M/G/T count in 1000s, KiB/MiB/GiB/TiB in 1024s)")
        if n > self.maximum:
            shown = str(value) if len(str(value)) <= 40 else f"{str(value)[:37]}..."
            return ctx.error(mark, path, f"{shown} is far beyond any real {self.of_what}; "
                                         f"at most {format_size(self.maximum, binary=True)}")
        return n

    def schema(self) -> dict[str, Any]:
        return {"anyOf": [{"type": "integer", "minimum": 0, "maximum": self.maximum},
                          {"type": "string", "pattern": f"^{SIZE_PATTERN}$"}]}

    def describe(self) -> str:
        return f"{SIZE_DOC}, at most {self.maximum // 1024**4} TiB"


@dataclass
class Compare(Kind):
    """A comparison against a count or a size, e.g. ``>=2`` or ``<=1TB``; kept as written."""

    sizes: bool = False

    def check(self, value: Any, ctx: CheckContext, path: str, mark: Mark) -> Any:
        from core.units import UnitError, parse_comparison

        if isinstance(value, bool) or not isinstance(value, (str, int)):
            return self.wrong(value, ctx, path, mark)
        try:
            parse_comparison(value, size=self.sizes)
        except UnitError as e:
            return ctx.error(mark, path, f"{e}; expected {self.describe()}")
        return value if isinstance(value, int) else str(value).strip()

    def schema(self) -> dict[str, Any]:
        unit = SIZE_PATTERN if self.sizes else r"[0-9]+"
        return {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": rf"^\s*(>=|<=|==|!=|>|<)?\s*{unit}\s*$"},
            ]
        }

    def describe(self) -> str:
        what = "a size" if self.sizes else "a count"
        example = "`>=1TB`, `<500G`" if self.sizes else "`>=2`, `==1`, `4`"
        return f"a comparison with {what}, such as {example} (a bare value means equal)"


@dataclass
class Cidr(Kind):
    """An IPv4/IPv6 network, or ``dhcp``."""

    def check(self, value: Any, ctx: CheckContext, path: str, mark: Mark) -> Any:
        if not isinstance(value, str):
            return self.wrong(value, ctx, path, mark)
        if value == "dhcp":
            return value
        try:
            return str(ipaddress.ip_network(value, strict=True))
        except ValueError as e:
            return ctx.error(mark, path, f"{e}; expected a network such as 10.42.0.0/24, or dhcp")

    def schema(self) -> dict[str, Any]:
        return {"type": "string"}

    def describe(self) -> str:
        return "a network such as `10.42.0.0/24`, or `dhcp`"


@dataclass
class IpAddress(Kind):
    """An IPv4/IPv6 address; with ``dhcp``, also the word ``dhcp`` (an address the LAN's DHCP
    server gives)."""

    dhcp: bool = False

    def check(self, value: Any, ctx: CheckContext, path: str, mark: Mark) -> Any:
        if not isinstance(value, str):
            return self.wrong(value, ctx, path, mark)
        if self.dhcp and value == "dhcp":
            return value
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            return ctx.error(mark, path, f'"{value}" is not {self.describe().replace("`", "")}')

    def schema(self) -> dict[str, Any]:
        return {"type": "string"}

    def describe(self) -> str:
        return "an IP address such as `10.42.0.11`" + (", or `dhcp`" if self.dhcp else "")


@dataclass
class Path(Kind):
    """A file or folder, relative to the file that names it; normalised to an absolute path."""

    must_exist: bool = True
    directory: bool | None = None

    def check(self, value: Any, ctx: CheckContext, path: str, mark: Mark) -> Any:
        if not isinstance(value, str) or not value or "\0" in value:  # no file name holds a NUL
            return self.wrong(value, ctx, path, mark)
        base = os.path.dirname(os.path.abspath(mark.file)) if mark.file else os.getcwd()
        full = os.path.normpath(os.path.join(base, os.path.expanduser(value)))
        if self.must_exist:
            if not os.path.exists(full):
                return ctx.error(mark, path, f'"{value}" does not exist (looked for {full})')
            if self.directory is True and not os.path.isdir(full):
                return ctx.error(mark, path, f'"{value}" is not a folder')
            if self.directory is False and not os.path.isfile(full):
                return ctx.error(mark, path, f'"{value}" is not a file')
        return full

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "minLength": 1}

    def describe(self) -> str:
        what = {True: "a folder", False: "a file", None: "a file or folder"}[self.directory]
        return f"{what}, relative to the profile file that names it"


@dataclass
class OverlayFolder(Path):
    """A folder whose whole tree is copied into images: never the build machine's own system,
    secrets, output or cache, and holding only files, folders and links."""

    directory: bool | None = True

    def check(self, value: Any, ctx: CheckContext, path: str, mark: Mark) -> Any:
        from builder.profile.overlayguard import refusal

        full = super().check(value, ctx, path, mark)
        if full is INVALID:
            return full
        why = refusal(full, ctx.guarded)
        return ctx.error(mark, path, why) if why else full

    def describe(self) -> str:
        return "a folder of files for the image, relative to the profile file that names it (not `/`, " \
               "a system folder, your home, the build's output or cache; no devices, sockets or FIFOs)"


@dataclass
class Ref(Kind):
    """The name of an entry of another section (a role, an OS, a host, a board)."""

    section: str

    def check(self, value: Any, ctx: CheckContext, path: str, mark: Mark) -> Any:
        if not isinstance(value, str):
            return self.wrong(value, ctx, path, mark)
        ctx.refs.append(Reference(self.section, value, mark, path))
        return value

    def schema(self) -> dict[str, Any]:
        return {"type": "string"}

    def describe(self) -> str:
        return f"the name of one of the profile's {self.section}"


@dataclass
class ListOf(Kind):
    item: Kind
    single_ok: bool = False  # a lone item stands for a list of one
    unique: bool = False
    min_items: int = 0
    max_items: int | None = None

    def check(self, value: Any, ctx: CheckContext, path: str, mark: Mark) -> Any:
        if not isinstance(value, list):
            if self.single_ok and value is not None and not isinstance(value, dict):
                value = [value]
            else:
                return self.wrong(value, ctx, path, mark)
        if len(value) < self.min_items:
            return ctx.error(mark, path, f"needs at least {self.min_items} item(s)")
        if self.max_items is not None and len(value) > self.max_items:
            return ctx.error(mark, path, f"holds {len(value)} items; at most {self.max_items} are allowed")
        out = []
        seen: dict[Any, int] = {}
        for i, item in enumerate(value):
            imark = mark_of_key(value, i, mark)
            checked = self.item.check(item, ctx, f"{path}[{i}]", imark)
            if self.unique and checked is not INVALID and isinstance(checked, (str, int)):
                if checked in seen:
                    ctx.error(imark, f"{path}[{i}]", f'"{checked}" is listed twice (first as item {seen[checked]})')
                seen[checked] = i
            out.append(checked)
        return out

    def schema(self) -> dict[str, Any]:
        s: dict[str, Any] = {"type": "array", "items": self.item.schema()}
        if self.min_items:
            s["minItems"] = self.min_items
        if self.max_items is not None:
            s["maxItems"] = self.max_items
        if self.unique:
            s["uniqueItems"] = True
        if self.single_ok:
            return {"anyOf": [self.item.schema(), s]}
        return s

    def describe(self) -> str:
        lone = " (or a single one)" if self.single_ok else ""
        return f"a list, each {self.item.describe()}{lone}"


@dataclass
class MapOf(Kind):
    """Named entries: keys are names, every value of one kind."""

    value: Kind
    key: Str = field(default_factory=Name)
    what: str = "entry"

    def check(self, value: Any, ctx: CheckContext, path: str, mark: Mark) -> Any:
        if not isinstance(value, dict):
            return self.wrong(value, ctx, path, mark)
        out: dict[str, Any] = {}
        for k, v in value.items():
            kmark = mark_of_key(value, k, mark)
            sub = f"{path}.{k}" if path else str(k)
            if self.key.check(k, ctx, f"{path}: {self.what} name" if path else self.what, kmark) is INVALID:
                continue
            out[k] = self.value.check(v, ctx, sub, kmark)
        return out

    def schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "propertyNames": self.key.schema(),
            "additionalProperties": self.value.schema(),
        }

    def describe(self) -> str:
        return f"a mapping of {self.what} names to {self.value.describe()}"


@dataclass
class Field:
    """One key of a record: its kind, its meaning, its default, and when it applies."""

    name: str
    kind: Kind
    doc: str
    default: Any = MISSING  # a value, or a callable(record) -> value for derived defaults
    required: bool = False
    only_when: tuple[str, tuple[str, ...]] | None = None  # (discriminator field, values it applies to)
    example: Any = None

    def default_for(self, record: dict[str, Any]) -> Any:
        if callable(self.default):
            return self.default(record)
        if isinstance(self.default, (list, dict)):
            return type(self.default)(self.default)
        return self.default


@dataclass
class Record(Kind):
    """A mapping with fixed, declared keys."""

    title: str
    fields: list[Field]
    doc: str = ""
    # A check across the record's own keys: (checked keys, context, path, the raw record, its mark).
    check_hook: Callable[[dict[str, Any], CheckContext, str, Any, Mark], None] | None = None

    def __post_init__(self) -> None:
        self.by_name = {f.name: f for f in self.fields}

    def check(self, value: Any, ctx: CheckContext, path: str, mark: Mark) -> Any:
        if not isinstance(value, dict):
            return self.wrong(value, ctx, path, mark)
        vmark = getattr(value, "mark", mark)
        out: dict[str, Any] = {}
        for k, v in value.items():
            kmark = mark_of_key(value, k, vmark)
            f = self.by_name.get(k)
            if f is None:
                where = f"{path}: " if path else ""
                ctx.diag.add(kmark, f'{where}unknown key "{k}"{did_you_mean(k, self.by_name)}')
                continue
            if v is None:  # null resets a field to its default (the merge rule of the spec)
                continue
            out[k] = f.kind.check(v, ctx, f"{path}.{k}" if path else k, kmark)
        for f in self.fields:
            if f.only_when and f.name in out:
                disc, allowed = f.only_when
                actual = out.get(disc, self.by_name[disc].default_for(out))
                if actual not in allowed:
                    ctx.error(
                        mark_of_key(value, f.name, vmark),
                        f"{path}.{f.name}" if path else f.name,
                        f"applies only when {disc} is {' or '.join(allowed)} (here it is {actual})",
                    )
        for f in self.fields:
            if f.name in out:
                continue
            if f.required:
                ctx.error(vmark, path, f'missing "{f.name}": {f.doc}')
                continue
            if f.only_when:
                disc, allowed = f.only_when
                if out.get(disc, self.by_name[disc].default_for(out)) not in allowed:
                    continue
            if f.default is not MISSING:
                out[f.name] = f.default_for(out)
        out = {f.name: out[f.name] for f in self.fields if f.name in out}  # table order: stable output
        if self.check_hook is not None:
            self.check_hook(out, ctx, path, value, vmark)
        return out

    def schema(self) -> dict[str, Any]:
        props: dict[str, Any] = {}
        for f in self.fields:
            s = dict(f.kind.schema())
            s["description"] = f.doc
            if f.default is not MISSING and not callable(f.default):
                s["default"] = f.default
            props[f.name] = s
        out: dict[str, Any] = {
            "type": "object",
            "title": self.title,
            "properties": props,
            "additionalProperties": False,
        }
        required = [f.name for f in self.fields if f.required]
        # A record that extends or includes others may get its required keys from them.
        composer = next((f.name for f in self.fields if f.name in ("extends", "include")), None)
        if required and composer:
            out["if"] = {"not": {"required": [composer]}}
            out["then"] = {"required": required}
        elif required:
            out["required"] = required
        if self.doc:
            out["description"] = self.doc
        return out

    def describe(self) -> str:
        return f"a mapping ({self.title})"
