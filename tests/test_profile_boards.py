"""A user's own machines in a profile: boards declared inline, or a board file beside the profile
(what ``clusterctl inventory --board`` prints), checked like shipped boards and carried in the
resolved profile for ``clusterctl test``."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from builder.profile import ProfileInvalid, load_profile
from hardware.boardgen import board_yaml
from testdriver.board import load_board
from testdriver.testrun import plan_runs
from tests.hwfixtures import load_inventory

ROOT = Path(__file__).resolve().parents[1]

PROFILE = """\
cluster: {name: mine, network: {lan: 10.9.0.0/24}}
oses: {stable: {suite: bookworm}}
roles: {desktop: {os: stable, match: {chassis: laptop}}}
hosts:
  lappy: {role: desktop, board: BOARD}
images:
  stick: {type: usb-installer, hosts: [lappy]}
"""

MY_BOX = """\
description: "My own laptop"
firmware: uefi
cpus: 4
memory: 8GiB
dmi: {vendor: LENOVO, product: 20XW0026GE, serial: PF2ABCDE, chassis: laptop}
disks:
  - {bus: nvme, size: 256GB, model: "SAMSUNG MZVLB256", serial: S4ELNX0R300001}
nics:
  - {model: e1000e, mac: "84:1b:77:c1:03:01"}
display: true
battery: true
"""


def write(tmp: Path, board: str, boards: str = "", files: dict[str, str] | None = None) -> Path:
    for name, text in (files or {}).items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_text(text)
    path = tmp / "mine.yaml"
    path.write_text(PROFILE.replace("BOARD", board) + boards)
    return path


def errors(path: Path) -> list[str]:
    with pytest.raises(ProfileInvalid) as e:
        load_profile(path)
    return [str(d).replace(str(path.parent) + "/", "") for d in e.value.diagnostics]


def test_an_inline_board_is_carried_to_the_test_driver(tmp_path: Path) -> None:
    inline = "boards:\n  my-box:\n" + textwrap.indent(MY_BOX, "    ")
    profile = load_profile(write(tmp_path, "my-box", inline))
    assert profile.data["hosts"]["lappy"]["board"] == "my-box"
    assert profile.model.boards["my-box"]["dmi"]["serial"] == "PF2ABCDE"
    assert profile.model.boards["my-box"]["memory"] == 8 * 1024**3
    (run,) = plan_runs(profile.model, tmp_path, load_board)
    assert (run.board.name, run.board.firmware, run.board.cpus) == ("my-box", "uefi", 4)
    assert run.board.battery and run.board.nics[0].mac == "84:1b:77:c1:03:01"


def test_a_board_file_beside_the_profile(tmp_path: Path) -> None:
    path = write(tmp_path, "boards/my-box.yaml", files={"boards/my-box.yaml": MY_BOX})
    profile = load_profile(path)
    # The resolved profile names the board and holds it: nothing outside it is needed later.
    assert profile.data["hosts"]["lappy"]["board"] == "my-box"
    assert profile.data["boards"]["my-box"]["dmi"]["product"] == "20XW0026GE"
    assert str(tmp_path / "boards" / "my-box.yaml") in profile.sources  # part of the cache keys
    (run,) = plan_runs(profile.model, tmp_path, load_board)
    assert run.board.dmi.serial == "PF2ABCDE"


def test_what_inventory_board_prints_is_a_board_file_for_a_profile(tmp_path: Path) -> None:
    laptop = board_yaml(load_inventory("laptop"), "uefi")
    profile = load_profile(write(tmp_path, "x1.yaml", files={"x1.yaml": laptop}))
    assert profile.model.boards["x1"]["dmi"]["vendor"] == "LENOVO"
    assert yaml.safe_load(laptop)["nics"][0]["mac"] == profile.model.boards["x1"]["nics"][0]["mac"]


def test_a_board_file_with_an_unknown_field_is_a_located_error(tmp_path: Path) -> None:
    path = write(tmp_path, "boards/my-box.yaml", files={"boards/my-box.yaml": MY_BOX + "gpu: big\n"})
    found = errors(path)
    assert len(found) == 1 and found[0].startswith("boards/my-box.yaml:12:1: "), found
    assert "gpu" in found[0]


def test_a_missing_board_file_is_an_error_at_the_host(tmp_path: Path) -> None:
    found = errors(write(tmp_path, "boards/gone.yaml"))
    assert len(found) == 1 and found[0].startswith("mine.yaml:5:"), found
    assert "no board file" in found[0] and "gone.yaml" in found[0]


def test_a_board_file_named_like_a_shipped_board_is_refused(tmp_path: Path) -> None:
    found = errors(write(tmp_path, "nano-itx.yaml", files={"nano-itx.yaml": MY_BOX}))
    assert len(found) == 1 and 'named like the board "nano-itx" of testdriver/boards/' in found[0], found


def test_an_unknown_board_name_says_where_boards_come_from(tmp_path: Path) -> None:
    found = errors(write(tmp_path, "my-bx", "boards:\n  my-box:\n" + textwrap.indent(MY_BOX, "    ")))
    assert len(found) == 1 and 'no board "my-bx" in testdriver/boards/ or the profile\'s boards' in found[0]
    assert 'did you mean "my-box"' in found[0]
