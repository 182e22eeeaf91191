"""agent/cloud.py without a VM: reading NoCloud and ConfigDrive metadata, finding the seed among
block devices (real blkid on seeds made as the QEMU test makes them), the hostname and keys it
applies, and growing a root partition's GPT entry with the real sfdisk on a disk file."""

from __future__ import annotations

import getpass
import os
import subprocess
from pathlib import Path

import pytest

from agent.cloud import (
    ALIGN_SECTORS,
    RootPartition,
    SeedError,
    apply_hostname,
    apply_keys,
    find_seed,
    grow_table,
    grown_size,
    hosts_text,
    key_owner,
    parse_configdrive,
    parse_nocloud,
    read_seed_dir,
    root_partition,
)
from core.disk import gpt
from testdriver.provider import make_configdrive_json, make_nocloud_seed

KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH1mB0tt9bqDq6lLh4cFQ1m0aX5C1l2yP0Zb2x5t3Qk9 ops@provider"
KEY_B = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTY= deploy@ci"
MiB = 1024 * 1024


def test_nocloud_meta_and_user_data() -> None:
    md = parse_nocloud("instance-id: i-1\nlocal-hostname: vm-7\npublic-keys:\n  - " + KEY_A + "\n",
                       f"#cloud-config\nfqdn: vm-7.example.net\nssh_authorized_keys: ['{KEY_B}', '{KEY_A}']\n"
                       f"users:\n  - name: x\n    ssh_authorized_keys: ['{KEY_B}']\n")
    assert (md.source, md.hostname, md.ssh_keys) == ("nocloud", "vm-7.example.net", [KEY_A, KEY_B])
    # user-data that is not #cloud-config (a script) is not read; public-keys may be a mapping.
    md = parse_nocloud(f"local-hostname: vm-8\npublic-keys: {{one: '{KEY_B}', bad: 'not a key'}}\n",
                       "#!/bin/sh\necho hi\n")
    assert (md.hostname, md.ssh_keys) == ("vm-8", [KEY_B])
    with pytest.raises(SeedError, match="meta-data: not YAML"):
        parse_nocloud("a: [b\n", None)


def test_configdrive_meta_data_json() -> None:
    md = parse_configdrive(make_configdrive_json("vm-9.cloud", {"k1": KEY_A, "k2": KEY_A}))
    assert (md.source, md.hostname, md.ssh_keys) == ("configdrive", "vm-9.cloud", [KEY_A])
    md = parse_configdrive('{"name": "vm-10", "keys": [{"type": "ssh", "data": "' + KEY_B + '"}]}')
    assert (md.hostname, md.ssh_keys) == ("vm-10", [KEY_B])
    with pytest.raises(SeedError, match="not JSON"):
        parse_configdrive("{")


def test_the_tests_seed_is_found_by_blkid_and_reads_back(tmp_path: Path) -> None:
    seed = make_nocloud_seed(tmp_path / "seed.img", hostname="vm-7.example", meta_keys=[KEY_A], user_keys=[KEY_B])
    out = subprocess.run(["blkid", "-c", "/dev/null", "-o", "export", str(seed)], capture_output=True,
                         text=True, check=True).stdout
    assert find_seed(out) == ("nocloud", str(seed), "vfat")
    files = tmp_path / "files"
    files.mkdir()
    subprocess.run(["mcopy", "-i", str(seed), "::meta-data", "::user-data", str(files)], check=True,
                   env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
    md = read_seed_dir("nocloud", files)
    assert (md.hostname, md.ssh_keys) == ("vm-7.example", [KEY_A, KEY_B])


def test_find_seed_prefers_nocloud_and_ignores_other_labels() -> None:
    out = ("DEVNAME=/dev/vda1\nLABEL=ESP\nTYPE=vfat\n\nDEVNAME=/dev/sr0\nLABEL=config-2\nTYPE=iso9660\n\n"
           "DEVNAME=/dev/vdc\nLABEL=cidata\nTYPE=iso9660\n\nDEVNAME=/dev/vdd\nLABEL=CIDATA\nTYPE=ext4\n")
    assert find_seed(out) == ("nocloud", "/dev/vdc", "iso9660")
    assert find_seed(out.replace("cidata", "data")) == ("configdrive", "/dev/sr0", "iso9660")
    assert find_seed("DEVNAME=/dev/vda2\nLABEL=root-stable\nTYPE=ext4\n") is None


def test_hostname_goes_to_etc_hostname_and_hosts(tmp_path: Path) -> None:
    (tmp_path / "hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\tedge-1.home.arpa edge-1\n::1\tlocalhost\n")
    assert apply_hostname("VM-7.Example.NET.", tmp_path, set_kernel=False) == "vm-7"
    assert (tmp_path / "hostname").read_text() == "vm-7\n"
    assert (tmp_path / "hosts").read_text() == ("127.0.0.1\tlocalhost\n127.0.1.1\tvm-7.example.net vm-7\n"
                                                "::1\tlocalhost\n")
    assert hosts_text("", "vm-8", None) == "127.0.1.1\tvm-8\n"
    with pytest.raises(SeedError, match="not a host name"):
        apply_hostname("-bad_name", tmp_path, set_kernel=False)


def test_keys_are_added_once_to_the_first_users_file(tmp_path: Path) -> None:
    profile = tmp_path / "profile.json"
    profile.write_text('{"cluster": {"users": [{"name": "admin"}, {"name": "bob"}]}}')
    assert key_owner(profile) == "admin"
    profile.write_text('{"cluster": {"users": []}}')
    assert key_owner(profile) == "root"
    me = getpass.getuser()
    (tmp_path / ".ssh").mkdir(mode=0o755)
    (tmp_path / ".ssh" / "authorized_keys").write_text(KEY_A + "\n")
    assert apply_keys([KEY_A, KEY_B], me, home=tmp_path) == 1
    assert apply_keys([KEY_B], me, home=tmp_path) == 0
    path = tmp_path / ".ssh" / "authorized_keys"
    assert path.read_text() == f"{KEY_A}\n{KEY_B}\n"
    assert path.stat().st_mode & 0o777 == 0o600


def test_root_partition_from_mountinfo_and_sysfs(tmp_path: Path) -> None:
    sysfs = tmp_path / "sys"
    vda = sysfs / "block" / "vda"
    for name, number, start, size in (("vda1", 1, 2048, 65536), ("vda2", 2, 67584, 1048576)):
        (vda / name).mkdir(parents=True)
        for f, v in (("partition", number), ("start", start), ("size", size)):
            (vda / name / f).write_text(f"{v}\n")
    (vda / "size").write_text(f"{64 * 1024 * 2048}\n")
    (sysfs / "dev" / "block").mkdir(parents=True)
    (sysfs / "dev" / "block" / "254:2").symlink_to(vda / "vda2")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("22 1 254:2 / / rw,relatime shared:1 - ext4 /dev/vda2 rw\n")
    root = root_partition(mountinfo, sysfs)
    assert root == RootPartition(disk="/dev/vda", node="/dev/vda2", number=2, start=67584, size=1048576,
                                 disk_size=64 * 1024 * 2048, last=True)
    # Growing ends on a MiB boundary before the backup GPT.
    new = grown_size(root)
    assert new is not None and (root.start + new) % ALIGN_SECTORS == 0 and root.start + new <= root.disk_size - 34
    (vda / "vda3").mkdir()
    for f, v in (("partition", 3), ("start", 2000000), ("size", 2048)):
        (vda / "vda3" / f).write_text(f"{v}\n")
    assert root_partition(mountinfo, sysfs).last is False  # type: ignore[union-attr]
    mountinfo.write_text("22 1 0:21 / / rw - tmpfs tmpfs rw\n")
    assert root_partition(mountinfo, sysfs) is None


def test_grow_table_moves_the_backup_gpt_and_extends_the_root(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    with disk.open("wb") as f:
        f.truncate(64 * MiB)
    parts = [gpt.Part("ESP", 1 * MiB, 8 * MiB, gpt.ESP_TYPE, "11111111-2222-4333-8444-555555555555"),
             gpt.Part("root-stable", 9 * MiB, 32 * MiB, gpt.ROOT_X86_64_TYPE, "66666666-7777-4888-9999-aaaaaaaaaaaa")]
    gpt.write_table(str(disk), parts, "01234567-89ab-4cde-8f01-23456789abcd")
    with disk.open("r+b") as f:  # the provider's disk is larger than the image
        f.truncate(256 * MiB)
    root = RootPartition("x", "x2", 2, 9 * 2048, 32 * 2048, 256 * 2048, True)
    size = grown_size(root)
    assert size == (255 - 9) * 2048
    grow_table(str(disk), 2, root.start, size)
    table = gpt.read_table(str(disk))
    grown = table.by_name("root-stable")
    assert grown is not None and (grown.start, grown.size) == (9 * MiB, 246 * MiB)
    assert grown.uuid == "66666666-7777-4888-9999-aaaaaaaaaaaa" and grown.type == gpt.ROOT_X86_64_TYPE
    verify = subprocess.run(["sfdisk", "--verify", str(disk)], capture_output=True, text=True)
    said = (verify.stdout + verify.stderr).lower()  # sfdisk reports a misplaced backup GPT with status 0
    assert verify.returncode == 0 and "no errors detected" in said and "backup gpt" not in said, said
    # Nothing more to gain: no second grow.
    assert grown_size(RootPartition("x", "x2", 2, 9 * 2048, 246 * 2048, 256 * 2048, True)) is None
