"""The example profiles and boards validate, and their resolved form is golden-tested."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from builder.profile import BOARDS_DIR, load_board, load_profile

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
EXAMPLES = sorted(p for p in (ROOT / "profiles").glob("*.yaml"))
UPDATE = os.environ.get("CLUSTERCTL_UPDATE_GOLDEN") == "1"


def _portable(data: object) -> object:
    """Absolute paths inside the checkout made relative, so goldens hold on any clone."""
    text = json.dumps(data, indent=2, sort_keys=True).replace(str(ROOT) + "/", "")
    return json.loads(text)


def test_there_are_the_four_examples() -> None:
    names = {p.stem for p in EXAMPLES}
    assert {"dual-nano-itx", "laptop-display", "vesa-wall", "hybrid-cloud"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_resolves_to_golden(path: Path) -> None:
    resolved = _portable(load_profile(path).data)
    golden = GOLDEN / f"{path.stem}.json"
    if UPDATE or not golden.exists():
        golden.write_text(json.dumps(resolved, indent=2, sort_keys=True) + "\n")
        if not UPDATE:
            pytest.fail(f"wrote missing golden {golden.name}; review and commit it")
    assert resolved == json.loads(golden.read_text())


@pytest.mark.parametrize("path", sorted(BOARDS_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_board_validates(path: Path) -> None:
    board = load_board(path)
    assert board["name"] == path.stem
    assert board["firmware"] in ("uefi", "uefi-secure", "bios")
    # Laptops and mini PCs leave the factory with Secure Boot on: their example boards boot so.
    if board["dmi"]["chassis"] in ("laptop", "mini-pc"):
        assert board["firmware"] == "uefi-secure"


def test_required_boards_exist() -> None:
    names = {p.stem for p in BOARDS_DIR.glob("*.yaml")}
    assert {"nano-itx", "laptop", "portable-display", "vesa-mini-pc", "storage-box", "cloud-vm"} <= names
