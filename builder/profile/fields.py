"""The declared table of profile and board fields.

This table is the one place that knows what a profile may say: parsing, validation, defaults,
the JSON Schema (``clusterctl schema``) and docs/profile.md are all derived from it.
"""

from __future__ import annotations

from typing import Any

from builder.profile.errors import Mark
from builder.profile.types import (
    MAX_MEMORY,
    Bool,
    CheckContext,
    Choice,
    Cidr,
    Compare,
    Field,
    Int,
    IpAddress,
    ListOf,
    MapOf,
    Name,
    OverlayFolder,
    Path,
    Record,
    Ref,
    Size,
    Str,
)
from builder.profile.yamlsource import mark_of_key
from core.ids import FIRST_ID, LAST_ID

SUITES = ("bookworm", "trixie", "sid")
CHASSIS = ("desktop", "laptop", "mini-pc", "tower", "server", "all-in-one", "tablet", "other")
CHASSIS_SYNONYMS = {"notebook": "laptop"}
DISK_TYPES = ("nvme", "ssd", "hdd", "usb", "virtio", "mmc")
MAC_PATTERN = r"([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}"
MAC_DOC = "a MAC address such as 52:54:00:12:34:56"
PACKAGE = Str(r"[a-z0-9][a-z0-9+.-]+", "a Debian package name", 128)

# --- selectors (evaluated by hardware.match; see docs/selectors.md) -------------------------

DISKS_SELECTOR = Record(
    "disk count selector",
    [
        Field("count", Compare(), "how many internal, non-removable disks (that satisfy the other keys)"),
        Field("size", Compare(sizes=True), "the size every counted disk must have"),
        Field("type", Choice(DISK_TYPES), "the kind of every counted disk"),
        Field("rotational", Bool(), "spinning disks (true) or solid state (false)"),
    ],
)

HOST_SELECTOR = Record(
    "host selector",
    [
        Field("chassis", ListOf(Choice(CHASSIS, CHASSIS_SYNONYMS), single_ok=True, unique=True),
              "the DMI chassis type: one or a list", example=["desktop", "mini-pc"]),
        Field("vendor", Str(), "the DMI system vendor, a case-insensitive glob such as `Lenovo*`"),
        Field("product", Str(), "the DMI product name, a case-insensitive glob"),
        Field("display", Bool(), "a display is connected (true) or none is (false)"),
        Field("battery", Bool(), "the machine has a battery (laptops)"),
        Field("cpus", Compare(), "the number of logical CPUs"),
        Field("memory", Compare(sizes=True), "the installed memory"),
        Field("disks", DISKS_SELECTOR, "internal disks"),
        Field("nics", Record("NIC selector", [Field("count", Compare(), "how many network interfaces")]),
              "network interfaces"),
    ],
    doc="All keys must hold for a machine to match; the more keys, the more specific the match.",
)

PIN = Record(
    "identity pins",
    [
        Field("serial", Str(), "the DMI system serial number, exactly"),
        Field("mac", ListOf(Str(MAC_PATTERN, MAC_DOC), single_ok=True, unique=True),
              "a MAC address of one of the host's NICs, or a list"),
    ],
    doc="A pin that matches makes recognition certain; one that contradicts rules the host out.",
)

def _one_of_smallest_largest(out: dict[str, Any], ctx: CheckContext, path: str, raw: Any, mark: Mark) -> None:
    if out.get("smallest") and out.get("largest"):
        ctx.error(mark_of_key(raw, "largest", mark), f"{path}.largest",
                  "smallest and largest exclude each other: keep one")


DISK_SELECTOR = Record(
    "install disk selector",
    [
        Field("type", Choice(DISK_TYPES), "the kind of disk"),
        Field("size", Compare(sizes=True), "the disk's size"),
        Field("model", Str(), "the disk's model, a case-insensitive glob"),
        Field("serial", Str(), "the disk's serial number, exactly"),
        Field("smallest", Bool(), "of the disks that fit, take the smallest"),
        Field("largest", Bool(), "of the disks that fit, take the largest"),
        Field("wipe", Bool(), "allow overwriting a disk that already holds partitions or data", default=False),
    ],
    doc="Picks the install target among internal disks; never the medium the system booted from. "
    "Without smallest/largest exactly one disk must fit.",
    check_hook=_one_of_smallest_largest,
)

VOLUME = Record(
    "volume",
    [
        Field("path", Str(r"(/[A-Za-z0-9_.+-]+)+", "an absolute path below / such as /srv/drive"),
              "where the disk is mounted (an export may name it or a folder in it)", required=True),
        Field("disk", Record("volume disk selector", DISK_SELECTOR.fields,
                             doc="Picks the volume's disk among internal disks other than the one the "
                             "system runs from; a disk that already holds this volume's file system "
                             "is taken first. Without smallest/largest exactly one disk must fit.",
                             check_hook=_one_of_smallest_largest),
              "which internal disk holds the volume", required=True),
        Field("options", ListOf(Str(r"[A-Za-z0-9_=.-]+", "a mount option such as noatime")),
              "extra mount options (nosuid and nodev are always given)", default=[]),
    ],
    doc="A data disk of the role's hosts: formatted ext4 (labelled with the volume's name) when it "
    "is blank, mounted at its path at every boot before the agent starts; a disk holding anything "
    "else is left alone unless disk.wipe allows it.",
)
VOLUME_NAME = Str(r"[a-z][a-z0-9-]{0,15}", "a volume name: up to 16 lower-case letters, digits and '-' "
                  "(it becomes the ext4 label)", 16)

# --- sections ---------------------------------------------------------------------------

USER = Record(
    "user",
    [
        Field("name", Str(r"[a-z_][a-z0-9_-]{0,31}", "a user name (lower case, up to 32 characters)"),
              "the login name", required=True),
        Field("uid", Int(FIRST_ID, LAST_ID), "the user's uid on every host (and its own group's gid): give it "
              "to match files a host already has; by default the first build assigns one and keeps it in "
              "`<out>/<cluster>/ids.json`, so a rebuild, or a user added or removed, changes nobody else's"),
        Field("ssh_keys", ListOf(Str(r"(ssh-|ecdsa-|sk-)[^\n]+", "an OpenSSH public key line")),
              "OpenSSH public keys allowed to log in", default=[]),
        Field("password_hash", Str(r"\$[0-9a-z]+\$[^\n]+", "a crypt(3) hash such as $y$... or $6$..."),
              "a password hash for console logins; none means no password login"),
        Field("groups", ListOf(Name(), unique=True), "supplementary groups", default=["sudo"]),
        Field("shell", Str(r"/[^\s]*", "an absolute path"), "login shell", default="/bin/bash"),
    ],
)

CLUSTER = Record(
    "cluster",
    [
        Field("name", Name(), "the cluster's name; images land in images/<name>/", required=True),
        Field("domain", Str(r"[a-z0-9-]+(\.[a-z0-9-]+)*", "a DNS domain"), "DNS domain of the hosts",
              default="home.arpa"),
        Field("timezone", Str(r"[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*", "a tz database name such as Europe/Berlin"),
              "time zone", default="Etc/UTC"),
        Field("locale", Str(r"[A-Za-z_]+(\.[A-Za-z0-9-]+)?(@[a-z]+)?", "a locale such as en_GB.UTF-8"),
              "system locale", default="C.UTF-8"),
        Field("keymap", Str(r"[a-z0-9_-]+", "a console keymap such as us or de"), "console keyboard layout",
              default="us"),
        Field("users", ListOf(USER), "login users on every host", default=[]),
        Field("network", Record("network", [
            Field("lan", Cidr(), "the cluster LAN: a subnet whose addresses are given to hosts in order, or dhcp",
                  default="dhcp"),
            Field("gateway", IpAddress(), "the default gateway of a fixed-address LAN (an address on `lan`); "
                  "with lan: dhcp the DHCP server gives it"),
            Field("dns", ListOf(IpAddress()), "DNS servers for the LAN's hosts (besides those DHCP gives)",
                  default=[]),
        ]), "the cluster LAN", default={"lan": "dhcp", "dns": []}),
        Field("fusion", Record("fused agent", [
            Field("namespace", Str(r"/[A-Za-z0-9_/.-]*", "an absolute path"),
                  "where peers appear: <namespace>/<host>", default="/n"),
            Field("port", Int(1, 65535), "the 9P port on the mesh", default=564),
            Field("seeds", ListOf(Str(r"[A-Za-z0-9.:-]+", "a host or address[:port]")),
                  "addresses to try besides mDNS (cloud hosts)", default=[]),
        ]), "the fused agent's settings", default={"namespace": "/n", "port": 564, "seeds": []}),
        Field("unattended", Bool(), "first boot installs without asking when the match is certain",
              default=False),
        Field("stick_secrets", Choice(("clear", "passphrase")),
              "how a usb-installer stick carries every host's keys: clear (readable by whoever holds the "
              "stick; the build warns) or passphrase (sealed with a key stretched from a passphrase the "
              "build asks for; first boot asks for it before it installs; docs/identity.md)",
              default="clear"),
    ],
)

OS = Record(
    "operating system",
    [
        Field("kind", Choice(("system", "rescue", "iso")),
              "system: an installed Debian; rescue: runs from RAM; iso: a user's bootable ISO, on a "
              "usb-installer stick's menu (booted through the ISO's /boot/grub/loopback.cfg)", default="system"),
        Field("distro", Choice(("debian",)), "the distribution", default="debian",
              only_when=("kind", ("system", "rescue"))),
        Field("suite", Choice(SUITES), "the Debian suite", default="bookworm",
              only_when=("kind", ("system", "rescue"))),
        Field("mirror", Str(r"https?://\S+", "an http(s) URL"), "the Debian mirror",
              default="http://deb.debian.org/debian", only_when=("kind", ("system", "rescue"))),
        Field("packages", ListOf(PACKAGE, unique=True), "extra Debian packages", default=[],
              only_when=("kind", ("system", "rescue"))),
        Field("overlays", ListOf(OverlayFolder()), "extra overlay folders (Jinja2 file trees)", default=[],
              only_when=("kind", ("system", "rescue"))),
        Field("cmdline", ListOf(Str(r"\S+", "a kernel argument")), "extra kernel arguments", default=[],
              only_when=("kind", ("system", "rescue"))),  # an ISO's kernel line is its loopback.cfg's
        Field("path", Path(directory=False), "the bootable ISO file", required=False,
              only_when=("kind", ("iso",))),
        Field("label", Str(max_length=64), "the boot menu title; defaults to the name and suite"),
    ],
)

ROLE = Record(
    "role",
    [
        Field("extends", Ref("roles"), "another role whose settings this one starts from"),
        Field("description", Str(max_length=200), "what hosts of this role are for"),
        Field("os", ListOf(Ref("oses"), single_ok=True, unique=True, min_items=1),
              "operating systems in boot-menu order; the first is the default", required=True),
        Field("packages", ListOf(PACKAGE, unique=True), "extra Debian packages on this role's hosts", default=[]),
        Field("overlays", ListOf(OverlayFolder()), "extra overlay folders", default=[]),
        Field("exports", MapOf(Str(r"/\S*", "an absolute path"), what="export"),
              "paths the fused agent exports: name → path (seen at /n/<host>/fs/<name>)", default={}),
        Field("trust_root", ListOf(Str(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", "an export's name"), unique=True),
              "exports in which root on a peer acts as root here; in the others a peer's root is nobody, "
              "as are uids that are no person's of `cluster.users`", default=[]),
        Field("control", ListOf(Ref("roles"), unique=True),
              "roles whose hosts this role's hosts may control through their ctl files (reboot, poweroff, "
              "boot another OS once, systemd units, wake): root or a person of the sudo group on a host of "
              "this role asks, the target agrees; everyone else may look but not act", default=[]),
        Field("kiosk", Choice(("manage",)),
              "what the role's hosts show full-screen on their own monitor from boot: manage (the cluster "
              "manager, as an unprivileged viewer that may look but not act); none: a login prompt"),
        Field("volumes", MapOf(VOLUME, key=VOLUME_NAME, what="volume"),
              "data disks formatted when blank and mounted at every boot: name → path and disk", default={}),
        Field("match", HOST_SELECTOR, "how first boot recognises a host of this role", default={}),
    ],
)

HOST = Record(
    "host",
    [
        Field("extends", Ref("hosts"), "another host whose settings this one starts from"),
        Field("role", Ref("roles"), "the role this host plays", required=True),
        Field("board", Ref("boards"), "the machine shape: a name from testdriver/boards/ or the profile's "
              "`boards`, or a board file beside the profile (`boards/my-box.yaml`)", required=True),
        Field("match", HOST_SELECTOR, "further selectors, added to the role's", default={}),
        Field("pin", PIN, "identity pins", default={}),
        Field("install", Record("install", [
            Field("disk", DISK_SELECTOR, "which internal disk receives the host's OSes", default={}),
        ]), "where and how the host installs", default={"disk": {"wipe": False}}),
        Field("address", IpAddress(dhcp=True), "the host's LAN address, or dhcp (the LAN's DHCP server gives it); "
              "by default the next free one of cluster.network.lan. A cloud image's host is always dhcp: "
              "it takes its provider's network"),
        Field("packages", ListOf(PACKAGE, unique=True), "extra Debian packages on this host", default=[]),
        Field("overlays", ListOf(OverlayFolder()), "extra overlay folders", default=[]),
    ],
)


def _default_format(image: dict[str, Any]) -> str:
    return "qcow2" if image.get("type") == "cloud" else "raw"


IMAGE = Record(
    "image",
    [
        Field("type", Choice(("usb-installer", "disk", "cloud")),
              "usb-installer: one stick for several hosts, recognised at first boot; "
              "disk: one host's disk image; cloud: one host's cloud image", required=True),
        Field("hosts", ListOf(Ref("hosts"), unique=True, min_items=1), "the hosts the stick installs",
              only_when=("type", ("usb-installer",))),
        Field("host", Ref("hosts"), "the host of a disk or cloud image", only_when=("type", ("disk", "cloud"))),
        Field("size", Size(), "the image's size", default=8 * 1024**3),
        Field("format", Choice(("raw", "qcow2")), "raw (with a .bmap) or qcow2", default=_default_format),
        Field("isos", ListOf(Path(directory=False)),
              "bootable ISO files on the stick's menu, one entry each, named after the file (each must "
              "ship /boot/grub/loopback.cfg, as Debian live, Ubuntu and Arch do)", default=[],
              only_when=("type", ("usb-installer",))),
    ],
)

# --- boards (testdriver/boards/*.yaml): what a machine shape looks like and how QEMU imitates it --

BOARD_DISK = Record(
    "board disk",
    [
        Field("bus", Choice(("nvme", "sata", "virtio", "usb", "mmc")), "how the disk is attached", required=True),
        Field("size", Size(), "the disk's size", required=True),
        Field("model", Str(max_length=40), "the model string the disk reports", default="QEMU disk"),
        Field("serial", Str(r"[A-Za-z0-9_.-]{1,20}", "up to 20 letters, digits, _ . -"), "the serial number"),
        Field("rotational", Bool(), "a spinning disk", default=False),
        Field("removable", Bool(), "a removable disk (a USB stick)", default=False),
    ],
)

BOARD = Record(
    "board",
    [
        Field("description", Str(max_length=200), "what this machine shape is", required=True),
        Field("firmware", Choice(("uefi", "uefi-secure", "bios")),
              "the firmware QEMU runs: OVMF, OVMF with Secure Boot enforced (Microsoft's keys), or SeaBIOS",
              required=True),
        Field("cpus", Int(1, 64), "logical CPUs", default=2),
        Field("memory", Size(MAX_MEMORY, "machine's memory"), "memory", default=2 * 1024**3),
        Field("dmi", Record("DMI/SMBIOS identity", [
            Field("vendor", Str(max_length=64), "system manufacturer (SMBIOS type 1)", required=True),
            Field("product", Str(max_length=64), "product name (type 1)", required=True),
            Field("version", Str(max_length=64), "product version (type 1)"),
            Field("serial", Str(max_length=64), "system serial number (type 1)"),
            Field("chassis", Choice(CHASSIS, CHASSIS_SYNONYMS), "chassis type (type 3)", required=True),
            Field("board_vendor", Str(max_length=64), "baseboard manufacturer (type 2)"),
            Field("board_product", Str(max_length=64), "baseboard product (type 2)"),
        ]), "what the firmware tells the OS about the machine", required=True),
        Field("disks", ListOf(BOARD_DISK), "internal disks", default=[]),
        Field("nics", ListOf(Record("board NIC", [
            Field("model", Choice(("virtio", "e1000", "e1000e", "rtl8139")), "the NIC model", default="virtio"),
            Field("mac", Str(MAC_PATTERN, MAC_DOC), "its MAC address", required=True),
        ])), "network interfaces", default=[]),
        Field("display", Bool(), "a display is connected", default=False),
        Field("battery", Bool(),
              "the machine has a battery (its QEMU twin gets an emulated ACPI battery and AC adapter)", default=False),
    ],
    doc="A machine shape: what first boot detects on it, and how QEMU imitates it in tests.",
)

PROFILE = Record(
    "cluster profile",
    [
        Field("include", ListOf(Path(directory=False), single_ok=True),
              "profiles merged first, in order (lists append, maps merge, null resets)", default=[]),
        Field("cluster", CLUSTER, "the cluster as a whole", required=True),
        Field("oses", MapOf(OS, what="OS"), "operating systems a host can boot", required=True),
        Field("roles", MapOf(ROLE, what="role"), "what hosts are for", required=True),
        Field("hosts", MapOf(HOST, what="host"), "the physical and cloud machines", required=True),
        Field("images", MapOf(IMAGE, what="image"), "what to build", default={}),
        Field("boards", MapOf(BOARD, what="board"),
              "machine shapes of your own, by name, for hosts' `board:` (as in testdriver/boards/; "
              "`clusterctl inventory --board` prints one for the box it runs on). A host may also name a "
              "board file beside the profile: `board: boards/my-box.yaml`", default={}),
    ],
    doc="A clusterctl profile: one file (plus includes) describing a whole small cluster.",
)
