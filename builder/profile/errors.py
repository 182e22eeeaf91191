"""Located diagnostics: every mistake in a profile or board file is ``FILE:LINE:COLUMN: message``.

Validation collects all of a file's mistakes before reporting, so a user fixes them in one pass.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple


class Mark(NamedTuple):
    """A place in a source file (1-based line and column, as editors count).

    A named tuple, not a dataclass: a large profile makes millions of them.
    """

    file: str
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        if self.line:
            return f"{self.file}:{self.line}:{self.column}"
        return self.file


@dataclass(frozen=True, order=True)
class Diagnostic:
    mark: Mark
    message: str

    def __str__(self) -> str:
        return f"{self.mark}: {self.message}"


@dataclass
class Diagnostics:
    """An ordered, de-duplicated collection of diagnostics."""

    items: list[Diagnostic] = field(default_factory=list)
    _seen: set[Diagnostic] = field(default_factory=set, repr=False)

    def add(self, mark: Mark, message: str) -> None:
        # One diagnostic, one line: names quoted from the file may hold control characters.
        if not message.isprintable():
            message = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
        d = Diagnostic(mark, message)
        if d not in self._seen:
            self._seen.add(d)
            self.items.append(d)

    def extend(self, other: Iterable[Diagnostic]) -> None:
        for d in other:
            self.add(d.mark, d.message)

    def __bool__(self) -> bool:
        return bool(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def sorted(self) -> list[Diagnostic]:
        return sorted(self.items)


class ProfileInvalid(Exception):
    """Raised with every diagnostic found; the CLI prints them and exits 2."""

    def __init__(self, diagnostics: Iterable[Diagnostic]):
        self.diagnostics = sorted(diagnostics)
        super().__init__("\n".join(str(d) for d in self.diagnostics))


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean "x"?)' when a close match exists, else a list of what is allowed."""
    pool = sorted({str(c) for c in choices})
    close = difflib.get_close_matches(str(word), pool, n=1, cutoff=0.6)
    if close:
        return f' (did you mean "{close[0]}"?)'
    if not pool:
        return ""
    if len(pool) <= 12:
        return " (expected one of: " + ", ".join(pool) + ")"
    return " (expected one of: " + ", ".join(pool[:12]) + ", …)"
