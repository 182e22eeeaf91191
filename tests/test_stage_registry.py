"""Stage kinds live in one place each: their module under builder/stages/, found by the registry.

Neither builder/plan.py (versions, tools) nor builder/build.py (dispatch) holds a per-kind
table any more; the key of a stage uses its kind's version from the registry.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import importlib
import inspect
import io
import pkgutil
from pathlib import Path
from typing import Any

import pytest

import builder.plan as plan_mod
import builder.stages as stages_pkg
from builder.build import Builder
from builder.cache import StageCache
from builder.plan import Stage, make_plan
from builder.profile import load_profile
from builder.report import JsonReporter
from builder.stages.kind import StageContext, StageKind
from builder.stages.registry import KINDS

ROOT = Path(__file__).resolve().parents[1]
ALL_KINDS = {"rootfs", "overlay", "rootpart", "rescue", "bootchain", "esp", "isos", "claims", "image"}


def _fake_tool_version(tool: str) -> str:
    return f"{tool} 1.0"


@pytest.fixture
def fixed_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planning asks tools their versions; fixed ones keep these tests off the machine's tools."""
    import builder.tools

    monkeypatch.setattr(builder.tools, "tool_version", _fake_tool_version)


def test_every_kind_has_a_version_tools_and_an_executor() -> None:
    assert set(KINDS) == ALL_KINDS
    for name, kind in KINDS.items():
        assert isinstance(kind, StageKind) and kind.name == name
        assert isinstance(kind.version, int) and kind.version >= 1
        assert isinstance(kind.tools, tuple) and all(isinstance(t, str) and t for t in kind.tools)
        assert callable(kind.run)
        # One shape for every executor: run(ctx, stage, work, log).
        assert list(inspect.signature(kind.run).parameters) == ["ctx", "stage", "work", "log"]


def test_no_module_declaring_a_kind_is_left_out_of_the_registry() -> None:
    declared = {}
    for info in pkgutil.iter_modules(stages_pkg.__path__):
        module = importlib.import_module(f"builder.stages.{info.name}")
        if isinstance(getattr(module, "KIND", None), StageKind):
            declared[module.KIND.name] = module.KIND
    assert declared == KINDS


def test_plan_and_build_hold_no_per_kind_tables() -> None:
    assert not hasattr(plan_mod, "EXECUTOR_VERSIONS")
    assert not [n for n in dir(Builder) if n.startswith("_run_")]
    # No kind's name spelt out in the dispatch (build.py's _stage) nor in add_tool_versions.
    for path, func in ((ROOT / "builder" / "build.py", "_stage"), (ROOT / "builder" / "plan.py", "add_tool_versions")):
        tree = ast.parse(path.read_text())
        node = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == func)
        spelt = {c.value for c in ast.walk(node) if isinstance(c, ast.Constant) and c.value in ALL_KINDS}
        assert not spelt, f"{path.name}:{func} names kinds {spelt}"


def _keys() -> dict[str, str]:
    plan = make_plan(load_profile(ROOT / "profiles" / "dual-nano-itx.yaml"))
    return {s.name: s.key for s in plan.ordered()}


def _dependents(plan_stages: dict[str, Stage], kind: str) -> set[str]:
    """The stages of ``kind`` and every stage built on one of them."""
    out = {n for n, s in plan_stages.items() if s.kind == kind}
    for n, s in plan_stages.items():  # execution order: dependencies first
        if out & set(s.deps):
            out.add(n)
    return out


@pytest.mark.parametrize("kind", ["image", "esp", "rootpart", "overlay"])
def test_a_kinds_registry_version_is_in_its_keys(monkeypatch: pytest.MonkeyPatch, fixed_tools: None,
                                                 kind: str) -> None:
    before = _keys()
    stages = make_plan(load_profile(ROOT / "profiles" / "dual-nano-itx.yaml")).stages
    monkeypatch.setitem(KINDS, kind, dataclasses.replace(KINDS[kind], version=KINDS[kind].version + 1))
    after = _keys()
    changed = {n for n in before if before[n] != after[n]}
    assert {n for n in changed if stages[n].kind == kind} == {n for n, s in stages.items() if s.kind == kind}
    # Only that kind's stages and what is built on them: no other kind's key moved.
    assert changed == _dependents(stages, kind)
    if kind == "image":
        assert all(stages[n].kind == "image" for n in changed)


def test_tools_and_extra_inputs_come_from_the_registry(monkeypatch: pytest.MonkeyPatch, fixed_tools: None) -> None:
    plan = make_plan(load_profile(ROOT / "profiles" / "vesa-wall.yaml"))
    for s in plan.ordered():
        want = list(KINDS[s.kind].tools)
        assert list(s.inputs.get("tools", {})) == want, s.name
    esp = next(s for s in plan.ordered() if s.kind == "esp")
    assert "boot_files" in esp.inputs and "grub" not in esp.inputs["boot_files"]  # no ISO entries here
    monkeypatch.setitem(KINDS, "rootfs", dataclasses.replace(KINDS["rootfs"], tools=("mmdebstrap", "zstd")))
    plan = make_plan(load_profile(ROOT / "profiles" / "vesa-wall.yaml"))
    assert plan.stages["rootfs:stable"].inputs["tools"] == {"mmdebstrap": "mmdebstrap 1.0", "zstd": "zstd 1.0"}


def test_the_builder_runs_the_registrys_executor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []

    def run(ctx: StageContext, stage: Stage, work: Path, log: Path) -> tuple[dict[str, Any], Path]:
        calls.append((ctx, stage, work, log))
        out = work / "out.bin"
        out.write_bytes(b"made")
        return {"made": True}, out

    monkeypatch.setitem(KINDS, "rootfs", dataclasses.replace(KINDS["rootfs"], run=run))
    profile = load_profile(ROOT / "profiles" / "vesa-wall.yaml")
    cache = StageCache(tmp_path / "cache")
    try:
        b = Builder(profile, out_dir=tmp_path / "images", cache=cache, reporter=JsonReporter())
        b.logs.mkdir(parents=True)
        stage = Stage("rootfs", "rootfs:x", {"a": 1}, key="k" * 64)
        with contextlib.redirect_stdout(io.StringIO()):
            res = b._stage(None, stage)  # type: ignore[arg-type]
            again = b._stage(None, stage)  # type: ignore[arg-type]
        assert len(calls) == 1 and calls[0][0] is b.ctx and calls[0][1] is stage
        assert not res.reused and res.record["made"] and res.path is not None and res.path.read_bytes() == b"made"
        assert again.reused
        assert b.ctx.dep(Stage("overlay", "o", {}, deps=["rootfs:x"]), "rootfs") is b.results["rootfs:x"]
    finally:
        cache.close()
