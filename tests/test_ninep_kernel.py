"""The real Linux 9p client (Debian's kernel, v9fs, in a QEMU TCG guest) against our server.

The guest has no network: our server's loopback port is a QEMU virtio-serial port in the
guest, which busybox nc relays to the guest's own loopback so the kernel mounts with
trans=tcp (a virtio port cannot serve trans=fd: the kernel cannot write to it). One boot runs
a script of file operations and reports each as ``@@ NAME rc=N out=...``; the tests read them.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.ninep.localfs import Export
from testdriver.ninep_servers import OurServer

pytestmark = pytest.mark.slow

MODULES = ("virtio_pci", "virtio_console", "9pnet_fd", "9p")

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /lib/modules/order); do insmod /lib/modules/$m.ko 2>/dev/null; done
ip link set lo up
sleep 1
PORT=$(ls /dev/vport*p1 | head -1)
nc -l -p 5640 0<>$PORT 1>&0 &
sleep 1
c() { name=$1; shift; out=$("$@" 2>&1); rc=$?; echo "@@ $name rc=$rc out=$(echo "$out" | tr '\n' '|')"; }
c mount mount -t 9p -o trans=tcp,port=5640,version=9p2000.L,msize=262144,cache=none,access=client,aname=/ 127.0.0.1 /n
c ls_root ls /n
c ls_fs ls /n/fs
c cat cat /n/fs/data/hello
c create sh -c 'echo from-guest > /n/fs/data/new && cat /n/fs/data/new'
c mkdir mkdir /n/fs/data/dir
c rename mv /n/fs/data/new /n/fs/data/dir/moved
c ls_dir ls /n/fs/data/dir
c symlink ln -s hello /n/fs/data/link
c readlink readlink /n/fs/data/link
c follow cat /n/fs/data/link
c big sh -c 'dd if=/dev/zero of=/n/fs/data/big bs=64k count=32 2>/dev/null && md5sum /n/fs/data/big'
c chmod sh -c 'chmod 640 /n/fs/data/hello && stat -c %a /n/fs/data/hello'
c truncate sh -c 'truncate -s 5 /n/fs/data/hello && cat /n/fs/data/hello'
c statfs stat -f -c %b /n/fs/data
c dotdot ls /n/fs/data/../..
c ro_write touch /n/fs/ro/x
c ro_read cat /n/fs/ro/kept
c mkfifo mkfifo /n/fs/data/fifo
c unlink rm /n/fs/data/dir/moved /n/fs/data/link /n/fs/data/big
c rmdir rmdir /n/fs/data/dir
c status cat /n/status
c kernel cat /n/os/kernel/release
c hw ls /n/hw
c ctl sh -c 'echo "event from-kernel" > /n/ctl'
c umount umount /n
echo "@@ done"
poweroff -f
"""


def qemu() -> str | None:
    return shutil.which("qemu-system-x86_64")


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, tuple[int, str]], Path]]:
    if qemu() is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    from testdriver import testkit

    cache = testkit.DEFAULT_CACHE
    debs = cache / "debs"
    kernel_deb = testkit.download(testkit.kernel_package(), debs)
    busybox_deb = testkit.download(testkit.BUSYBOX, debs)
    key = hashlib.sha256("\0".join([INIT, kernel_deb.name, busybox_deb.name, *MODULES]).encode()).hexdigest()[:16]
    kdir = cache / f"ninep-{key}"
    if not (kdir / "initrd.cpio").exists():
        kdir.mkdir(parents=True, exist_ok=True)
        _vmlinuz, _version, order = testkit.extract_kernel(kernel_deb, kdir, MODULES)
        busybox = testkit.extract_busybox(busybox_deb, kdir / "busybox")
        archive = testkit.Newc()
        for d in ("bin", "dev", "proc", "sys", "tmp", "n", "lib", "lib/modules"):
            archive.dir(d)
        archive.chardev("dev/console", 5, 1)
        archive.file("bin/busybox", busybox.read_bytes(), 0o755)
        archive.file("init", INIT.encode(), 0o755)
        for name in order:
            archive.file(f"lib/modules/{name}.ko", (kdir / f"{name}.ko").read_bytes())
        archive.file("lib/modules/order", ("\n".join(order) + "\n").encode())
        (kdir / "initrd.tmp").write_bytes(archive.finish())
        (kdir / "initrd.tmp").rename(kdir / "initrd.cpio")

    base = tmp_path_factory.mktemp("kernel")
    (base / "data").mkdir()
    (base / "ro").mkdir()
    (base / "data" / "hello").write_bytes(b"hello from the host\n")
    (base / "ro" / "kept").write_bytes(b"read-only\n")
    server = OurServer([Export("data", str(base / "data")), Export("ro", str(base / "ro"), readonly=True)],
                       ctl_allow=["event"]).start()
    port = server.address.rpartition(":")[2]
    try:
        proc = subprocess.run(
            [qemu() or "qemu-system-x86_64", "-accel", "tcg", "-m", "512", "-nographic", "-no-reboot",
             "-nic", "none", "-kernel", str(kdir / "vmlinuz"), "-initrd", str(kdir / "initrd.cpio"),
             "-append", "console=ttyS0 loglevel=3 mitigations=off panic=-1",
             "-device", "virtio-serial-pci", "-chardev", f"socket,id=p9,host=127.0.0.1,port={port}",
             "-device", "virtserialport,chardev=p9,name=p9"],
            capture_output=True, text=True, errors="replace", timeout=600, check=False)
        results: dict[str, tuple[int, str]] = {}
        for m in re.finditer(r"@@ (\w+) rc=(\d+) out=(.*)", proc.stdout):
            results[m.group(1)] = (int(m.group(2)), m.group(3).strip().rstrip("|"))
        assert "@@ done" in proc.stdout, proc.stdout[-3000:]
        yield results, base
    finally:
        server.stop()


def test_mount_and_namespace(guest: tuple[dict[str, tuple[int, str]], Path]) -> None:
    r, _base = guest
    assert r["mount"][0] == 0, r["mount"]
    assert set(r["ls_root"][1].split("|")) == {"ctl", "events", "fs", "hw", "os", "recent", "status", "svc"}
    assert r["ls_fs"][1].split("|") == ["data", "ro"]
    assert r["dotdot"][1].split("|") == ["ctl", "events", "fs", "hw", "os", "recent", "status", "svc"]
    assert r["umount"][0] == 0


def test_file_operations(guest: tuple[dict[str, tuple[int, str]], Path]) -> None:
    r, base = guest
    assert r["cat"] == (0, "hello from the host")
    assert r["create"] == (0, "from-guest")
    assert r["mkdir"][0] == 0 and r["rename"][0] == 0 and r["ls_dir"] == (0, "moved")
    assert r["symlink"][0] == 0 and r["readlink"] == (0, "hello")
    assert r["follow"] == (0, "hello from the host")
    # 2 MiB of zeros written through the kernel, read back for the checksum
    assert r["big"] == (0, "b2d1236c286a3c0704224fe4105eca49  /n/fs/data/big")
    assert r["chmod"] == (0, "640")
    assert r["truncate"] == (0, "hello")
    assert r["unlink"][0] == 0 and r["rmdir"][0] == 0
    assert sorted(p.name for p in (base / "data").iterdir()) == ["hello"]
    assert (base / "data" / "hello").read_bytes() == b"hello"


def test_statfs_and_refusals(guest: tuple[dict[str, tuple[int, str]], Path]) -> None:
    r, base = guest
    import os

    assert r["statfs"][0] == 0 and int(r["statfs"][1]) == os.statvfs(base / "data").f_blocks
    assert r["ro_write"][0] != 0 and "Read-only file system" in r["ro_write"][1]
    assert r["ro_read"] == (0, "read-only")
    assert r["mkfifo"][0] != 0 and "not permitted" in r["mkfifo"][1]
    assert not (base / "ro" / "x").exists()


def test_state_files(guest: tuple[dict[str, tuple[int, str]], Path]) -> None:
    r, _base = guest
    assert '"exports"' in r["status"][1]
    assert r["kernel"][0] == 0 and r["kernel"][1] == __import__("os").uname().release
    assert "cpu" in r["hw"][1].split("|") and "json" in r["hw"][1].split("|")
    assert r["ctl"][0] == 0
