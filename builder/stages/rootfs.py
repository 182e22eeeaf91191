"""Root file systems: ``mmdebstrap`` from Debian's mirror into a tarball (owners kept, rootless).

Speed levers (see docs in shared research): dpkg runs with ``force-unsafe-io`` (a throwaway
tree needs no fsyncs), and ``update-initramfs`` is diverted while packages install, so the
initramfs is generated exactly once, at the end, instead of once per trigger.
"""

from __future__ import annotations

import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.stages.kind import StageContext, StageKind
from builder.tools import LineSink, ToolRunner

if TYPE_CHECKING:
    from builder.plan import Stage

# What every root needs: a kernel, systemd, udev, and the Python the on-host code runs on.
BASE_PACKAGES: tuple[str, ...] = (
    "linux-image-amd64", "initramfs-tools", "zstd", "systemd-sysv", "udev", "kmod", "dbus",
    "iproute2", "tzdata", "ca-certificates", "less",
    "python3", "python3-pyudev", "python3-rich", "python3-yaml", "python3-cryptography",
    "python3-zeroconf",
    # the fused agent's mesh: wg(8) keys the kernel's WireGuard links
    "wireguard-tools",
    # first boot's installer (and any installed system's own fsck): sfdisk, e2image, resize2fs,
    # debugfs, mtools; efibootmgr points UEFI at the installed disk with the stick still in
    "e2fsprogs", "fdisk", "mtools", "efibootmgr",
    # cluster.keymap on the screen: loadkeys (clusterctl-keymap.service) and the console keymaps
    "kbd", "console-data",
)

# Docs, man pages and translations are most of a minimal tree's files and nobody reads them on
# a stick; copyright files stay (licences travel with the binaries).
_DPKG_EXCLUDES = (
    "path-exclude=/usr/share/man/*", "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*", "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*", "path-include=/usr/share/locale/locale.alias",
)

_DIVERT = (
    'chroot "$1" dpkg-divert --quiet --local --rename --divert /usr/sbin/update-initramfs.real '
    '--add /usr/sbin/update-initramfs && ln -s /bin/true "$1/usr/sbin/update-initramfs"'
)
_UNDIVERT_AND_BUILD = (
    'rm -f "$1/usr/sbin/update-initramfs" && chroot "$1" dpkg-divert --quiet --local --rename '
    '--remove /usr/sbin/update-initramfs && chroot "$1" update-initramfs -c -k all'
)


@dataclass(frozen=True)
class RootfsSpec:
    suite: str
    mirror: str
    packages: tuple[str, ...]
    locale: str = "C.UTF-8"

    def all_packages(self) -> list[str]:
        extra = ["locales"] if self.locale not in ("C.UTF-8", "C", "POSIX") else []
        return sorted(set(BASE_PACKAGES) | set(self.packages) | set(extra))


def mmdebstrap_argv(spec: RootfsSpec, output: Path) -> list[str]:
    argv = [
        "mmdebstrap", "--variant=apt", "--mode=auto", "--format=tar", "--verbose",
        "--components=main", "--include=" + ",".join(spec.all_packages()),
        "--dpkgopt=force-unsafe-io",
        '--aptopt=Acquire::Languages "none"',
        "--essential-hook=" + _DIVERT,
    ]
    argv += [f"--dpkgopt={x}" for x in _DPKG_EXCLUDES]
    if "locales" in spec.all_packages():
        lang = spec.locale
        charset = lang.split(".", 1)[1] if "." in lang else "UTF-8"
        argv.append(f"--customize-hook=echo '{lang} {charset}' > \"$1/etc/locale.gen\" && "
                    'chroot "$1" locale-gen')
    # The machine id is made on first boot, per host; an empty file tells systemd so. Host keys
    # made by openssh-server's postinst would be shared by every host (and sit in the cache):
    # each image gets its own (builder/secrets.py).
    argv.append('--customize-hook=: > "$1/etc/machine-id"; rm -f "$1/var/lib/dbus/machine-id" '
                '"$1"/etc/ssh/ssh_host_*')
    argv.append("--customize-hook=" + _UNDIVERT_AND_BUILD)
    argv.append('--customize-hook=rm -rf "$1/var/cache/apt/archives"/*.deb "$1/var/lib/apt/lists"/*_Packages')
    argv += [spec.suite, str(output), spec.mirror]
    return argv


def namespace_prefix() -> list[str]:
    """As root, mmdebstrap mounts /proc, /sys and /dev into its chroot: do that in a private
    mount namespace, so those mounts never show on the host and vanish with the process even
    when it is killed. Others get mmdebstrap's unshare mode (no mounts on the host at all)."""
    return ["unshare", "--mount", "--propagation", "private", "--"] if os.geteuid() == 0 else []


def build_rootfs(spec: RootfsSpec, output: Path, log: Path, on_line: LineSink | None = None) -> dict[str, Any]:
    """Make the tarball at ``output``; return what the manifest needs to know about it."""
    # mmdebstrap's own scratch goes beside the output, so a killed build's leftovers are
    # removed with the stage's work folder by the next build.
    ToolRunner(log, on_line).run([*namespace_prefix(), *mmdebstrap_argv(spec, output)],
                                 env={"TMPDIR": str(output.parent)})
    return describe_rootfs(output)


ACCOUNT_FILES = ("etc/passwd", "etc/group", "etc/shadow", "etc/gshadow")
_KERNEL = re.compile(r"^\.?/?boot/vmlinuz-(.+)$")


def describe_rootfs(tar_path: Path) -> dict[str, Any]:
    """Kernel versions (with where their files sit in the tar), package list, content size."""
    kernels: dict[str, dict[str, Any]] = {}
    members: dict[str, tarfile.TarInfo] = {}
    size = 0
    status = b""
    accounts: dict[str, dict[str, int]] = {}
    with tarfile.open(tar_path, "r:") as tar:
        for m in tar:
            name = m.name.removeprefix("./")
            size += (m.size + 4095) // 4096 * 4096 + 256
            if name.startswith("boot/"):
                members[name] = m
            elif name == "var/lib/dpkg/status":
                f = tar.extractfile(m)
                status = f.read() if f else b""
            elif name in ACCOUNT_FILES:
                accounts[name] = {"offset": m.offset_data, "size": m.size}
    for name, m in members.items():
        km = _KERNEL.match(name)
        if not km:
            continue
        version = km.group(1)
        initrd = members.get(f"boot/initrd.img-{version}")
        kernels[version] = {
            "kernel": {"offset": m.offset_data, "size": m.size},
            "initrd": {"offset": initrd.offset_data, "size": initrd.size} if initrd else None,
        }
    return {"kernels": kernels, "packages": parse_dpkg_status(status.decode("utf-8", "replace")),
            "content_bytes": size, "accounts": accounts}


def parse_dpkg_status(text: str) -> dict[str, str]:
    """Installed package → version, from /var/lib/dpkg/status."""
    out: dict[str, str] = {}
    for para in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in para.splitlines():
            if line and not line[0].isspace() and ":" in line:
                k, v = line.split(":", 1)
                fields[k] = v.strip()
        if fields.get("Package") and "installed" in fields.get("Status", "").split():
            out[fields["Package"]] = fields.get("Version", "")
    return dict(sorted(out.items()))


def read_member_bytes(tar_path: Path, where: dict[str, int]) -> bytes:
    with open(tar_path, "rb") as src:
        src.seek(where["offset"])
        data = src.read(where["size"])
    if len(data) != where["size"]:
        raise OSError(f"{tar_path} ends before its member at {where['offset']}")
    return data


def read_member(tar_path: Path, where: dict[str, int], dest: Path) -> None:
    """Copy one file out of the tar by its recorded offset (no scan of the whole archive)."""
    with open(tar_path, "rb") as src, open(dest, "wb") as out:
        src.seek(where["offset"])
        left = where["size"]
        while left:
            chunk = src.read(min(left, 1 << 20))
            if not chunk:
                raise OSError(f"{tar_path} ends before its member at {where['offset']}")
            out.write(chunk)
            left -= len(chunk)


def run(ctx: StageContext, stage: Stage, work: Path, log: Path) -> tuple[dict[str, Any], Path]:
    out = work / "rootfs.tar"
    rec = build_rootfs(stage.params["spec"], out, log, ctx.on_line(stage))
    if not rec["kernels"]:
        raise RuntimeError("the root file system has no kernel in /boot")
    return rec, out


KIND = StageKind(name="rootfs", version=1, tools=("mmdebstrap",), run=run)
