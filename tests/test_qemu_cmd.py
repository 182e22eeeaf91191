"""The QEMU command line a board turns into, and the files it needs (no guest is booted here)."""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import pytest
import yaml

from testdriver import acpi
from testdriver.board import CHASSIS_TYPES, Board, BoardError, Disk, board_names, load_board
from testdriver.qemu import Machine
from testdriver.qemu_cmd import (
    MachineConfig,
    MachinePaths,
    MachineSetupError,
    build_command,
    prepare_files,
    smbios_type3_table,
    uncabled_nics,
)

BOARDS = board_names()


def _devices(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]


def _prepared(board: Board, tmp_path: Path, **options: object) -> tuple[list[str], MachinePaths]:
    paths = MachinePaths(tmp_path / "m", tmp_path / "m")
    cfg = MachineConfig(board=board, **options)  # type: ignore[arg-type]
    prepare_files(cfg, paths)
    return build_command(cfg, paths), paths


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "built.img"
    with path.open("wb") as f:
        f.truncate(64 * 2**20)
    return path


def test_the_required_boards_exist() -> None:
    required = {"nano-itx", "nano-itx-storage", "laptop", "portable-display", "vesa-mini-pc", "storage-box", "cloud-vm"}
    assert required <= set(BOARDS)


@pytest.mark.parametrize("name", BOARDS)
def test_every_board_parses_and_builds_a_command(name: str, tmp_path: Path) -> None:
    board = load_board(name)
    argv, paths = _prepared(board, tmp_path)
    assert argv[:3] == ["qemu-system-x86_64", "-accel", "tcg"]
    assert ("VGA" in _devices(argv)) == board.display
    assert ("-acpitable" in argv) == board.battery
    assert (any("if=pflash" in a for a in argv)) == (board.firmware in ("uefi", "uefi-secure"))
    # Secure Boot: OVMF's SMM build, its variable store guarded, Microsoft's keys enrolled.
    secure = board.firmware == "uefi-secure"
    assert ("q35,smm=on" in argv) == secure and ("driver=cfi.pflash01,property=secure,value=on" in argv) == secure
    assert any("secboot" in a for a in argv) == secure
    if board.firmware != "bios":
        store = paths.vars_fd.read_bytes()
        assert (b"Microsoft" in store or "Microsoft".encode("utf-16-le") in store) == secure
    # Every internal disk is a sparse qcow2 of the board's size.
    for i, disk in enumerate(board.disks):
        info = json.loads(subprocess.check_output(["qemu-img", "info", "--output=json", str(paths.disk(i))]))
        assert info["format"] == "qcow2" and info["virtual-size"] >= disk.size
        assert paths.disk(i).stat().st_blocks * 512 < 16 * 2**20
    macs = [d.split("mac=")[1].split(",")[0] for d in _devices(argv) if "mac=" in d]
    assert macs == [n.mac for n in board.nics]


def test_sata_disks_carry_model_serial_and_rotation(tmp_path: Path) -> None:
    board = load_board("nano-itx-storage")
    argv, _ = _prepared(board, tmp_path)
    sata = [d for d in _devices(argv) if d.startswith("ide-hd")]
    assert len(sata) == 3
    assert "model=WDC WD20EFRX-68EUZN0" in sata[1] and "serial=WD-WCC4M0000001" in sata[1]
    assert "rotation_rate=7200" in sata[1] and "rotation_rate=1" in sata[0]
    assert [d.split("bus=")[1].split(",")[0] for d in sata] == ["ide.0", "ide.1", "ide.2"]


def test_usb_stick_is_an_overlay_that_boots_first(tmp_path: Path, image: Path) -> None:
    board = load_board("nano-itx")
    argv, paths = _prepared(board, tmp_path, boot_image=image, as_usb=True)
    stick = next(d for d in _devices(argv) if d.startswith("usb-storage"))
    assert "removable=on" in stick and "bootindex=0" in stick
    nvme = next(d for d in _devices(argv) if d.startswith("nvme"))
    assert "bootindex=1" in nvme
    info = json.loads(subprocess.check_output(["qemu-img", "info", "--output=json", str(paths.stick)]))
    assert info["backing-filename"] == str(image.resolve()) and info["backing-filename-format"] == "raw"
    assert "strict=on" in argv


def test_image_as_internal_disk_backs_the_first_disk(tmp_path: Path, image: Path) -> None:
    board = load_board("cloud-vm")
    argv, paths = _prepared(board, tmp_path, boot_image=image, as_usb=False)
    info = json.loads(subprocess.check_output(["qemu-img", "info", "--output=json", str(paths.disk(0))]))
    assert info["backing-filename"] == str(image.resolve())
    assert info["virtual-size"] == board.disks[0].size  # grown to the board's disk, image untouched
    assert image.stat().st_size == 64 * 2**20
    assert not any(d.startswith("usb-storage") for d in _devices(argv))
    assert "bootindex=0" in next(d for d in _devices(argv) if d.startswith("virtio-blk"))


def test_direct_kernel_boot_and_extra_disks(tmp_path: Path) -> None:
    board = load_board("laptop")
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k")
    extra = [Disk(bus="usb", size=2**30, serial="EXTRA1", removable=True)]
    argv, _ = _prepared(board, tmp_path, kernel=kernel, append="console=ttyS0", extra_disks=extra)
    assert argv[argv.index("-kernel") + 1] == str(kernel) and "strict=on" not in argv
    assert not any("bootindex" in d for d in _devices(argv))
    assert any(d.startswith("usb-storage") and "serial=EXTRA1" in d for d in _devices(argv))


def test_host_pins_override_mac_and_serial(tmp_path: Path) -> None:
    board = load_board("nano-itx")
    argv, paths = _prepared(board, tmp_path, macs=["52:54:00:aa:bb:cc"], dmi_serial="PINNED-1")
    assert any("mac=52:54:00:aa:bb:cc" in d for d in _devices(argv))
    assert any(a.startswith("type=1,") and "serial=PINNED-1" in a for a in argv)
    assert b"PINNED-1\0" in paths.smbios_type3.read_bytes()


def test_a_board_with_a_battery_gets_its_acpi_table_from_the_work_dir(tmp_path: Path) -> None:
    argv, paths = _prepared(load_board("laptop"), tmp_path)
    assert argv[argv.index("-acpitable") + 1] == f"file={paths.battery_aml}"
    assert paths.battery_aml.parent == paths.workdir and paths.battery_aml.read_bytes()[:4] == b"SSDT"
    argv, paths = _prepared(load_board("nano-itx"), tmp_path / "none")
    assert "-acpitable" not in argv and not paths.battery_aml.exists()


def test_a_battery_without_iasl_is_refused_before_qemu_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(acpi, "IASL", "iasl-not-installed")
    with pytest.raises(MachineSetupError, match=r"board laptop: its battery: .*'acpica-tools'"):
        _prepared(load_board("laptop"), tmp_path)


@pytest.mark.parametrize("chassis", sorted(CHASSIS_TYPES))
def test_smbios_type3_table_layout(chassis: str) -> None:
    table = smbios_type3_table("Jetway, Inc.", CHASSIS_TYPES[chassis], "1.0", "SN1")
    kind, length, handle, vendor, ctype, version, serial = struct.unpack_from("<BBHBBBB", table)
    assert (kind, length, handle, ctype) == (3, 0x16, 0x300, CHASSIS_TYPES[chassis])
    strings = table[length:].split(b"\0")
    assert strings[vendor - 1] == b"Jetway, Inc." and strings[version - 1] == b"1.0" and strings[serial - 1] == b"SN1"
    assert table.endswith(b"\0\0")


def test_smbios_type3_without_strings_ends_with_two_nuls() -> None:
    table = smbios_type3_table("", 3, "", "")
    assert len(table) == 0x16 + 2 and table[4] == 0 and table.endswith(b"\0\0")


def test_commas_in_dmi_strings_are_escaped(tmp_path: Path) -> None:
    board = load_board("cloud-vm")
    argv, _ = _prepared(board, tmp_path)
    type1 = next(a for a in argv if a.startswith("type=1,"))
    assert "product=Standard PC (Q35 + ICH9,, 2009)" in type1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"firmware": "coreboot"}, "firmware"),
        ({"dmi": {"vendor": "X", "product": "Y", "chassis": "spaceship"}}, "chassis"),
        ({"disks": [{"bus": "scsi", "size": 1}]}, "bus"),
        ({"nics": [{"mac": "52:54:00:zz:00:01"}]}, "MAC"),
        ({"colour": "red"}, "unknown key"),
        ({"cpus": 0}, "cpus"),
    ],
)
def test_bad_boards_are_refused_with_a_reason(change: dict[str, object], message: str, tmp_path: Path) -> None:
    data: dict[str, object] = {
        "description": "d", "firmware": "uefi", "dmi": {"vendor": "V", "product": "P", "chassis": "desktop"},
    }  # fmt: skip
    data.update(change)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(BoardError, match=message):
        load_board(tmp_path / "bad.yaml")


def test_unknown_board_name_lists_the_known_ones() -> None:
    with pytest.raises(BoardError, match="nano-itx"):
        load_board("no-such-board")


def test_more_sata_disks_than_ports_is_refused(tmp_path: Path) -> None:
    board = load_board("storage-box")
    extra = [Disk(bus="sata", size=2**30, serial="X1"), Disk(bus="sata", size=2**30, serial="X2")]
    with pytest.raises(MachineSetupError, match="more than 6 SATA disks"):
        _prepared(board, tmp_path, extra_disks=extra)


def test_a_missing_image_is_refused_before_qemu_starts(tmp_path: Path) -> None:
    m = Machine(load_board("nano-itx"), tmp_path / "m", boot_image=tmp_path / "absent.img")
    with pytest.raises(MachineSetupError, match="no image at"):
        m.start()
    assert m.proc is None


def test_a_qemu_that_cannot_start_reports_its_own_words(tmp_path: Path) -> None:
    m = Machine(load_board("nano-itx-storage"), tmp_path / "m", macs=["52:54:00:zz:00:01"])
    with pytest.raises(MachineSetupError, match=r"(?s)QEMU did not start.*52:54:00:zz:00:01"):
        m.start()
    assert not m.running
    m.close()


def test_only_the_nics_given_a_lan_are_cabled(tmp_path: Path) -> None:
    board = load_board("storage-box")  # two NICs
    argv, _ = _prepared(board, tmp_path, netdevs=["vde,sock=/run/lan", None])
    netdevs = [argv[i + 1] for i, a in enumerate(argv) if a == "-netdev"]
    assert netdevs[0] == "vde,sock=/run/lan,id=net0"
    assert netdevs[1].startswith("hubport,") and "hubid=101" in netdevs[1]  # a hub of its own: no loop
    assert not any(a.startswith("user") for a in netdevs)  # never a route outside
    # The uncabled port has no carrier: QEMU starts paused so the driver pulls its link first.
    assert "-S" in argv and uncabled_nics(MachineConfig(board=board, netdevs=["vde,sock=/run/lan", None])) == [1]
    argv, _ = _prepared(board, tmp_path / "all", netdevs=["vde,sock=/run/lan", "vde,sock=/run/lan2"])
    assert "-S" not in argv
