"""The QEMU command line that imitates a board, and the files it needs in a machine's work dir.

Kept apart from process handling so the command can be checked without booting anything.
Everything a machine writes lives in its work dir: qcow2 disks (sparse; overlays over a built
image, so a test never changes the image), a private copy of the UEFI variable store, the
SMBIOS type 3 table, and for a board with a battery its ACPI table (testdriver/acpi).
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from testdriver.acpi import AcpiError, battery_table
from testdriver.board import Board, Disk

QEMU = "qemu-system-x86_64"
QEMU_IMG = "qemu-img"

# Debian's ovmf package: the 4 MiB build first (what Debian's libvirt uses), then the 2 MiB one.
OVMF_PAIRS = (
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
    ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
)
# firmware: uefi-secure, as a PC leaves the factory: OVMF built with Secure Boot (its variable
# store guarded by SMM) and a store with Microsoft's keys enrolled and Secure Boot enforced.
OVMF_SECURE_PAIRS = (
    ("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd", "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"),
    ("/usr/share/OVMF/OVMF_CODE.secboot.fd", "/usr/share/OVMF/OVMF_VARS.ms.fd"),
)
UEFI_FIRMWARES = ("uefi", "uefi-secure")
NIC_DEVICES = {"virtio": "virtio-net-pci", "e1000": "e1000", "e1000e": "e1000e", "rtl8139": "rtl8139"}
SATA_PORTS = 6  # q35's built-in ICH9 AHCI controller: buses ide.0 … ide.5
STICK_ID = "stick"


class MachineSetupError(RuntimeError):
    """The host lacks something a machine needs (firmware, an image), or a board cannot be imitated."""


@dataclass
class MachineConfig:
    """What to start: a board plus how it boots and what is plugged in."""

    board: Board
    boot_image: Path | None = None  # a built image (raw or qcow2); never written to
    as_usb: bool = True  # the image as a removable USB stick; else it backs the first internal disk
    kernel: Path | None = None  # direct kernel boot (-kernel/-initrd/-append)
    initrd: Path | None = None
    append: str = ""
    extra_disks: list[Disk] = field(default_factory=list)
    macs: list[str] | None = None  # per-NIC MAC overrides (a host's pins); default: the board's
    dmi_serial: str | None = None  # a host's pinned DMI serial; default: the board's
    netdevs: list[str | None] | None = None  # per-NIC -netdev backend (from a LAN); None: no link
    stick_serial: str = "CLUSTERCTL0001"
    interactive: bool = False  # serial console on this terminal instead of a socket


@dataclass
class MachinePaths:
    workdir: Path
    sockdir: Path  # unix sockets need short paths (108 bytes), so they may live elsewhere

    @property
    def serial_sock(self) -> Path:
        return self.sockdir / "serial.sock"

    @property
    def qmp_sock(self) -> Path:
        return self.sockdir / "qmp.sock"

    @property
    def console_log(self) -> Path:
        return self.workdir / "console.log"

    @property
    def vars_fd(self) -> Path:
        return self.workdir / "OVMF_VARS.fd"

    @property
    def smbios_type3(self) -> Path:
        return self.workdir / "smbios-type3.bin"

    @property
    def battery_aml(self) -> Path:
        return self.workdir / "acpi-battery.aml"

    def disk(self, index: int) -> Path:
        return self.workdir / f"disk{index}.qcow2"

    @property
    def stick(self) -> Path:
        return self.workdir / "stick.qcow2"


def find_ovmf(secure: bool = False) -> tuple[Path, Path]:
    for code, vars_ in OVMF_SECURE_PAIRS if secure else OVMF_PAIRS:
        if Path(code).is_file() and Path(vars_).is_file():
            return Path(code), Path(vars_)
    what = "Secure Boot OVMF firmware with Microsoft's keys" if secure else "OVMF firmware"
    raise MachineSetupError(f"no {what} found (install Debian's 'ovmf' package for UEFI boards)")


def _opt(value: str) -> str:
    """A value inside a QEMU option list: commas are doubled."""
    return value.replace(",", ",,")


def smbios_type3_table(vendor: str, chassis_type: int, version: str, serial: str) -> bytes:
    """An SMBIOS type 3 structure (DSP0134 2.7 layout, 0x16 bytes plus strings).

    This QEMU (7.2) builds its own type 3 with chassis type "Other" and offers no option to
    change it; a table given with ``-smbios file=`` replaces QEMU's own one.
    """
    strings: list[bytes] = []

    def ref(text: str) -> int:
        if not text:
            return 0
        strings.append(text.encode("ascii", "replace")[:64])
        return len(strings)

    body = struct.pack(
        "<BBHBBBBBBBBBIBBBBB",
        3,  # type: system enclosure
        0x16,  # formatted length
        0x0300,  # handle (QEMU numbers type N tables from 0xN00)
        ref(vendor),
        chassis_type & 0x7F,  # bit 7 would mean "has a lock"
        ref(version),
        ref(serial),
        0,  # asset tag: none
        0x03,  # boot-up state: safe
        0x03,  # power supply state: safe
        0x03,  # thermal state: safe
        0x03,  # security status: none
        0,  # OEM-defined
        0,  # height: unspecified
        0,  # power cords: unspecified
        0,  # contained elements
        0,  # contained element record length
        0,  # SKU number string: none
    )
    tail = b"".join(s + b"\0" for s in strings) + b"\0" if strings else b"\0\0"
    return body + tail


def image_info(path: Path) -> tuple[str, int]:
    """(format, virtual size) of an image, as qemu-img sees it."""
    if not path.is_file():
        raise MachineSetupError(f"no image at {path}")
    info = json.loads(_qemu_img(["info", "--output=json", str(path)]))
    return str(info["format"]), int(info["virtual-size"])


def _qemu_img(args: list[str]) -> str:
    try:
        return subprocess.run([QEMU_IMG, *args], check=True, capture_output=True, text=True).stdout
    except FileNotFoundError:
        raise MachineSetupError(f"{QEMU_IMG} not found: install Debian's 'qemu-utils' package") from None
    except subprocess.CalledProcessError as e:
        raise MachineSetupError(f"{QEMU_IMG} {' '.join(args)}: {e.stderr.strip()}") from None


def create_qcow2(path: Path, size: int, backing: Path | None = None) -> None:
    """A sparse qcow2 disk, or a copy-on-write overlay over ``backing``."""
    args = ["create", "-q", "-f", "qcow2"]
    if backing is not None:
        fmt, backing_size = image_info(backing)
        args += ["-F", fmt, "-b", str(backing.resolve())]
        size = max(size, backing_size)
    _qemu_img([*args, str(path), str(size)])


def _mmc_size(size: int) -> int:
    # QEMU's sd-card refuses sizes that are not a power of two; round up like a real card's capacity.
    return 1 << (size - 1).bit_length()


def prepare_files(cfg: MachineConfig, paths: MachinePaths) -> None:
    """Create what the machine needs in its work dir; existing disks are kept (they are its state)."""
    paths.workdir.mkdir(parents=True, exist_ok=True)
    paths.sockdir.mkdir(parents=True, exist_ok=True)
    board = cfg.board
    if board.firmware in UEFI_FIRMWARES and not paths.vars_fd.exists():
        shutil.copyfile(find_ovmf(board.firmware == "uefi-secure")[1], paths.vars_fd)
    paths.smbios_type3.write_bytes(
        smbios_type3_table(board.dmi.vendor, board.dmi.chassis_type, board.dmi.version, serial_of(cfg))
    )
    if board.battery:
        try:
            battery_table(paths.battery_aml)
        except AcpiError as err:
            raise MachineSetupError(f"board {board.name}: its battery: {err}") from None
    disks = [*board.disks, *cfg.extra_disks]
    for i, disk in enumerate(disks):
        if paths.disk(i).exists():
            continue
        backing = cfg.boot_image if (cfg.boot_image is not None and not cfg.as_usb and i == 0) else None
        size = _mmc_size(disk.size) if disk.bus == "mmc" else disk.size
        create_qcow2(paths.disk(i), size, backing)
    if cfg.boot_image is not None and cfg.as_usb and not paths.stick.exists():
        create_qcow2(paths.stick, 0, cfg.boot_image)
    if cfg.boot_image is not None and not cfg.as_usb and not disks:
        raise MachineSetupError(f"board {board.name} has no internal disk to hold the image")


def serial_of(cfg: MachineConfig) -> str:
    return cfg.dmi_serial if cfg.dmi_serial is not None else cfg.board.dmi.serial


def _smbios_args(cfg: MachineConfig, paths: MachinePaths) -> list[str]:
    dmi = cfg.board.dmi
    serial = serial_of(cfg)
    type1 = f"type=1,manufacturer={_opt(dmi.vendor)},product={_opt(dmi.product)}"
    if dmi.version:
        type1 += f",version={_opt(dmi.version)}"
    if serial:
        type1 += f",serial={_opt(serial)}"
    args = ["-smbios", type1]
    if dmi.board_vendor or dmi.board_product:
        type2 = "type=2"
        if dmi.board_vendor:
            type2 += f",manufacturer={_opt(dmi.board_vendor)}"
        if dmi.board_product:
            type2 += f",product={_opt(dmi.board_product)}"
        args += ["-smbios", type2]
    args += ["-smbios", f"file={_opt(str(paths.smbios_type3))}"]
    # A stable system UUID per identity, as a real board has one.
    args += ["-uuid", str(uuid.uuid5(uuid.NAMESPACE_URL, f"clusterctl:{dmi.vendor}:{dmi.product}:{serial}"))]
    return args


def _disk_args(cfg: MachineConfig, paths: MachinePaths, boot_index: dict[str, int]) -> list[str]:
    args: list[str] = []
    sata = 0
    disks = [*cfg.board.disks, *cfg.extra_disks]
    for i, disk in enumerate(disks):
        drive = f"disk{i}"
        # Zeroes written by the guest (mkfs's journal) stay holes in the overlay, not gigabytes on disk.
        args += ["-drive", f"if=none,id={drive},file={_opt(str(paths.disk(i)))},format=qcow2,"
                 "discard=unmap,detect-zeroes=unmap"]
        boot = f",bootindex={boot_index[drive]}" if drive in boot_index else ""
        serial = f",serial={_opt(disk.serial)}" if disk.serial else ""
        if disk.bus == "nvme":
            # QEMU 7.2's NVMe controller has no model property: guests see "QEMU NVMe Ctrl".
            args += ["-device", f"nvme,id=dev{i},drive={drive}{serial or f',serial=NVME{i:04d}'}{boot}"]
        elif disk.bus == "sata":
            if sata >= SATA_PORTS:
                raise MachineSetupError(f"board {cfg.board.name}: more than {SATA_PORTS} SATA disks")
            model = f",model={_opt(disk.model)}" if disk.model else ""
            # rotation_rate 1 is the ATA code for "solid state"; a spinning disk reports its RPM.
            rate = 7200 if disk.rotational else 1
            args += ["-device", f"ide-hd,id=dev{i},bus=ide.{sata},drive={drive}{model}{serial}"
                                f",rotation_rate={rate}{boot}"]  # fmt: skip
            sata += 1
        elif disk.bus == "virtio":
            args += ["-device", f"virtio-blk-pci,id=dev{i},drive={drive}{serial}{boot}"]
        elif disk.bus == "usb":
            removable = ",removable=on" if disk.removable else ""
            args += ["-device", f"usb-storage,id=dev{i},bus=xhci.0,drive={drive}{serial}{removable}{boot}"]
        elif disk.bus == "mmc":
            args += ["-device", f"sdhci-pci,id=sdhci{i}", "-device", f"sd-card,id=dev{i},drive={drive}"]
        else:  # the board parser admits only the buses above
            raise MachineSetupError(f"board {cfg.board.name}: unknown disk bus {disk.bus!r}")
    return args


def uncabled_nics(cfg: MachineConfig) -> list[int]:
    """NICs with no LAN: they exist with no carrier, like a port with no cable in it (the
    driver pulls their link before the guest runs; an interactive machine keeps them up)."""
    if cfg.interactive:
        return []
    return [i for i in range(len(cfg.board.nics))
            if cfg.netdevs is None or i >= len(cfg.netdevs) or cfg.netdevs[i] is None]


def _nic_args(cfg: MachineConfig) -> list[str]:
    args: list[str] = []
    macs = cfg.macs or []
    for i, nic in enumerate(cfg.board.nics):
        mac = macs[i] if i < len(macs) else nic.mac
        # No option ROM: the firmware must never try to network-boot (slow under TCG, and pointless).
        device = f"{NIC_DEVICES[nic.model]},id=nic{i},mac={mac},romfile="
        backend = cfg.netdevs[i] if cfg.netdevs is not None and i < len(cfg.netdevs) else None
        if backend is not None:
            args += ["-netdev", f"{backend},id=net{i}", "-device", f"{device},netdev=net{i}"]
        else:
            # A hub port with nothing else on the hub: the NIC exists, its cable leads nowhere.
            args += ["-netdev", f"hubport,id=net{i},hubid={100 + i}", "-device", f"{device},netdev=net{i}"]
    return args


def build_command(cfg: MachineConfig, paths: MachinePaths) -> list[str]:
    """The full argv; :func:`prepare_files` must have run for the same paths."""
    board = cfg.board
    direct = cfg.kernel is not None
    argv = [
        # SMM: the Secure Boot build of OVMF keeps its variables where the OS cannot write them.
        QEMU, "-accel", "tcg", "-machine", "q35,smm=on" if board.firmware == "uefi-secure" else "q35",
        "-nodefaults", "-no-user-config",
        "-name", f"guest={board.name}", "-smp", str(board.cpus), "-m", f"{board.memory // 2**20}M",
        "-rtc", "base=utc", "-display", "none",
    ]  # fmt: skip
    if board.firmware == "uefi-secure":
        argv += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
    if board.firmware in UEFI_FIRMWARES:
        code, _ = find_ovmf(board.firmware == "uefi-secure")
        argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={_opt(str(code))}"]
        argv += ["-drive", f"if=pflash,format=raw,unit=1,file={_opt(str(paths.vars_fd))}"]
    argv += _smbios_args(cfg, paths)
    if board.battery:
        # QEMU has no battery device: an SSDT declares one (and an AC adapter) for the guest's ACPI drivers.
        argv += ["-acpitable", f"file={_opt(str(paths.battery_aml))}"]
    if board.display:
        argv += ["-device", "VGA"]
    usb = cfg.boot_image is not None and cfg.as_usb
    if usb or any(d.bus == "usb" for d in [*board.disks, *cfg.extra_disks]):
        argv += ["-device", "qemu-xhci,id=xhci"]
    boot_index: dict[str, int] = {}
    if cfg.boot_image is not None and not direct:
        boot_index = {"disk0": 0} if not cfg.as_usb else {}
    n_disks = len(board.disks) + len(cfg.extra_disks)
    if not direct:
        first = 1 if usb else 0
        for i in range(n_disks):
            boot_index.setdefault(f"disk{i}", first + i)
    argv += _disk_args(cfg, paths, boot_index)
    if usb:
        argv += ["-drive", f"if=none,id=stickdrive,file={_opt(str(paths.stick))},format=qcow2"]
        boot = "" if direct else ",bootindex=0"
        argv += ["-device", f"usb-storage,id={STICK_ID},bus=xhci.0,drive=stickdrive,removable=on,"
                 f"serial={_opt(cfg.stick_serial)}{boot}"]  # fmt: skip
    argv += _nic_args(cfg)
    if direct:
        argv += ["-kernel", str(cfg.kernel)]
        if cfg.initrd is not None:
            argv += ["-initrd", str(cfg.initrd)]
        if cfg.append:
            argv += ["-append", cfg.append]
    else:
        # Only the devices given a boot index may boot: no fall-through to network boot.
        argv += ["-boot", "strict=on"]
    if cfg.interactive:
        argv += ["-serial", "mon:stdio"]
    else:
        argv += ["-chardev", f"socket,id=qmp0,path={_opt(str(paths.qmp_sock))},server=on,wait=off"]
        argv += ["-mon", "chardev=qmp0,mode=control"]
        # wait=on: QEMU starts the guest only once the driver listens, so no console byte is lost.
        argv += ["-chardev", f"socket,id=serial0,path={_opt(str(paths.serial_sock))},server=on,wait=on"]
        if uncabled_nics(cfg):
            argv += ["-S"]  # paused until the driver has pulled those links (Machine.start)
        argv += ["-serial", "chardev:serial0"]
    return argv
