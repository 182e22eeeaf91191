"""``clusterctl test`` and ``clusterctl boot`` end to end, on a stick made from the test kit.

The kit's stick (systemd-boot for UEFI, syslinux for BIOS, on one FAT partition) recognises
its host by DMI serial and reports ``matched`` and ``ready``: enough to drive the command's
whole path (profile → boards → USB boot under both firmwares → events → table → status)
before the real image builder's sticks exist.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest

from builder.cli import main
from builder.profile import load_profile
from testdriver.board import load_board
from testdriver.testkit import TestKit, build_stick
from testdriver.testrun import check_event, is_the_sticks_own, plan_runs

pytest_plugins = ["tests.qemu_fixtures"]

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiles" / "dual-nano-itx.yaml"
SERIALS = {"nano-itx": "JW-NF9-0001", "nano-itx-storage": "JW-NF9-0002"}  # the boards' DMI serials


def _stick(kit: TestKit, path: Path, hosts: dict[str, tuple[str, str]], install: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return build_stick(kit, path, kit.append(hosts=hosts, install=install))


def _profile_hosts() -> dict[str, tuple[str, str]]:
    data = load_profile(PROFILE).data
    return {h: (SERIALS[spec["board"]], spec["role"]) for h, spec in data["hosts"].items()}


def test_runs_follow_the_profile_images_hosts_boards_and_pins() -> None:
    data = copy.deepcopy(load_profile(PROFILE).data)
    data["hosts"]["third"] = {**data["hosts"]["right"], "pin": {"serial": "PIN-3", "mac": "52:54:00:00:00:03"}}
    data["hosts"]["fourth"] = {**data["hosts"]["right"], "pin": {}}
    data["images"]["stick"]["hosts"] += ["third", "fourth"]
    data["images"]["disk4"] = {"type": "disk", "host": "fourth", "size": 8 * 1024**3, "format": "raw"}
    runs = plan_runs(data, Path("/img"), load_board)
    assert [(r.host, r.image, r.as_usb, r.expect) for r in runs] == [
        ("left", "stick", True, ["matched", "ready"]),
        ("right", "stick", True, ["matched", "ready"]),
        ("third", "stick", True, ["matched", "ready"]),
        ("fourth", "stick", True, ["matched", "ready"]),
        ("fourth", "disk4", False, ["ready"]),
    ]
    assert runs[0].image_path == Path("/img/stick.img") and runs[4].image_path == Path("/img/disk4.img")
    assert (runs[2].dmi_serial, runs[2].macs) == ("PIN-3", ["52:54:00:00:00:03"])
    # right and fourth share a board: fourth gets a MAC of its own so both can share a LAN.
    assert runs[1].macs == ["52:54:00:c1:02:01"] and runs[3].macs == ["52:54:00:c1:02:02"]
    assert [r.host for r in plan_runs(data, Path("/img"), load_board, ["right"])] == ["right"]


def test_an_event_for_another_host_or_role_or_an_error_is_a_failure() -> None:
    run = plan_runs(load_profile(PROFILE).data, Path("/img"), load_board, ["right"])[0]
    assert check_event(run, {"event": "matched", "host": "right", "role": "storage"}) is None
    assert check_event(run, {"event": "matched", "host": "right", "role": "desktop"}) == (
        "matched with role 'desktop' (expected 'storage')"
    )
    assert "host 'left'" in (check_event(run, {"event": "ready", "host": "left", "role": "storage"}) or "")
    assert "disk full" in (check_event(run, {"event": "error", "stage": "install", "message": "disk full"}) or "")


def test_the_sticks_own_ready_is_not_the_hosts() -> None:
    run = plan_runs(load_profile(PROFILE).data, Path("/img"), load_board, ["left"])[0]
    assert is_the_sticks_own(run, {"event": "ready", "host": None, "role": None, "image": "stick"})
    assert not is_the_sticks_own(run, {"event": "ready", "host": "left", "role": "desktop"})
    assert not is_the_sticks_own(run, {"event": "matched", "host": None})


def test_a_missing_image_fails_without_booting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["test", str(PROFILE), "--images", str(tmp_path / "none"), "--host", "left"])
    assert status == 1
    assert "is not built" in capsys.readouterr().out


def test_an_unknown_host_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test", str(PROFILE), "--host", "middle"]) == 2
    assert "no host middle" in capsys.readouterr().err


@pytest.mark.slow
def test_clusterctl_test_passes_when_every_host_matches_installs_and_is_ready(
    testkit: TestKit, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    images = tmp_path / "images"
    # The kit's stick installs itself to the smallest internal disk and powers off; the command
    # pulls the stick and powers on again, so each host's second boot comes from its own disk
    # (NVMe under OVMF for left, SATA under SeaBIOS for right).
    _stick(testkit, images / "stick.img", _profile_hosts(), install=True)
    status = main(["test", str(PROFILE), "--images", str(images)])
    out = capsys.readouterr().out
    assert status == 0, out
    for host, board, firmware in (("left", "nano-itx", "uefi"), ("right", "nano-itx-storage", "bios")):
        row = next(line for line in out.splitlines() if f" {host} " in line and board in line)
        assert firmware in row and "pass" in row
        assert row.index("matched") < row.index("installed") < row.index("ready")


@pytest.mark.slow
def test_clusterctl_test_fails_a_host_recognised_in_the_wrong_role(
    testkit: TestKit, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    images = tmp_path / "images"
    hosts = _profile_hosts()
    hosts["right"] = (hosts["right"][0], "desktop")  # a stick that takes the storage box for a desktop
    _stick(testkit, images / "stick.img", hosts)
    status = main(["test", str(PROFILE), "--images", str(images), "--host", "right", "--timeout", "600"])
    out = capsys.readouterr().out
    assert status == 1, out
    row = next(line for line in out.splitlines() if " right " in line and "nano-itx-storage" in line)
    assert "FAIL" in row and "ready" not in row
    assert "matched with role 'desktop' (expected 'storage')" in out
    assert "CLUSTERCTL" in out  # the console's last lines come with the verdict


@pytest.mark.slow
def test_clusterctl_boot_puts_the_console_on_the_terminal(testkit: TestKit, tmp_path: Path) -> None:
    stick = _stick(testkit, tmp_path / "stick.img", {"right": (SERIALS["nano-itx-storage"], "storage")})
    proc = subprocess.run(
        [sys.executable, "-m", "builder", "boot", str(stick), "--board", "nano-itx-storage"],
        cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert 'CLUSTERCTL {"event": "ready", "host": "right", "role": "storage"' in proc.stdout
    assert "Ctrl-A X" in proc.stderr

