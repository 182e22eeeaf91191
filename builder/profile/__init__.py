"""The cluster profile: load (with includes and extends), check against the field table, resolve.

``load_profile(path)`` returns a :class:`Profile` whose ``data`` is the resolved profile (plain
dicts and lists, every default filled) and whose ``model`` is the same as the typed
:class:`core.model.Profile`, or raises :class:`ProfileInvalid` with every mistake found, each
located as FILE:LINE:COLUMN.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from builder.profile.compose import load_composed, resolve_extends
from builder.profile.errors import Diagnostic, Diagnostics, Mark, ProfileInvalid
from builder.profile.fields import BOARD, PROFILE
from builder.profile.types import INVALID, CheckContext
from builder.profile.validate import check_whole
from builder.profile.yamlsource import load_yaml_file
from core import model as core_model

__all__ = [
    "BOARDS_DIR",
    "Diagnostic",
    "Profile",
    "ProfileInvalid",
    "board_names",
    "load_board",
    "load_profile",
]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BOARDS_DIR = PROJECT_ROOT / "testdriver" / "boards"


@dataclass
class Profile:
    path: str
    data: dict[str, Any]
    sources: list[str] = field(default_factory=list)  # every file read, for cache keys

    @property
    def name(self) -> str:
        return str(self.data["cluster"]["name"])

    @cached_property
    def model(self) -> core_model.Profile:
        """The resolved profile as the typed model (core.model), made once, on first use."""
        return core_model.Profile.from_json(self.data)


def board_names(boards_dir: Path = BOARDS_DIR) -> set[str]:
    return {p.stem for p in boards_dir.glob("*.yaml")}


def load_profile(path: str | os.PathLike[str], boards_dir: Path = BOARDS_DIR) -> Profile:
    # A large profile allocates millions of small objects and no cycles; the cyclic GC would
    # rescan them all again and again (half the run time at 200,000 hosts).
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _load_profile(os.fspath(path), boards_dir)
    finally:
        if was_enabled:
            gc.enable()


def _load_profile(path: str, boards_dir: Path) -> Profile:
    diag = Diagnostics()
    sources: list[str] = []
    raw = load_composed(path, diag, read=sources)
    if raw is None:
        raise ProfileInvalid(diag.items)
    for section in ("roles", "hosts"):
        if isinstance(raw.get(section), dict):
            raw[section] = resolve_extends(raw[section], section, diag)
    ctx = CheckContext(diag)
    data = PROFILE.check(raw, ctx, "", Mark(path, 1, 1))
    if data is INVALID:
        raise ProfileInvalid(diag.items)
    data.pop("include", None)  # merged already; the resolved form has no includes
    check_whole(ctx, raw, data, board_names(boards_dir), Mark(path, 1, 1))
    if diag:
        raise ProfileInvalid(diag.items)
    return Profile(path=path, data=data, sources=sorted(set(sources)))


def load_board(name_or_path: str | os.PathLike[str], boards_dir: Path = BOARDS_DIR) -> dict[str, Any]:
    """A board definition, checked against the board table, defaults filled."""
    text = os.fspath(name_or_path)
    path = text if text.endswith((".yaml", ".yml")) or os.sep in text else str(boards_dir / f"{text}.yaml")
    diag = Diagnostics()
    raw = load_yaml_file(path, diag)
    if raw is None:
        raise ProfileInvalid(diag.items)
    ctx = CheckContext(diag)
    data = BOARD.check(raw, ctx, "", Mark(path, 1, 1))
    if diag or data is INVALID:
        raise ProfileInvalid(diag.items)
    data["name"] = Path(path).stem
    return data
