"""ISO files on the stick: entry names, the partition, the GRUB programs, menus, plan and profile.

Real tools throughout (mkfs.ext4, debugfs, dumpe2fs, grub-mkimage); booting the ISOs under
BIOS and UEFI is in tests/test_build_image.py.
"""

from __future__ import annotations

import os
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest
import yaml

from builder.commands.profile_cmds import plan_rows
from builder.filedigest import file_digest
from builder.plan import make_plan
from builder.profile import load_profile
from builder.stages import isoboot
from core.disk import bootmenu
from core.disk.bootmenu import BootEntry, menus, parse_entry
from tests.test_profile_errors import GOOD, errors_of

MiB = 1024 * 1024
FS_UUID = "2f2a6b0e-1c3d-4e5f-8a9b-0c1d2e3f4a5b"


@pytest.mark.parametrize(("path", "entry"), [
    ("/isos/debian-live-12.8.0-amd64-xfce.iso", "debian-live-12-8-0-amd64-xfce"),
    ("Test Kit.ISO", "test-kit"), ("ubuntu_24.04.iso", "ubuntu-24-04"), ("...iso", "iso"),
])  # fmt: skip
def test_entry_names_are_plain(path: str, entry: str) -> None:
    assert isoboot.iso_entry_name(path) == entry


def test_grub_config_hands_over_to_the_isos_loopback_cfg() -> None:
    cfg = isoboot.grub_config("live", FS_UUID, serial=True)
    assert "set iso_path=/live.iso\nexport iso_path\n" in cfg
    assert f"search --no-floppy --fs-uuid --set=isopart {FS_UUID}" in cfg
    assert "loopback loop ($isopart)$iso_path" in cfg and "configfile /boot/grub/loopback.cfg" in cfg
    # each way of failing is said on the console as an event line
    assert cfg.count('CLUSTERCTL {"event": "error", "stage": "iso", "os": "live"') == 3
    assert "serial --unit=0" in cfg and "lockdown" not in cfg
    # The ESP's signed GRUB has its consoles set up already; an unsigned kernel is not tried under
    # Secure Boot (GRUB's lockdown), and the screen says what to do.
    esp_cfg = isoboot.grub_config("live", FS_UUID, serial=False, kernel_signed=False)
    assert "serial --unit" not in esp_cfg and esp_cfg.count('"event": "error"') == 4
    # GRUB wraps a serial line at 80 columns: each event is echoed with that terminal widened.
    widen, restore = 'if [ "$clusterctl_serial" = y ]; then terminfo -g 250x50 serial; fi', "terminfo -g 80x24 serial"
    for chunk in esp_cfg.split("CLUSTERCTL")[1:]:
        assert restore in chunk.split("\n", 2)[1]
    assert esp_cfg.count(widen) == 4
    assert 'set clusterctl_serial=y\n  export clusterctl_serial' in bootmenu.grub_menu([], 3)
    refusal, _, rest = esp_cfg.partition("else\n")
    assert 'if [ "$lockdown" = "y" ]; then' in refusal and "turn Secure Boot off" in refusal
    assert "configfile /boot/grub/loopback.cfg" in rest and "configfile" not in refusal
    assert "lockdown" not in isoboot.grub_config("live", FS_UUID, serial=False, kernel_signed=True)


def _pe(cert_size: int, pe32_plus: bool = True) -> bytes:
    """The headers of a PE/COFF program, as far as the certificate table (data directory 4)."""
    data = bytearray(512)
    data[:2] = b"MZ"
    data[0x3C:0x40] = (0x80).to_bytes(4, "little")
    data[0x80:0x84] = b"PE\0\0"
    opt = 0x80 + 24
    data[opt:opt + 2] = (0x20B if pe32_plus else 0x10B).to_bytes(2, "little")
    cert = opt + (112 if pe32_plus else 96) + 4 * 8
    data[cert:cert + 8] = (0x400).to_bytes(4, "little") + cert_size.to_bytes(4, "little")
    return bytes(data)


def test_pe_signature_is_its_certificate_table(tmp_path: Path) -> None:
    assert isoboot.pe_signed(_pe(0x900)) and isoboot.pe_signed(_pe(0x900, pe32_plus=False))
    assert not isoboot.pe_signed(_pe(0)) and not isoboot.pe_signed(b"\x7fELF" + bytes(200))
    assert not isoboot.pe_signed(b"MZ")  # cut short: not a program at all
    # GRUB made by grub-mkimage is a real PE program with no signature.
    out = tmp_path / "grub.efi"
    subprocess.run(["grub-mkimage", "-O", "x86_64-efi", "-o", str(out), "-p", "/", "normal"], check=True)
    assert out.read_bytes()[:2] == b"MZ" and not isoboot.pe_signed(out.read_bytes())


def test_an_isos_kernels_are_read_from_its_loopback_cfg(tmp_path: Path) -> None:
    def iso(name: str, kernel: bytes, cfg: str | None) -> Path:
        tree = tmp_path / name
        (tree / "live").mkdir(parents=True)
        (tree / "live" / "vmlinuz").write_bytes(kernel)
        if cfg is not None:
            (tree / "boot" / "grub").mkdir(parents=True)
            (tree / "boot" / "grub" / "loopback.cfg").write_text(cfg)
        out = tmp_path / f"{name}.iso"
        subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-R", "-o", str(out), str(tree)], check=True)
        return out

    cfg = "menuentry live {\n  linux /live/vmlinuz boot=live findiso=${iso_path}\n  initrd /live/initrd\n}\n"
    assert isoboot.iso_kernels_signed(iso("signed", _pe(0x900), cfg)) is True
    assert isoboot.iso_kernels_signed(iso("unsigned", _pe(0), cfg)) is False
    assert isoboot.iso_kernels_signed(iso("missing", _pe(0x900), cfg.replace("/live/vmlinuz", "/live/gone"))) is False
    assert isoboot.iso_kernels_signed(iso("no-cfg", _pe(0x900), None)) is None


def test_iso_partition_holds_the_files_and_grub_can_read_it(tmp_path: Path) -> None:
    src = tmp_path / "My Live.iso"
    data = os.urandom(3 * MiB + 123)
    src.write_bytes(data)
    fs_uuid = str(uuid.uuid4())
    out = tmp_path / "isos.ext4"
    (tmp_path / "work").mkdir()
    rec = isoboot.build_iso_partition({"my-live": src}, fs_uuid, out, tmp_path / "work", tmp_path / "log")
    assert rec["content_bytes"] == len(data) and rec["size"] == out.stat().st_size and rec["size"] % MiB == 0
    dumped = tmp_path / "back.iso"
    subprocess.run(["debugfs", "-R", f"dump /my-live.iso {dumped}", str(out)], check=True, capture_output=True)
    assert dumped.read_bytes() == data
    head = subprocess.run(["dumpe2fs", "-h", str(out)], check=True, capture_output=True, text=True).stdout
    assert f"Filesystem UUID:          {fs_uuid}" in head and isoboot.ISOS_LABEL in head
    features = head.split("Filesystem features:")[1].splitlines()[0].split()
    assert not {"has_journal", "metadata_csum_seed", "orphan_file"} & set(features)
    assert not (tmp_path / "work" / "isos").exists()


def test_an_iso_that_starts_with_zeros_is_read_whole_by_grubs_own_ext4_reader(tmp_path: Path) -> None:
    # A non-hybrid ISO's first 32 KiB are zeros, and zero blocks sit between its files: mke2fs -d
    # makes them holes, and with more than four runs the extent tree gets an index level. GRUB
    # 2.06 then failed on block 0 ("invalid extent"); grub-fstest is GRUB's ext2 code on the host.
    block = isoboot.ISOS_BLOCK
    data = bytearray(8 * block)
    for _ in range(16):  # data, hole, data, hole...: 16 extents
        data += os.urandom(block) + bytes(block)
    data += os.urandom(1000)
    src = tmp_path / "plain.iso"
    src.write_bytes(data)
    out = tmp_path / "isos.ext4"
    (tmp_path / "work").mkdir()
    isoboot.build_iso_partition({"plain": src}, str(uuid.uuid4()), out, tmp_path / "work", tmp_path / "log")
    stat = subprocess.run(["debugfs", "-R", "stat /plain.iso", str(out)], check=True, capture_output=True,
                          text=True).stdout
    assert "(ETB0)" in stat  # the tree has its index level, as the failing ISOs had
    r = subprocess.run(["grub-fstest", str(out), "cmp", "(loop0)/plain.iso", str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    subprocess.run(["e2fsck", "-fn", str(out)], check=True, capture_output=True)


def test_iso_boot_files_carry_their_config(tmp_path: Path) -> None:
    out = tmp_path / "isoboot"
    out.mkdir()

    def run(argv: list[str]) -> None:
        subprocess.run(argv, check=True, capture_output=True)

    paths = isoboot.build_iso_boot("live", FS_UUID, False, out, tmp_path, run)
    assert paths == {"grub_cfg": "/isoboot/live.cfg", "bios": "/isoboot/live.lnx"}
    assert (out / "live.cfg").read_text() == isoboot.grub_config("live", FS_UUID, serial=False, kernel_signed=False)
    lnx = (out / "live.lnx").read_bytes()
    assert lnx.startswith(isoboot.LNXBOOT.read_bytes()) and lnx[0x202:0x206] == b"HdrS"  # a "Linux kernel"
    with tarfile.open(tmp_path / "live.memdisk.tar") as tar:
        assert tar.getnames() == ["boot", "boot/grub", "boot/grub/grub.cfg"]
        cfg = tar.extractfile("boot/grub/grub.cfg")
        assert cfg is not None and cfg.read().decode() == isoboot.grub_config("live", FS_UUID, serial=True)


def test_menus_run_the_script_of_an_iso_entry_and_installs_drop_it() -> None:
    files = menus([BootEntry("stable", "Debian stable", "/stable/vmlinuz", "/stable/initrd.img", "root=PARTUUID=x rw"),
                   BootEntry("live", "live (ISO)", "", "", "", grub_cfg="/isoboot/live.cfg",
                             bios="/isoboot/live.lnx")])
    assert sorted(files) == ["EFI/debian/grub.cfg", "loader/entries/10-stable.conf", "syslinux/boot.txt",
                             "syslinux/syslinux.cfg"]  # an ISO has no entry for first boot to read back
    assert files["syslinux/syslinux.cfg"].endswith("LABEL live\n  KERNEL /isoboot/live.lnx\n")
    assert parse_entry(files["loader/entries/10-stable.conf"]) is not None
    grub = files["EFI/debian/grub.cfg"]
    assert "set default=0\nset timeout=3\n" in grub
    assert ("menuentry 'Debian stable' --id 'stable' --hotkey=1 {\n  echo 'Loading Debian stable ...'\n"
            "  linux /stable/vmlinuz root=PARTUUID=x rw\n  initrd /stable/initrd.img\n}") in grub
    assert "menuentry 'live (ISO)' --id 'live' --hotkey=2 {\n  configfile /isoboot/live.cfg\n}" in grub


def _iso_profile(tmp_path: Path, extra_image: dict | None = None) -> Path:
    (tmp_path / "live.iso").write_bytes(b"live\n" * 1000)
    (tmp_path / "Rescue CD.iso").write_bytes(b"rescue cd\n" * 1000)
    data = yaml.safe_load(GOOD)
    data["oses"]["live"] = {"kind": "iso", "path": "live.iso"}
    data["roles"]["desktop"]["os"].append("live")
    data["images"]["stick"]["isos"] = ["Rescue CD.iso"]
    data["images"].update(extra_image or {})
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_plan_puts_isos_last_in_their_own_partition(tmp_path: Path) -> None:
    p = _iso_profile(tmp_path, {"left-disk": {"type": "disk", "host": "left", "size": "4GiB"}})
    plan = make_plan(load_profile(p))
    entries = plan.stages["esp:stick"].inputs["entries"]
    assert [(e["os"], e["kind"]) for e in entries] == [("stable", "system"), ("rescue", "rescue"),
                                                       ("live", "iso"), ("rescue-cd", "iso")]
    assert entries[3]["title"] == "rescue-cd (ISO Rescue CD.iso)"
    assert "grub-mkimage" in plan.stages["esp:stick"].inputs["tools"] and "grub" in plan.stages[
        "esp:stick"].inputs["boot_files"]
    isos = plan.stages["isos:stick"]
    assert [f["entry"] for f in isos.inputs["files"]] == ["live", "rescue-cd"]
    assert isos.inputs["files"][0]["sha256"] == file_digest(tmp_path / "live.iso")
    assert "isos:stick" in plan.stages["image:stick"].deps
    parts = plan.stages["image:stick"].inputs["partitions"]
    assert parts[-1]["name"] == "isos" and parts[-1]["type"] == isoboot.LINUX_DATA_TYPE
    assert {e["fs_uuid"] for e in entries[2:]} == {isos.inputs["fs_uuid"]}
    assert plan.images["stick"]["oses"] == ["stable", "rescue"]
    # A disk image has no ISO partition to boot them from: left out, and said.
    assert plan.images["left-disk"]["oses"] == ["stable", "rescue"] and "isos:left-disk" not in plan.stages
    assert any("'live' is an ISO" in w and "left-disk" in w for w in plan.warnings)
    # Images without ISOs have no GRUB in their ESP's key (nothing of theirs is rebuilt for it).
    assert "grub-mkimage" not in plan.stages["esp:left-disk"].inputs["tools"]
    # `clusterctl plan` shows the stick's ISO files beside its hosts' OSes.
    rows = {r["image"]: r for r in plan_rows(load_profile(p))}
    assert rows["stick"]["isos"] == ["rescue-cd"] and rows["left-disk"]["isos"] == []


def test_a_new_iso_remakes_its_partition_not_the_esp(tmp_path: Path) -> None:
    p = _iso_profile(tmp_path)
    before = make_plan(load_profile(p))
    (tmp_path / "live.iso").write_bytes(b"live, a newer release\n" * 1000)
    after = make_plan(load_profile(p))
    assert before.stages["isos:stick"].key != after.stages["isos:stick"].key
    assert before.stages["esp:stick"].key == after.stages["esp:stick"].key
    assert before.stages["image:stick"].key != after.stages["image:stick"].key


def test_file_digest_is_remembered_until_the_file_changes(tmp_path: Path) -> None:
    f, memo = tmp_path / "big.iso", tmp_path / "memo.json"
    f.write_bytes(b"a" * 1000)
    first = file_digest(f, memo)
    assert first == file_digest(f, memo) and len(first) == 64
    # The memo is what is read while the file is unchanged ...
    memo.write_text(memo.read_text().replace(first, "MEMO-VALUE"))
    assert file_digest(f, memo) == "MEMO-VALUE"
    # ... and a write to the file makes it hash the file again (and forget the old version).
    f.write_bytes(b"b" * 1000)
    second = file_digest(f, memo)
    assert second not in (first, "MEMO-VALUE") and "MEMO-VALUE" not in memo.read_text()


def test_iso_names_that_clash_are_located_errors(tmp_path: Path) -> None:
    (tmp_path / "stable.iso").write_bytes(b"x")
    (tmp_path / "a b.iso").write_bytes(b"x")
    (tmp_path / "a-b.iso").write_bytes(b"x")
    text = GOOD.replace("  stick: {type: usb-installer, hosts: [left, right], size: 4GiB}",
                        "  stick:\n    type: usb-installer\n    hosts: [left, right]\n"
                        "    isos: [stable.iso, a b.iso, a-b.iso]")
    assert errors_of(tmp_path, text) == [
        'p.yaml:21:12: images.stick.isos[0]: its menu entry would be "stable", the name of an OS: rename the file',
        'p.yaml:21:33: images.stick.isos[2]: its menu entry would be "a-b", as for isos[1]: rename one of the files',
    ]


def test_an_iso_os_needs_its_file(tmp_path: Path) -> None:
    text = GOOD.replace("  rescue: {kind: rescue}", "  rescue: {kind: rescue}\n  live: {kind: iso, path: gone.iso}")
    errs = errors_of(tmp_path, text)
    assert len(errs) == 1 and errs[0].startswith("p.yaml:7:") and '"gone.iso" does not exist' in errs[0]
