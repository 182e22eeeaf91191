"""The direction of imports: build-machine code above, host code below, a small core under both.

Every module's imports are read with ``ast`` (those inside functions too) and each must go to
its own layer or a lower one (docs/architecture.md):

  1. build machine: builder/, testdriver/
  2. hosts:         agent/, hardware/
  3. core:          core/
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS: dict[str, int] = {"builder": 1, "testdriver": 1, "agent": 2, "hardware": 2, "core": 3}
# Not shipped, never imported by shipped code; they may use any layer.
ABOVE_ALL = ("tests", "bench")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                name = ".".join([*base, *([node.module] if node.module else [])])
            else:
                name = node.module or ""
            # "from agent import identity" names a module too.
            out += [(node.lineno, f"{name}.{a.name}") for a in node.names] or [(node.lineno, name)]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            out.append((node.lineno, node.args[0].value))  # importlib.import_module("x.y")
    return out


def layer_violations(path: Path) -> list[str]:
    own = module_name(path).split(".")[0]
    if own not in LAYERS:
        return []
    bad = []
    for line, name in imported_modules(path):
        top = name.split(".")[0]
        if top in ABOVE_ALL:
            bad.append(f"{path.relative_to(ROOT)}:{line}: imports {name} (tests and benches are not shipped)")
        elif top in LAYERS and LAYERS[top] < LAYERS[own]:
            bad.append(f"{path.relative_to(ROOT)}:{line}: imports {name}, a layer above ({top} is layer "
                       f"{LAYERS[top]}, {own} is layer {LAYERS[own]})")
    return bad


def shipped_sources() -> list[Path]:
    return sorted(p for top in LAYERS for p in (ROOT / top).rglob("*.py"))


def test_every_import_goes_down_or_stays_in_its_layer() -> None:
    bad = [v for p in shipped_sources() for v in layer_violations(p)]
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


@pytest.mark.parametrize("top", ["bench"])
def test_benches_import_no_test_helpers(top: str) -> None:
    bad = [f"{p.relative_to(ROOT)}:{line}: imports {name}"
           for p in sorted((ROOT / top).rglob("*.py")) for line, name in imported_modules(p)
           if name.split(".")[0] == "tests"]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(("source", "where", "expected"), [
    ("def f():\n    from builder.profile import load_profile\n", "hardware/x.py", "layer above"),
    ("import testdriver.qemu\n", "agent/mesh/x.py", "layer above"),
    ("from agent import events\n", "core/x.py", "layer above"),
    ("import importlib\nimportlib.import_module('builder.plan')\n", "agent/x.py", "layer above"),
    ("from tests.mesh_lab import Shell\n", "testdriver/x.py", "not shipped"),
    ("from ..state import hw\n", "agent/mesh/x.py", None),  # agent.state: same layer
    ("from core.events import emit\nfrom hardware import detect\n", "agent/x.py", None),
    ("from agent import identity\n", "builder/x.py", None),  # downward
])
def test_the_check_catches_an_upward_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str,
                                            where: str, expected: str | None) -> None:
    # The same reader on a planted file: an import inside a function, a plain import, a relative
    # one and importlib are all seen.
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    path = tmp_path / where
    path.parent.mkdir(parents=True)
    path.write_text(source)
    found = layer_violations(path)
    if expected is None:
        assert found == []
    else:
        assert len(found) == 1 and expected in found[0], found


def test_no_cycle_dodging_left() -> None:
    """No importlib or ``except ImportError`` in shipped code whose purpose is to reach a module of ours."""
    bad = []
    for p in shipped_sources():
        tree = ast.parse(p.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Try) and any(
                    isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                    for h in node.handlers):
                names = [n for _line, n in imported_modules_of(node.body)]
                ours = [n for n in names if n.split(".")[0] in LAYERS]
                if ours:
                    bad.append(f"{p.relative_to(ROOT)}:{node.lineno}: except ImportError around {ours}")
            if isinstance(node, ast.Attribute) and node.attr == "import_module":
                bad.append(f"{p.relative_to(ROOT)}:{node.lineno}: importlib.import_module")
    assert not bad, "\n".join(bad)


def imported_modules_of(body: list[ast.stmt]) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for stmt in body:
        for node in ast.walk(stmt):
            if isinstance(node, ast.Import):
                out += [(node.lineno, a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                out.append((node.lineno, node.module or ""))
    return out


def test_every_import_of_ours_resolves() -> None:
    """Imports inside functions run only on their path (a host's volumes service, say): each one of
    ours must name a module that exists, and each name imported from it must be there."""
    import importlib
    import importlib.util

    bad = []
    for p in shipped_sources():
        tree = ast.parse(p.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
                continue
            if node.module.split(".")[0] not in LAYERS:
                continue
            where = f"{p.relative_to(ROOT)}:{node.lineno}"
            try:
                module = importlib.import_module(node.module)
            except ImportError as e:
                bad.append(f"{where}: {node.module}: {e}")
                continue
            for alias in node.names:
                if not hasattr(module, alias.name) and importlib.util.find_spec(
                        f"{node.module}.{alias.name}") is None:
                    bad.append(f"{where}: {node.module} has no {alias.name}")
    assert not bad, "\n".join(bad)
