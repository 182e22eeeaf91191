"""The cluster profile: load (with includes and extends), check against the field table, resolve.

``load_profile(path)`` returns a :class:`Profile` whose ``data`` is the resolved profile (plain
dicts and lists, every default filled) and whose ``model`` is the same as the typed
:class:`core.model.Profile`, or raises :class:`ProfileInvalid` with every mistake found, each
located as FILE:LINE:COLUMN.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from builder.profile.compose import load_composed, resolve_extends
from builder.profile.errors import Diagnostic, Diagnostics, Mark, ProfileInvalid
from builder.profile.fields import BOARD, PROFILE
from builder.profile.overlayguard import guarded_folders
from builder.profile.types import INVALID, CheckContext, Record
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


def load_profile(path: str | os.PathLike[str], boards_dir: Path = BOARDS_DIR,
                 guarded: Sequence[str | os.PathLike[str]] = ()) -> Profile:
    """``guarded``: folders no overlay may be, hold or sit in (a build's output, cache, CA), beside
    the system's own and the home folder's private ones (builder.profile.overlayguard)."""
    # A large profile allocates millions of small objects and no cycles; the cyclic GC would
    # rescan them all again and again (half the run time at 200,000 hosts).
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _load_profile(os.fspath(path), boards_dir, guarded_folders(guarded))
    finally:
        if was_enabled:
            gc.enable()


def _load_profile(path: str, boards_dir: Path, guarded: list[str]) -> Profile:
    diag = Diagnostics()
    sources: list[str] = []
    raw = load_composed(path, diag, read=sources)
    if raw is None:
        if not diag:
            diag.add(Mark(path, 1, 1), empty_file(PROFILE, "a profile", "profiles/ has examples"))
        raise ProfileInvalid(diag.items)
    for section in ("roles", "hosts"):
        if isinstance(raw.get(section), dict):
            raw[section] = resolve_extends(raw[section], section, diag)
    ctx = CheckContext(diag, guarded=guarded)
    data = PROFILE.check(raw, ctx, "", Mark(path, 1, 1))
    if data is INVALID:
        raise ProfileInvalid(diag.items)
    data.pop("include", None)  # merged already; the resolved form has no includes
    shipped = board_names(boards_dir)
    board_files(ctx, data, path, shipped, sources)
    own = set(data["boards"]) if isinstance(data.get("boards"), dict) else set()
    check_whole(ctx, raw, data, shipped | own, Mark(path, 1, 1))
    if diag:
        raise ProfileInvalid(diag.items)
    return Profile(path=path, data=data, sources=sorted(set(sources)))


def empty_file(record: Record, what: str, hint: str) -> str:
    """The message for a file with nothing in it (or only comments), from the table's required keys."""
    keys = [f.name for f in record.fields if f.required]
    need = ", ".join(keys[:-1]) + f" and {keys[-1]}" if len(keys) > 1 else keys[0]
    return f"the file is empty (or holds only comments): {what} is a mapping that needs at least {need} " \
           f"(clusterctl docs describes every key; {hint})"


def is_board_file(name: str) -> bool:
    return name.endswith((".yaml", ".yml"))


def board_files(ctx: CheckContext, data: dict[str, Any], profile_path: str, shipped: set[str],
                sources: list[str]) -> None:
    """Hosts that name a board file beside the profile: each file is checked like a shipped board
    (its mistakes located in it) and joins the profile's ``boards`` under its file name, which the
    host then names: the resolved profile alone holds every machine shape it uses."""
    hosts, boards = data.get("hosts"), data.get("boards")
    if not isinstance(hosts, dict) or not isinstance(boards, dict):
        return
    base = Path(profile_path).parent
    renamed: dict[str, str] = {}
    failed: set[str] = set()  # said once, at the file or the host; not again as an unknown name
    for ref in ctx.refs:
        if ref.section != "boards" or not is_board_file(ref.name) or ref.name in failed:
            continue
        if ref.name not in renamed:
            failed.add(ref.name)
            file = base / ref.name
            name = Path(ref.name).stem
            if not file.is_file():
                ctx.error(ref.mark, ref.path, f"no board file {file} (a path is read from the profile's folder)")
                continue
            try:
                board = load_board(file)
            except ProfileInvalid as e:
                ctx.diag.items.extend(e.diagnostics)
                continue
            board.pop("name", None)
            if name in shipped or (name in boards and boards[name] != board):
                ctx.error(ref.mark, ref.path, f'the board file {ref.name} is named like the board "{name}" '
                          f"{'of testdriver/boards/' if name in shipped else 'of this profile'}: rename the file")
                continue
            boards[name] = board
            sources.append(str(file))
            renamed[ref.name] = name
            failed.discard(ref.name)
        host = ref.path.split(".")[1]
        if isinstance(hosts.get(host), dict):
            hosts[host]["board"] = renamed[ref.name]
        ref.name = renamed[ref.name]
    ctx.refs = [r for r in ctx.refs if not (r.section == "boards" and r.name in failed)]


def load_board(name_or_path: str | os.PathLike[str], boards_dir: Path = BOARDS_DIR) -> dict[str, Any]:
    """A board definition, checked against the board table, defaults filled."""
    text = os.fspath(name_or_path)
    path = text if text.endswith((".yaml", ".yml")) or os.sep in text else str(boards_dir / f"{text}.yaml")
    diag = Diagnostics()
    raw = load_yaml_file(path, diag)
    if raw is None:
        if not diag:
            diag.add(Mark(path, 1, 1), empty_file(BOARD, "a board", "clusterctl inventory --board prints one"))
        raise ProfileInvalid(diag.items)
    ctx = CheckContext(diag)
    data = BOARD.check(raw, ctx, "", Mark(path, 1, 1))
    if diag or data is INVALID:
        raise ProfileInvalid(diag.items)
    data["name"] = Path(path).stem
    return data
