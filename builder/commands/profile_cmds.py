"""``clusterctl validate``, ``plan``, ``schema`` and ``docs``: reading a profile, before any build."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from builder.profile import Profile, ProfileInvalid, load_board, load_profile
from core import exitcodes


def report_invalid(err: ProfileInvalid, as_json: bool = False) -> int:
    if as_json:
        out = [{"file": d.mark.file, "line": d.mark.line, "column": d.mark.column, "message": d.message}
               for d in err.diagnostics]
        print(json.dumps({"valid": False, "errors": out}, indent=2))
        return exitcodes.USAGE
    for d in err.diagnostics:
        print(d, file=sys.stderr)
    n = len(err.diagnostics)
    print(f"clusterctl: {n} error{'s' if n != 1 else ''}; nothing was built", file=sys.stderr)
    return exitcodes.USAGE


def build_folders(args: argparse.Namespace) -> list[str]:
    """The folders a build with these options writes or reads secrets from (its output, its
    stage cache, a CA folder named outside the default config folder): no overlay may touch them."""
    from builder.cache import DEFAULT_DIR
    from builder.secrets import named_ca_dir

    out = [getattr(args, "out", None) or "images", getattr(args, "cache_dir", None) or str(DEFAULT_DIR)]
    ca = named_ca_dir(getattr(args, "ca_dir", None))
    return out + ([str(ca)] if ca else [])


def load_or_report(path: str, as_json: bool = False, guarded: Sequence[str] = ()) -> Profile | int:
    """The profile, or the exit status after reporting why it could not be loaded. ``guarded``:
    folders no overlay may be, hold or sit in (beside the system's own, see overlayguard)."""
    try:
        return load_profile(path, guarded=guarded)
    except ProfileInvalid as err:
        return report_invalid(err, as_json)


def cmd_validate(args: argparse.Namespace) -> int:
    status = 0
    for path in args.profiles:
        if args.board:
            try:
                load_board(path)
            except ProfileInvalid as err:
                status = report_invalid(err, args.json)
                continue
        else:
            loaded = load_or_report(path, args.json, build_folders(args))
            if isinstance(loaded, int):
                status = loaded
                continue
            if args.resolved:
                print(json.dumps(loaded.data, indent=2, sort_keys=True))
                continue
        if args.json:
            print(json.dumps({"valid": True, "file": path}))
        elif not args.quiet:
            Console(stderr=True).print(f"[green]✓[/] {path} is valid")
    return status


def plan_rows(profile: Profile) -> list[dict[str, Any]]:
    """Per image: its hosts, and per host its role, board and OSes (boot-menu order); a stick's
    ISO files' menu entries."""
    from builder.stages.isoboot import iso_entry_name

    model = profile.model
    rows = []
    for name, image in model.images.items():
        members = [{"host": h, "role": model.hosts[h].role, "board": model.hosts[h].board,
                    "os": list(model.oses_of_host(h))} for h in image.hosts]
        rows.append({"image": name, "type": image.type, "size": image.size, "format": image.format,
                     "path": f"images/{profile.name}/{name}.{'qcow2' if image.format == 'qcow2' else 'img'}",
                     "hosts": members, "isos": [iso_entry_name(p) for p in image.isos or ()]})
    return rows


def _stages(profile: Profile, cache_dir: str | None, out_dir: str) -> list[dict[str, Any]]:
    """The build's stages with their keys and whether the cache (or output folder) holds each."""
    from builder.plan import describe_plan

    return describe_plan(profile, cache_dir=cache_dir, out_dir=out_dir)


def cmd_plan(args: argparse.Namespace) -> int:
    loaded = load_or_report(args.profile, args.json, build_folders(args))
    if isinstance(loaded, int):
        return loaded
    from builder.plan import PlanError, make_plan

    try:
        images = plan_rows(loaded)
        stages = _stages(loaded, args.cache_dir, args.out)
        warnings = make_plan(loaded, out_dir=args.out).warnings
    except PlanError as err:
        print(f"clusterctl: {err}", file=sys.stderr)
        return exitcodes.USAGE
    if args.json:
        print(json.dumps({"profile": loaded.path, "cluster": loaded.name, "images": images,
                          "stages": stages, "warnings": warnings}, indent=2))
        return exitcodes.OK
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    console = Console()
    table = Table(title=f"clusterctl plan: {loaded.name} ({loaded.path})")
    for col in ("image", "type", "host", "role", "board", "OSes (first is default)"):
        table.add_column(col)
    for img in images:
        for i, m in enumerate(img["hosts"]):
            first = i == 0
            table.add_row(img["image"] if first else "", img["type"] if first else "",
                          m["host"], m["role"], m["board"], ", ".join(m["os"]))
        if img["isos"]:
            table.add_row("", "", "(menu only)", "", "", "ISO files: " + ", ".join(img["isos"]))
        table.add_section()
    console.print(table)
    st = Table(title="stages")
    for col in ("stage", "key", "state", "depends on"):
        st.add_column(col)
    for s in stages:
        state = "[green]cached[/]" if s.get("cached") else "[yellow]to build[/]"
        st.add_row(s["name"], s["key"][:12], state, ", ".join(s.get("deps", [])))
    console.print(st)
    return exitcodes.OK


def cmd_schema(args: argparse.Namespace) -> int:
    from builder.profile.schema import schema_text

    sys.stdout.write(schema_text("board" if args.board else "profile"))
    return exitcodes.OK


def cmd_docs(args: argparse.Namespace) -> int:
    from builder.profile.docs import render_docs

    text = render_docs()
    if args.output == "-":
        sys.stdout.write(text)
    else:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    return exitcodes.OK


def register(sub: Any) -> None:
    p = sub.add_parser("validate", help="check profiles (or boards) and report every mistake",
                       description="Check profiles; every mistake is reported as FILE:LINE:COLUMN, exit 2.")
    p.add_argument("profiles", nargs="+", metavar="PROFILE")
    p.add_argument("--board", action="store_true", help="the files are board definitions")
    p.add_argument("--resolved", action="store_true", help="print the resolved profile as JSON")
    p.add_argument("--json", action="store_true", help="machine-readable result")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("plan", help="show which images, hosts, OSes and stages a build makes",
                       description="Show what 'clusterctl build' would make and what is already cached.")
    p.add_argument("profile", metavar="PROFILE")
    p.add_argument("--json", action="store_true", help="machine-readable plan")
    p.add_argument("--cache-dir", default=None, help="the stage cache (default ~/.cache/clusterctl)")
    p.add_argument("--out", default="images", help="the output folder a build would write (as build --out)")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("schema", help="print the profile's JSON Schema (for editors)")
    p.add_argument("--board", action="store_true", help="the schema of board files instead")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("docs", help="write the profile reference (docs/profile.md) from the field table")
    p.add_argument("-o", "--output", default="-", help="file to write, or - for standard output")
    p.set_defaults(func=cmd_docs)
