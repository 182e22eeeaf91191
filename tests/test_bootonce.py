"""The next boot only (core/disk/bootonce.py) on a stick image with the builder's real ESP
(syslinux installed by its mtools installer, Debian's signed GRUB): syslinux's ADV as
syslinux itself wrote it reads back valid, ours is read back and leaves the rest of
ldlinux.sys and the FAT intact; GRUB's environment block is a real one. That the loaders
honour them and clear them is checked by booting (tests/test_build_image.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agent.bootctl import BootControl
from core.disk import bootonce
from core.disk.bootmenu import BootEntry, menus
from core.disk.gpt import ESP_TYPE, read_table
from core.disk.tools import MTOOLS_ENV, fat
from tests.test_installer_stick import make_stick


@pytest.fixture(scope="module")
def stick(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_stick(tmp_path_factory.mktemp("bootonce"))


def esp_file(stick: Path, path: str, tmp: Path) -> bytes:
    esp = next(p for p in read_table(str(stick)).parts if p.type == ESP_TYPE)
    out = tmp / path.replace("/", "_")
    out.unlink(missing_ok=True)
    subprocess.run(["mcopy", "-n", "-i", fat(str(stick), esp.start), f"::/{path}", str(out)], env=MTOOLS_ENV,
                   check=True)
    return out.read_bytes()


def fat_clean(stick: Path) -> bool:
    esp = next(p for p in read_table(str(stick)).parts if p.type == ESP_TYPE)
    with open(stick, "rb") as f:
        f.seek(esp.start)
        data = f.read(esp.size)
    image = stick.with_suffix(".esp")
    image.write_bytes(data)
    try:
        return subprocess.run(["fsck.fat", "-n", str(image)], capture_output=True).returncode == 0
    finally:
        image.unlink()


def test_syslinux_boot_once_is_written_in_place_and_read_back(stick: Path, tmp_path: Path) -> None:
    assert bootonce.syslinux_once(str(stick)) is None  # syslinux's own ADV: valid, empty
    before = esp_file(stick, bootonce.LDLINUX, tmp_path)
    bootonce.set_syslinux_once(str(stick), "rescue")
    assert bootonce.syslinux_once(str(stick)) == "rescue"
    after = esp_file(stick, bootonce.LDLINUX, tmp_path)
    assert len(after) == len(before) and after[:-1024] == before[:-1024]  # the loader itself untouched
    assert bootonce.parse_adv(after[-1024:]) == {bootonce.ADV_BOOTONCE: b"rescue"}
    assert fat_clean(stick)
    bootonce.set_syslinux_once(str(stick), None)
    assert bootonce.syslinux_once(str(stick)) is None
    assert esp_file(stick, bootonce.LDLINUX, tmp_path) == before  # cleared: as syslinux left it


def test_an_adv_with_a_bad_checksum_is_not_taken() -> None:
    block = bytearray(bootonce.adv_block({bootonce.ADV_BOOTONCE: b"next"}))
    assert bootonce.parse_adv(bytes(block)) == {bootonce.ADV_BOOTONCE: b"next"}
    block[20] ^= 1  # first copy broken: the second is used
    assert bootonce.parse_adv(bytes(block)) == {bootonce.ADV_BOOTONCE: b"next"}
    block[512 + 20] ^= 1
    assert bootonce.parse_adv(bytes(block)) is None


def test_grub_next_entry_is_a_grub_environment_block(stick: Path, tmp_path: Path) -> None:
    assert bootonce.grub_next(str(stick)) is None
    bootonce.set_grub_next(str(stick), "next")
    assert bootonce.grub_next(str(stick)) == "next"
    block = esp_file(stick, bootonce.GRUBENV, tmp_path)
    assert len(block) == 1024 and block.startswith(b"# GRUB Environment Block\nnext_entry=next\n#")
    bootonce.set_grub_next(str(stick), None)
    assert bootonce.grub_next(str(stick)) is None
    assert fat_clean(stick)


def test_the_grub_menu_takes_the_next_entry_once() -> None:
    cfg = menus([BootEntry("stable", "stable (Debian)", "/stable/vmlinuz", "/stable/initrd.img", "root=x"),
                 BootEntry("rescue", "rescue", "/rescue/vmlinuz", "/rescue/initrd.img", "rdinit=/sbin/init")])
    grub = cfg["EFI/debian/grub.cfg"]
    load = grub.index("load_env --file $prefix/grubenv next_entry")
    assert grub.index("set default=0") < load < grub.index('set default="${next_entry}"') < grub.index(
        "save_env --file $prefix/grubenv next_entry") < grub.index("menuentry")


def test_boot_control_takes_only_the_hosts_own_oses(stick: Path) -> None:
    control = BootControl(["stable", "next"], disk=str(stick), uefi=False)
    with pytest.raises(ValueError, match="boots stable, next, not 'rescue'"):
        control.next_boot("rescue")
    assert control.next_boot("next") == str(stick)
    assert bootonce.syslinux_once(str(stick)) == "next"
    bootonce.set_syslinux_once(str(stick), None)
