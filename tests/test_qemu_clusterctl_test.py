"""``clusterctl test`` and ``clusterctl boot`` end to end, on a stick made from the test kit.

The kit's stick (systemd-boot for UEFI, syslinux for BIOS, on one FAT partition) recognises
its host by DMI serial and reports ``matched`` and ``ready``: enough to drive the command's
whole path (profile → boards → USB boot under both firmwares → events → table → status)
before the real image builder's sticks exist.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from builder.cli import main
from builder.profile import load_profile
from hardware.testkit import TestKit, build_stick

pytest_plugins = ["tests.qemu_fixtures"]

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiles" / "dual-nano-itx.yaml"
SERIALS = {"nano-itx": "JW-NF9-0001", "nano-itx-storage": "JW-NF9-0002"}  # the boards' DMI serials


def _stick(kit: TestKit, path: Path, hosts: dict[str, tuple[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return build_stick(kit, path, kit.append(hosts=hosts))


def _profile_hosts() -> dict[str, tuple[str, str]]:
    data = load_profile(PROFILE).data
    return {h: (SERIALS[spec["board"]], spec["role"]) for h, spec in data["hosts"].items()}


def test_a_missing_image_fails_without_booting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["test", str(PROFILE), "--images", str(tmp_path / "none"), "--host", "left"])
    assert status == 1
    assert "is not built" in capsys.readouterr().out


def test_an_unknown_host_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test", str(PROFILE), "--host", "middle"]) == 2
    assert "no host middle" in capsys.readouterr().err


@pytest.mark.slow
def test_clusterctl_test_passes_when_every_host_matches_and_is_ready(
    testkit: TestKit, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    images = tmp_path / "images"
    _stick(testkit, images / "stick.img", _profile_hosts())
    status = main(["test", str(PROFILE), "--images", str(images)])
    out = capsys.readouterr().out
    assert status == 0, out
    for host, board, firmware in (("left", "nano-itx", "uefi"), ("right", "nano-itx-storage", "bios")):
        row = next(line for line in out.splitlines() if f" {host} " in line and board in line)
        assert firmware in row and "matched" in row and "ready" in row and "pass" in row


@pytest.mark.slow
def test_clusterctl_test_fails_when_a_host_is_recognised_as_another_role(
    testkit: TestKit, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "images"
    hosts = _profile_hosts()
    hosts["right"] = (hosts["right"][0], "desktop")  # the stick believes right is a desktop
    _stick(testkit, images / "stick.img", hosts)
    status = main(["test", str(PROFILE), "--images", str(images), "--host", "right"])
    out = capsys.readouterr().out
    assert status == 1
    assert "matched with role 'desktop' (expected 'storage')" in out
    assert "last " in out and "console lines" in out  # the console tail explains the failure


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


@pytest.mark.slow
def test_an_installer_that_powers_off_gets_its_stick_pulled_and_boots_the_disk(
    testkit: TestKit, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    images = tmp_path / "images"
    stick = images / "stick.img"
    images.mkdir()
    build_stick(testkit, stick, testkit.append(hosts=_profile_hosts(), install=True))
    status = main(["test", str(PROFILE), "--images", str(images), "--host", "right"])
    out = capsys.readouterr().out
    assert status == 0, out
    row = next(line for line in out.splitlines() if " right " in line)
    # The stick matched and installed; the second power-on (stick pulled) came up from the disk.
    assert row.index("matched") < row.index("installed") < row.index("ready")
