"""The ``bootchain`` stage: Debian's signed UEFI boot chain, for Secure Boot.

shim (signed by Microsoft's UEFI CA, which every Secure Boot PC trusts), MokManager, and GRUB
(signed by Debian, whose CA shim carries); GRUB then boots only kernels signed by Debian, which
Debian's linux-image packages are. The packages are fetched with ``apt-get download`` and
unpacked with ``dpkg-deb -x``: nothing is installed on the build machine (shim-signed's
maintainer scripts would re-run grub-install on the build machine's own ESP), and no root is
needed. The stage's inputs are the packages' SHA-256 sums as apt lists them, so a new Debian
upload makes a new key and an unchanged one is never downloaded again.

The output is a tar of ``shimx64.efi``, ``mmx64.efi`` and ``grubx64.efi``. shim's fallback
(fbx64.efi) is left out on purpose: on removable media it would write boot entries into the
box's NVRAM before GRUB ever ran.
"""

from __future__ import annotations

import functools
import subprocess
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.stages.kind import StageContext, StageKind, file_sha256
from builder.tools import ToolRunner

if TYPE_CHECKING:
    from builder.plan import Stage

# package -> (file in the package, name on the ESP)
SIGNED_FILES = {
    "shim-signed": ("usr/lib/shim/shimx64.efi.signed", "shimx64.efi"),
    "shim-helpers-amd64-signed": ("usr/lib/shim/mmx64.efi.signed", "mmx64.efi"),
    "grub-efi-amd64-signed": ("usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed", "grubx64.efi"),
}


class BootChainError(RuntimeError):
    """apt cannot offer the signed packages (not a Debian machine, or no package lists)."""


@functools.cache
def package_facts(package: str) -> dict[str, str]:
    """Version and SHA-256 of the candidate ``package`` in apt's lists (what apt-get download fetches)."""
    try:
        out = subprocess.run(["apt-cache", "show", "--no-all-versions", package], capture_output=True, text=True,
                             check=False).stdout
    except FileNotFoundError as exc:
        raise BootChainError("apt-cache is missing: the signed boot chain comes from Debian's archive") from exc
    facts = {}
    for line in out.splitlines():
        key, sep, value = line.partition(": ")
        if sep and key in ("Version", "SHA256"):
            facts[key.lower()] = value.strip()
    if set(facts) != {"version", "sha256"}:
        raise BootChainError(f"apt offers no package {package!r}: run 'apt-get update' (the signed UEFI boot "
                             "chain comes from Debian's archive), or give the boards firmware: bios")
    return facts


def packages_input(stage: Stage) -> dict[str, Any]:
    return {"packages": {p: package_facts(p) for p in SIGNED_FILES}}


def fetch(work: Path, runner: ToolRunner, wanted: dict[str, dict[str, str]] | None = None) -> dict[str, Path]:
    """Download and unpack the signed packages (``wanted``: apt's facts, by package; default the
    candidates) into ``work``; the chain's files by name."""
    wanted = wanted or {p: package_facts(p) for p in SIGNED_FILES}
    debs = work / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    runner.run(["apt-get", "download", *(f"{p}={f['version']}" for p, f in wanted.items())], cwd=debs)
    files = {}
    for package, (member, name) in SIGNED_FILES.items():
        deb = next(debs.glob(f"{package}_*.deb"))
        if file_sha256(deb) != wanted[package]["sha256"]:
            raise BootChainError(f"{deb.name}: its SHA-256 is not the one apt lists")
        tree = work / package
        runner.run(["dpkg-deb", "-x", str(deb), str(tree)])
        files[name] = tree / member
    return files


def run(ctx: StageContext, stage: Stage, work: Path, log: Path) -> tuple[dict[str, Any], Path]:
    files = fetch(work, ToolRunner(log, ctx.on_line(stage)), stage.inputs["packages"])
    out = work / "bootchain.tar"
    with tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, path in files.items():
            info = tar.gettarinfo(str(path), arcname=name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            with open(path, "rb") as f:
                tar.addfile(info, f)
    return {"files": {name: file_sha256(path) for name, path in files.items()}, "sha256": file_sha256(out)}, out


def unpack(tar_path: Path, dest: Path) -> dict[str, Path]:
    """The chain's files, unpacked into ``dest``: name -> path."""
    dest.mkdir(parents=True, exist_ok=True)
    out = {}
    with tarfile.open(tar_path) as tar:
        for member in tar.getmembers():
            src = tar.extractfile(member)
            if src is None or "/" in member.name:
                raise BootChainError(f"{tar_path}: unexpected member {member.name!r}")
            (dest / member.name).write_bytes(src.read())  # plain files by plain names: written, not extracted
            out[member.name] = dest / member.name
    return out


KIND = StageKind(name="bootchain", version=1, tools=("apt-get", "dpkg-deb"), run=run, extra_inputs=packages_input)
