"""A fast real boot fixture for the machine driver: Debian's kernel plus a busybox initramfs.

It needs no image builder. ``apt-get download`` fetches Debian's kernel and busybox-static
into a cache; the initramfs holds busybox, the storage and NIC driver modules (with their
dependencies, read from each module's ``.modinfo``) and an ``/init`` that reports, as
``CLUSTERCTL`` events, what the emulated hardware really shows a Linux guest: DMI strings and
chassis type, disks with model/serial/rotational, NIC MACs, a display, the firmware kind.

Kernel command line switches (``testkit.*``): ``host=``/``role=`` are echoed in ``ready``;
``ip=ADDR/LEN`` configures eth0 and reports ``net``; ``hosts=NAME:SERIAL:ROLE,...`` recognises
the host by DMI serial (``matched``); ``install=1`` copies the boot stick to the smallest
internal disk (``installed``) and powers off; ``hold=1`` keeps a shell on the console
after ``ready`` (type ``ev NAME key=value key:=json`` to emit an event); otherwise the guest
powers off after ``ready``.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import os
import re
import struct
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "clusterctl" / "testkit"
KERNEL_META = "linux-image-amd64"
BUSYBOX = "busybox-static"

# Drivers for every disk bus and NIC model a board can have; dependencies are added from .modinfo.
MODULES = (
    "virtio_pci", "virtio_blk", "virtio_net", "nvme", "ahci", "sd_mod", "xhci_pci", "usb_storage",
    "e1000", "e1000e", "8139cp", "8139too", "sdhci_pci", "mmc_block",
)  # fmt: skip
MODULE_PARAMS = {"usb_storage": "delay_use=0"}  # a USB disk is usable at once, not after 1 s

INIT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /run
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
arg() { sed -n "s/.*testkit\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
ev started uptime:="$(cut -d' ' -f1 /proc/uptime)"
while read -r mod params; do
  insmod "/lib/modules/$mod.ko" $params || echo "testkit: insmod $mod failed"
done < /lib/modules/order
# No udev here: wait until the set of block devices has stopped changing (USB enumerates late).
last=""; same=0; n=0
while [ $same -lt 6 ] && [ $n -lt 100 ]; do
  now="$(ls /sys/block)"; if [ "$now" = "$last" ]; then same=$((same+1)); else same=0; last="$now"; fi
  sleep 0.25; n=$((n+1))
done
js() { printf '"%s"' "$(printf '%s' "$1" | sed 's/^ *//; s/ *$//; s/\\/\\\\/g; s/"/\\"/g' | tr -d '\000-\037')"; }
rd() { [ -r "$1" ] && cat "$1" 2>/dev/null; }
# ATA IDENTIFY (VPD page 89h, from byte 60): model is words 27-46, each word's bytes swapped.
ata_model() { dd if="$1" bs=2 skip=57 count=20 conv=swab 2>/dev/null; }
vpd_serial() { dd if="$1" bs=1 skip=4 2>/dev/null; }
# A USB disk's serial is its USB device's iSerialNumber: the nearest ancestor with idVendor.
usb_serial() {
  p="$(readlink -f "$1/device")"
  while [ -n "$p" ] && [ "$p" != / ]; do
    [ -r "$p/idVendor" ] && { rd "$p/serial"; return; }; p="${p%/*}"
  done
}
disks=""; stick=""; target=""; target_size=0
for path in /sys/block/*; do
  d="${path##*/}"; [ -e "$path/device" ] || continue
  case "$d" in mmcblk*boot*|mmcblk*rpmb) continue;; esac
  model=""; serial=""
  case "$d" in
    nvme*) model="$(rd $path/device/model)"; serial="$(rd $path/device/serial)";;
    vd*) serial="$(rd $path/serial)";;
    mmcblk*) model="$(rd $path/device/name)"; serial="$(rd $path/device/serial)";;
    sd*) if [ "$(rd $path/device/vendor | tr -d ' ')" = "ATA" ] && [ -r $path/device/vpd_pg89 ]; then
           model="$(ata_model $path/device/vpd_pg89)"
         else model="$(rd $path/device/model)"; fi
         [ -r $path/device/vpd_pg80 ] && serial="$(vpd_serial $path/device/vpd_pg80)"
         [ -z "$serial" ] && serial="$(usb_serial $path)";;
  esac
  rot=false; [ "$(rd $path/queue/rotational)" = 1 ] && rot=true
  rem=false; [ "$(rd $path/removable)" = 1 ] && rem=true
  size=$(( $(rd $path/size) * 512 ))
  one="{\"name\": $(js $d), \"size\": $size, \"model\": $(js "$model"), \"serial\": $(js "$serial")"
  disks="$disks${disks:+, }$one, \"rotational\": $rot, \"removable\": $rem}"
  if [ $rem = true ]; then stick=$d
  elif [ -z "$target" ] || [ $size -lt $target_size ]; then target=$d; target_size=$size; fi
done
nics=""
for path in /sys/class/net/*; do
  n="${path##*/}"; [ -e "$path/device" ] || continue
  drv="$(readlink $path/device/driver)"; drv="${drv##*/}"
  nics="$nics${nics:+, }{\"name\": $(js $n), \"mac\": $(js "$(rd $path/address)"), \"driver\": $(js "$drv")}"
done
display=false
for c in /sys/bus/pci/devices/*/class; do case "$(cat $c)" in 0x03*) display=true;; esac; done
battery=false
for t in /sys/class/power_supply/*/type; do [ "$(rd $t)" = Battery ] && battery=true; done
fw=bios; [ -d /sys/firmware/efi ] && fw=uefi
id=/sys/class/dmi/id
dmi="\"vendor\": $(js "$(rd $id/sys_vendor)"), \"product\": $(js "$(rd $id/product_name)")"
dmi="$dmi, \"version\": $(js "$(rd $id/product_version)"), \"serial\": $(js "$(rd $id/product_serial)")"
dmi="$dmi, \"uuid\": $(js "$(rd $id/product_uuid)"), \"chassis_type\": $(rd $id/chassis_type || echo 0)"
dmi="$dmi, \"chassis_vendor\": $(js "$(rd $id/chassis_vendor)")"
dmi="$dmi, \"board_vendor\": $(js "$(rd $id/board_vendor)"), \"board_name\": $(js "$(rd $id/board_name)")"
mem=$(sed -n 's/^MemTotal: *\([0-9]*\).*/\1/p' /proc/meminfo)
inv="\"source\": \"testkit\", \"firmware\": \"$fw\", \"dmi\": {$dmi}"
inv="$inv, \"cpus\": $(grep -c ^processor /proc/cpuinfo), \"memory_kb\": $mem"
inv="$inv, \"disks\": [$disks], \"nics\": [$nics], \"display\": $display, \"battery\": $battery"
echo "CLUSTERCTL {\"event\": \"inventory\", $inv}"
ip="$(arg ip)"
if [ -n "$ip" ]; then
  ip link set lo up; ip addr add "$ip" dev eth0 && ip link set eth0 up && ev net ip="$ip" dev=eth0
fi
host="$(arg host)"; role="$(arg role)"
# testkit.hosts=NAME:SERIAL:ROLE,...: a stand-in for a universal installer's recognition, by DMI serial.
hosts="$(arg hosts)"
if [ -n "$hosts" ]; then
  serial="$(rd $id/product_serial)"
  for entry in $(echo "$hosts" | tr , ' '); do
    h="${entry%%:*}"; rest="${entry#*:}"
    [ "${rest%%:*}" = "$serial" ] && { host="$h"; role="${rest#*:}"; }
  done
  if [ -z "$host" ]; then ev error stage=match message="no host has DMI serial $serial"; poweroff -f; fi
  ev matched host="$host" role="$role" why="DMI serial $serial"
fi
# testkit.install=1: booted from a stick, copy it to the smallest internal disk and power off,
# as an installer that asks for the stick to be pulled; booted from that disk, carry on to ready.
if [ "$(arg install)" = 1 ] && [ -n "$stick" ] && [ -n "$target" ]; then
  dd if=/dev/$stick of=/dev/$target bs=1M 2>/dev/null && sync
  ev installed host="$host" role="$role" disk=/dev/$target
  poweroff -f
fi
ev ready host="$host" role="$role" os=testkit
if [ "$(arg hold)" = 1 ]; then
  echo "testkit: shell on the console"
  exec sh
fi
poweroff -f
"""

# ev NAME [key=value | key:=json]...: one event line on the console, built without any literal
# marker in the typed command (the console echoes what is typed; a test must not see it as an event).
EV = r"""#!/bin/sh
name="$1"; shift
out="{\"event\": \"$name\""
for kv in "$@"; do
  k="${kv%%=*}"; v="${kv#*=}"
  case "$k" in
    *:) out="$out, \"${k%:}\": $v";;
    *) v="$(printf '%s' "$v" | sed 's/\\/\\\\/g; s/"/\\"/g')"; out="$out, \"$k\": \"$v\"";;
  esac
done
echo "CLUSTERCTL $out}"
"""


@dataclass(frozen=True)
class TestKit:
    """A kernel and initramfs that boot any board in seconds and report what they see."""

    __test__ = False  # not a pytest test class, despite its name

    kernel: Path
    initrd: Path
    kernel_version: str

    def append(self, host: str = "", role: str = "", ip: str = "", hold: bool = False,
               hosts: dict[str, tuple[str, str]] | None = None, install: bool = False) -> str:  # fmt: skip
        """The kernel command line for one boot; ``hosts`` maps host → (DMI serial, role)."""
        parts = ["console=ttyS0", "loglevel=4", "mitigations=off", "panic=-1"]
        if install:
            parts.append("testkit.install=1")
        if hosts:
            parts.append("testkit.hosts=" + ",".join(f"{h}:{serial}:{r}" for h, (serial, r) in hosts.items()))
        if host:
            parts.append(f"testkit.host={host}")
        if role:
            parts.append(f"testkit.role={role}")
        if ip:
            parts.append(f"testkit.ip={ip}")
        if hold:
            parts.append("testkit.hold=1")
        return " ".join(parts)

    def make_iso(self, out: Path, loopback: bool = True, signed: bool = True) -> Path:
        """An ISO 9660 image holding the kit, as a distribution's live ISO holds its system: with
        a /boot/grub/loopback.cfg (unless ``loopback`` is false) whose entry boots the kit with
        ``testkit.host=${iso_path}``, so ``ready`` tells which file GRUB found it in. Debian's
        kernel is signed; ``signed=False`` strips its signature, as a home-built kernel has none."""
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            tree = Path(tmp)
            (tree / "kit").mkdir()
            kernel = self.kernel.read_bytes()
            (tree / "kit" / "vmlinuz").write_bytes(kernel if signed else without_signature(kernel))
            (tree / "kit" / "initrd").write_bytes(self.initrd.read_bytes())
            (tree / "boot" / "grub").mkdir(parents=True)
            cfg = ("set timeout=0\nmenuentry 'the test kit, from an ISO file' {\n"
                   f"  linux /kit/vmlinuz {self.append(role='iso')} testkit.host=${{iso_path}}\n"
                   "  initrd /kit/initrd\n}\n")
            (tree / "boot" / "grub" / ("loopback.cfg" if loopback else "grub.cfg")).write_text(cfg)
            _run(["xorriso", "-as", "mkisofs", "-quiet", "-R", "-J", "-V", "CLUSTERCTL_KIT", "-o", str(out), str(tree)])
        return out


class TestKitError(RuntimeError):
    pass


def without_signature(pe: bytes) -> bytes:
    """A signed PE program (an EFI-stub kernel) with its Authenticode signature cut off: the
    certificate table's entry zeroed and the table (at the end of the file) dropped."""
    at = struct.unpack_from("<I", pe, 0x3C)[0] + 24
    entry = at + (112 if struct.unpack_from("<H", pe, at)[0] == 0x20B else 96) + 4 * 8
    offset, size = struct.unpack_from("<II", pe, entry)
    if not size:
        return pe
    out = bytearray(pe[:offset])
    struct.pack_into("<II", out, entry, 0, 0)
    return bytes(out)


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    try:
        return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True).stdout
    except FileNotFoundError:
        raise TestKitError(f"{cmd[0]} not found (the test kit needs Debian's apt and dpkg)") from None
    except subprocess.CalledProcessError as e:
        raise TestKitError(f"{' '.join(cmd)} failed: {e.stderr.strip()}") from None


def kernel_package() -> str:
    """The versioned kernel package the metapackage points at, e.g. linux-image-6.1.0-56-amd64."""
    out = _run(["apt-cache", "depends", KERNEL_META])
    m = re.search(r"Depends: (linux-image-[0-9][^\s]*-amd64)", out)
    if not m:
        raise TestKitError(f"cannot tell which kernel {KERNEL_META} depends on:\n{out}")
    return m.group(1)


def download(package: str, dest: Path) -> Path:
    """The package's .deb in ``dest`` (fetched with ``apt-get download`` once)."""
    dest.mkdir(parents=True, exist_ok=True)
    prefix = package + "_"
    found = sorted(dest.glob(prefix + "*.deb"))
    if not found:
        _run(["apt-get", "download", package], cwd=dest)
        found = sorted(dest.glob(prefix + "*.deb"))
    if not found:
        raise TestKitError(f"apt-get download {package} left no .deb in {dest}")
    return found[-1]


def _deb_members(deb: Path) -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]:
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                yield member, tar
    finally:
        proc.stdout.close()
        proc.wait()


def modinfo(ko: bytes) -> dict[str, str]:
    """The ``.modinfo`` section of an ELF64 kernel module: name, depends, ..."""
    if ko[:4] != b"\x7fELF" or ko[4] != 2:
        raise TestKitError("not an ELF64 kernel module")
    shoff = struct.unpack_from("<Q", ko, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", ko, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", ko, shoff + i * shentsize)
        return name, offset, size

    _, str_off, _ = section(shstrndx)
    for i in range(shnum):
        name_off, offset, size = section(i)
        end = ko.index(b"\0", str_off + name_off)
        if ko[str_off + name_off : end] == b".modinfo":
            info: dict[str, str] = {}
            for item in ko[offset : offset + size].split(b"\0"):
                key, sep, value = item.decode("utf-8", "replace").partition("=")
                if sep and key not in info:
                    info[key] = value
            return info
    return {}


def _module_name(filename: str) -> str:
    base = filename.rsplit("/", 1)[-1]
    for ext in (".ko.xz", ".ko.zst", ".ko"):
        if base.endswith(ext):
            base = base[: -len(ext)]
    return base.replace("-", "_")


def _ko_bytes(member: tarfile.TarInfo, tar: tarfile.TarFile) -> bytes:
    f = tar.extractfile(member)
    assert f is not None
    data = f.read()
    if member.name.endswith(".ko.xz"):
        data = lzma.decompress(data)
    elif member.name.endswith(".ko.zst"):
        data = subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=True).stdout
    return data


def module_closure(wanted: Iterable[str], depends: dict[str, list[str]]) -> list[str]:
    """``wanted`` and everything they need, dependencies before dependents (insmod order)."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen or name not in depends:  # absent: built into the kernel
            return
        seen.add(name)
        for dep in depends[name]:
            visit(dep)
        order.append(name)

    for name in wanted:
        visit(name)
    return order


def extract_kernel(deb: Path, dest: Path, wanted: Iterable[str] = MODULES) -> tuple[Path, str, list[str]]:
    """vmlinuz and the wanted modules (with dependencies) into ``dest``; (vmlinuz, version, insmod order)."""
    dest.mkdir(parents=True, exist_ok=True)
    depends: dict[str, list[str]] = {}
    vmlinuz: Path | None = None
    version = ""
    # Pass 1: the kernel image, and every module's dependencies (the .deb has no modules.dep).
    for member, tar in _deb_members(deb):
        if re.fullmatch(r"\./boot/vmlinuz-.*", member.name):
            version = member.name.split("vmlinuz-", 1)[1]
            vmlinuz = dest / "vmlinuz"
            f = tar.extractfile(member)
            assert f is not None
            vmlinuz.write_bytes(f.read())
        elif re.search(r"\.ko(\.xz|\.zst)?$", member.name):
            info = modinfo(_ko_bytes(member, tar))
            depends[_module_name(member.name)] = [d.replace("-", "_") for d in info.get("depends", "").split(",") if d]
    if vmlinuz is None:
        raise TestKitError(f"{deb.name} holds no /boot/vmlinuz-*")
    order = module_closure(wanted, depends)
    missing = [m for m in wanted if m not in depends]
    if missing:
        raise TestKitError(f"{deb.name} lacks modules {', '.join(missing)}")
    # Pass 2: only the modules needed.
    needed = set(order)
    for member, tar in _deb_members(deb):
        if re.search(r"\.ko(\.xz|\.zst)?$", member.name) and _module_name(member.name) in needed:
            (dest / f"{_module_name(member.name)}.ko").write_bytes(_ko_bytes(member, tar))
    return vmlinuz, version, order


def extract_busybox(deb: Path, dest: Path) -> Path:
    for member, tar in _deb_members(deb):
        if member.name == "./bin/busybox":
            f = tar.extractfile(member)
            assert f is not None
            dest.write_bytes(f.read())
            dest.chmod(0o755)
            return dest
    raise TestKitError(f"{deb.name} holds no /bin/busybox")


class Newc:
    """A cpio archive in the kernel's initramfs format (newc), built in memory.

    Written here rather than with cpio(1) so that /dev/console can be a device node
    without mknod (and without root).
    """

    def __init__(self) -> None:
        self._out = io.BytesIO()
        self._ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        encoded = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._ino += 1
        self._out.write(header + encoded)
        self._out.write(b"\0" * (-(len(header) + len(encoded)) % 4))
        self._out.write(data)
        self._out.write(b"\0" * (-len(data) % 4))

    def dir(self, name: str) -> None:
        self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, 0o100000 | perm, data)

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, 0o020600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self._out.getvalue()


def build_initramfs(busybox: Path, modules_dir: Path, order: list[str]) -> bytes:
    archive = Newc()
    for d in ("bin", "dev", "proc", "sys", "tmp", "run", "lib", "lib/modules"):
        archive.dir(d)
    archive.chardev("dev/console", 5, 1)
    archive.file("bin/busybox", busybox.read_bytes(), 0o755)
    archive.file("bin/ev", EV.encode(), 0o755)
    archive.file("init", INIT.encode(), 0o755)
    for name in order:
        archive.file(f"lib/modules/{name}.ko", (modules_dir / f"{name}.ko").read_bytes())
    lines = "".join(f"{m} {MODULE_PARAMS.get(m, '')}".rstrip() + "\n" for m in order)
    archive.file("lib/modules/order", lines.encode())
    return archive.finish()


STICK_FILES = {
    "loader/loader.conf": "default testkit.conf\ntimeout 0\n",
    "loader/entries/testkit.conf": "title clusterctl test kit\nlinux /vmlinuz\ninitrd /initrd\noptions {append}\n",
    "syslinux.cfg": "DEFAULT testkit\nPROMPT 0\nLABEL testkit\n KERNEL /vmlinuz\n INITRD /initrd\n APPEND {append}\n",
}
SYSTEMD_BOOT = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
SYSLINUX_MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")


def build_stick(kit: TestKit, dest: Path, append: str, size: int = 0) -> Path:
    """A raw disk image that boots the kit under both firmwares: MBR + one FAT partition (type EF)
    holding systemd-boot as the removable-media loader (UEFI) and syslinux (BIOS).

    Built on a plain file, without loop devices or mounts (sfdisk, mkfs.vfat --offset, mtools,
    syslinux --offset), so that the driver's disk and USB boot paths can be tested before the
    image builder exists.
    """
    if not size:  # room for the kernel, the initramfs and the loaders, rounded up to 8 MiB
        payload = kit.kernel.stat().st_size + kit.initrd.stat().st_size + SYSTEMD_BOOT.stat().st_size
        size = -(-(payload + 12 * 2**20) // (8 * 2**20)) * 8 * 2**20
    start = 2048  # sectors: the partition begins at 1 MiB
    sectors = size // 512
    tmp = dest.with_suffix(".tmp")
    with tmp.open("wb") as f:
        f.truncate(size)
    _run_input(["sfdisk", "--quiet", str(tmp)], f"label: dos\nstart={start}, type=ef, bootable\n")
    _run(["mkfs.vfat", "-F", "16", "-n", "CLUSTERKIT", f"--offset={start}", "-h", str(start),
          str(tmp), str((sectors - start) // 2)])  # fmt: skip
    image = f"{tmp}@@{start * 512}"
    _run(["mmd", "-i", image, "::/EFI", "::/EFI/BOOT", "::/loader", "::/loader/entries"])
    _run(["mcopy", "-i", image, str(SYSTEMD_BOOT), "::/EFI/BOOT/BOOTX64.EFI"])
    _run(["mcopy", "-i", image, str(kit.kernel), "::/vmlinuz"])
    _run(["mcopy", "-i", image, str(kit.initrd), "::/initrd"])
    with tempfile.TemporaryDirectory() as td:
        for name, text in STICK_FILES.items():
            local = Path(td) / name.replace("/", "_")
            local.write_text(text.format(append=append))
            _run(["mcopy", "-i", image, str(local), f"::/{name}"])
    _run(["syslinux", "--offset", str(start * 512), "--install", str(tmp)])
    with tmp.open("r+b") as f:  # the MBR's boot code: jump to the active partition's boot sector
        f.write(SYSLINUX_MBR.read_bytes()[:440])
    tmp.rename(dest)
    return dest


def _run_input(cmd: list[str], text: str) -> None:
    try:
        subprocess.run(cmd, input=text, check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as e:
        raise TestKitError(f"{' '.join(cmd)} failed: {e.stderr.strip()}") from None


def ensure_testkit(cache_dir: Path | None = None) -> TestKit:
    """Download (once) and build (when its inputs change) the test kit; cheap when cached."""
    cache = (cache_dir or DEFAULT_CACHE).resolve()
    debs = cache / "debs"
    kernel_deb = download(kernel_package(), debs)
    busybox_deb = download(BUSYBOX, debs)
    kdir = cache / kernel_deb.stem
    order_file = kdir / "order"
    if not order_file.exists():
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            work = Path(tmp) / "k"
            _, version, order = extract_kernel(kernel_deb, work)
            (work / "version").write_text(version)
            (work / "order").write_text("\n".join(order) + "\n")
            work.rename(kdir)
    version = (kdir / "version").read_text().strip()
    order = order_file.read_text().split()
    busybox = cache / f"{busybox_deb.stem}.busybox"
    if not busybox.exists():
        extract_busybox(busybox_deb, busybox)
    key = hashlib.sha256(
        "\0".join([INIT, EV, kernel_deb.name, busybox_deb.name, *order, repr(MODULE_PARAMS)]).encode()
    ).hexdigest()[:16]
    initrd = cache / f"initramfs-{key}.cpio"
    if not initrd.exists():
        tmp_path = initrd.with_suffix(".tmp")
        tmp_path.write_bytes(build_initramfs(busybox, kdir, order))
        tmp_path.rename(initrd)
    return TestKit(kernel=kdir / "vmlinuz", initrd=initrd, kernel_version=version)


if __name__ == "__main__":
    kit = ensure_testkit()
    print(f"kernel  {kit.kernel} ({kit.kernel_version})\ninitrd  {kit.initrd}")
