"""Laying files into an ext4 file system inside an image file, with debugfs (no mount).

A root partition is made once per root file system and shared by every image and host that
uses it; what differs per image (the overlay: host facts, users, on-host code, secrets) is
written into the image's copy of it afterwards. That keeps an overlay change, or a sixteenth
host, down to a sparse copy and a few hundred debugfs commands instead of a new mkfs.
"""

from __future__ import annotations

import re
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from builder.tools import ToolError

# debugfs keeps going after a failed command; these failures are expected (a file that is not
# there to remove). Anything else fails the stage.
_BENIGN = re.compile(r"^(debugfs [\d.]+ |rm: File not found by ext2_lookup|unlink: .*File not found|"
                     r"Allocated inode: \d+|$)")


@dataclass(frozen=True)
class Put:
    """One thing to place: a file (from ``src``), a folder, or a symlink (to ``target``)."""

    path: str  # absolute, inside the file system
    kind: str  # "file" | "dir" | "link"
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    src: Path | None = None
    target: str = ""


def _q(p: str) -> str:
    if '"' in p or "\n" in p:
        raise ValueError(f"cannot place a path with quotes or newlines: {p!r}")
    return f'"{p}"'


def folders_of(puts: list[Put]) -> list[str]:
    """Every folder the placements need: their parents and the folders they name."""
    out: dict[str, None] = {}
    for p in puts:
        parts = p.path.strip("/").split("/")
        for i in range(1, len(parts)):
            out["/" + "/".join(parts[:i])] = None
        if p.kind == "dir":
            out[p.path] = None
    return list(out)


def script_for(puts: list[Put], existing: set[str]) -> str:
    """debugfs commands for ``puts``. Only folders not in ``existing`` are made: debugfs 1.47.0's
    mkdir of a folder that is already there can corrupt the file system (e2fsck then finds
    wrong link counts and an unconnected inode)."""
    cmds: list[str] = []
    made: set[str] = set(existing)
    for p in puts:
        q = _q(p.path)
        parts = p.path.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/" + "/".join(parts[:i])
            if d not in made:
                made.add(d)
                cmds.append(f"mkdir {_q(d)}")
        if p.kind == "dir":
            if p.path not in made:
                cmds.append(f"mkdir {q}")
            # Folders the root already has keep their mode unless the overlay asks for another.
            if (p.mode, p.uid, p.gid) != (0o755, 0, 0):
                cmds += [f"sif {q} mode 0{0o040000 | p.mode:o}", f"sif {q} uid {p.uid}", f"sif {q} gid {p.gid}"]
        elif p.kind == "link":
            cmds += [f"rm {q}", f"symlink {q} {_q(p.target)}"]
        else:
            assert p.src is not None
            cmds += [f"rm {q}", f"write {_q(str(p.src))} {q}", f"sif {q} mode 0{0o100000 | p.mode:o}",
                     f"sif {q} uid {p.uid}", f"sif {q} gid {p.gid}"]
        made.add(p.path)
    return "\n".join(cmds) + "\n"


def puts_from_tar(tar_path: Path, scratch: Path) -> list[Put]:
    """The overlay tarball as placements; its files are unpacked (contents only) into ``scratch``."""
    puts: list[Put] = []
    with tarfile.open(tar_path, "r:") as tar:
        for i, m in enumerate(tar):
            path = "/" + m.name.removeprefix("./").strip("/")
            if path == "/":
                continue
            if m.isdir():
                puts.append(Put(path, "dir", m.mode & 0o7777, m.uid, m.gid))
            elif m.issym():
                puts.append(Put(path, "link", target=m.linkname))
            elif m.isreg():
                src = scratch / f"{i}"
                f = tar.extractfile(m)
                assert f is not None
                src.write_bytes(f.read())
                puts.append(Put(path, "file", m.mode & 0o7777, m.uid, m.gid, src=src))
    return puts


def place(image: Path, offset: int, puts: list[Put], log: Path) -> None:
    """Apply ``puts`` to the ext4 file system starting ``offset`` bytes into ``image``."""
    if not puts:
        return
    target = f"{image}?offset={offset}"
    # The installer's reader of ext4 folders serves here too (agent/ is importable on the build host).
    from core.disk.ext4 import Ext4

    existing = Ext4(str(image), offset, stage="overlay").existing(folders_of(puts))
    with open(log, "a", encoding="utf-8") as lf:
        lf.write(f"$ debugfs -w -f - '{target}'  # {len(puts)} placement(s)\n")
        proc = subprocess.run(["debugfs", "-w", "-f", "-", target], input=script_for(puts, existing).encode(),
                              capture_output=True)
        err = proc.stderr.decode("utf-8", "replace")
        bad = [line for line in err.splitlines() if not _BENIGN.match(line.strip())]
        lf.write("".join(line + "\n" for line in bad))
    if proc.returncode != 0 or bad:
        raise ToolError("debugfs could not place the overlay: " + "; ".join(bad[:3]), log)
    # Read back: every file and link must now be in its folder.
    dirs = sorted({str(Path(p.path).parent) for p in puts if p.kind != "dir"})
    check = subprocess.run(["debugfs", "-f", "-", target], input="".join(f"ls {_q(d)}\n" for d in dirs),
                           capture_output=True, text=True)
    listed = set(check.stdout.split())
    missing = [p.path for p in puts if p.kind != "dir" and Path(p.path).name not in listed]
    if missing:
        raise ToolError(f"debugfs did not place {', '.join(missing[:3])}", log)
