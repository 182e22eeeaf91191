"""Reading and changing files in an ext4 file system inside a disk, with debugfs (no mount).

The same calls work on a target disk (a block device), on a sparse test file, and on an image
file the builder is assembling, through e2fsprogs' ``?offset=`` device option. This is the one
debugfs wrapper: quoting, the filter of debugfs' harmless complaints, and running a script are
here, for the installer (first boot) and the builder (an image's copy of a root) alike.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from core.disk.tools import InstallError, ext4

# debugfs keeps going after a failed command and reports these expected ones (a file that is
# not there to remove; its banner; inode allocation notes). Anything else on stderr is a failure.
BENIGN = re.compile(r"^(debugfs [\d.]+ \(|rm: File not found by ext2_lookup|unlink: .*File not found|"
                    r"Allocated inode: \d+|$)")


@dataclass(frozen=True)
class Entry:
    name: str
    mode: int
    uid: int
    gid: int

    @property
    def is_dir(self) -> bool:
        return (self.mode & 0o170000) == 0o040000


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


@dataclass(frozen=True)
class DebugfsRun:
    """What one debugfs run said: its output, the stderr lines that are not benign, its status."""

    stdout: str
    errors: list[str]
    returncode: int


def quote(path: str, stage: str = "identity") -> str:
    """A path as one debugfs argument (debugfs has no escapes: quotes and newlines are refused)."""
    if '"' in path or "\n" in path:
        raise InstallError(stage, f"cannot handle a path with quotes or newlines: {path!r}")
    return f'"{path}"'


_q = quote


def run_debugfs(target: str, commands: list[str], write: bool = False) -> DebugfsRun:
    """Run ``commands`` (one debugfs script, read from stdin) on ``target`` (``disk?offset=N``)."""
    argv = ["debugfs", *(["-w"] if write else []), "-f", "-", target]
    proc = subprocess.run(argv, input="\n".join(commands).encode() + b"\n", capture_output=True,
                          env={**os.environ, "LC_ALL": "C"})
    err = proc.stderr.decode("utf-8", "replace")
    bad = [line for line in err.splitlines() if not BENIGN.match(line.strip())]
    return DebugfsRun(proc.stdout.decode("utf-8", "replace"), bad, proc.returncode)


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


def script_for(puts: list[Put], existing: set[str], stage: str = "overlay") -> list[str]:
    """debugfs commands for ``puts``. Only folders not in ``existing`` are made: debugfs 1.47.0's
    mkdir of a folder that is already there can corrupt the file system (e2fsck then finds
    wrong link counts and an unconnected inode)."""
    cmds: list[str] = []
    made: set[str] = set(existing)
    for p in puts:
        q = quote(p.path, stage)
        parts = p.path.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/" + "/".join(parts[:i])
            if d not in made:
                made.add(d)
                cmds.append(f"mkdir {quote(d, stage)}")
        if p.kind == "dir":
            if p.path not in made:
                cmds.append(f"mkdir {q}")
            # Folders the root already has keep their mode unless the overlay asks for another.
            if (p.mode, p.uid, p.gid) != (0o755, 0, 0):
                cmds += [f"sif {q} mode 0{0o040000 | p.mode:o}", f"sif {q} uid {p.uid}", f"sif {q} gid {p.gid}"]
        elif p.kind == "link":
            cmds += [f"rm {q}", f"symlink {q} {quote(p.target, stage)}"]
        else:
            assert p.src is not None
            cmds += [f"rm {q}", f"write {quote(str(p.src), stage)} {q}", f"sif {q} mode 0{0o100000 | p.mode:o}",
                     f"sif {q} uid {p.uid}", f"sif {q} gid {p.gid}"]
        made.add(p.path)
    return cmds


class Ext4:
    """One ext4 file system at ``offset`` bytes into ``disk``."""

    def __init__(self, disk: str, offset: int, stage: str = "identity") -> None:
        self.target = ext4(disk, offset)
        self.stage = stage

    def debugfs(self, commands: list[str], write: bool = False) -> str:
        """Run a debugfs script; its output. A failure (any non-benign complaint, when writing)
        raises :class:`InstallError` naming this file system's stage."""
        if not commands:
            return ""
        run = run_debugfs(self.target, commands, write)
        if run.returncode != 0 or (write and run.errors):
            raise InstallError(self.stage, f"debugfs on {self.target}: "
                                           f"{'; '.join(run.errors[:3]) or run.returncode}")
        return run.stdout

    def place(self, puts: list[Put]) -> None:
        """Apply ``puts`` (files, folders, links, with modes and owners), then read back that
        every file and link is in its folder."""
        if not puts:
            return
        self.debugfs(script_for(puts, self.existing(folders_of(puts)), self.stage), write=True)
        dirs = sorted({str(PurePosixPath(p.path).parent) for p in puts if p.kind != "dir"})
        listed = set(self.debugfs([f"ls {quote(d, self.stage)}" for d in dirs]).split())
        missing = [p.path for p in puts if p.kind != "dir" and PurePosixPath(p.path).name not in listed]
        if missing:
            raise InstallError(self.stage, f"debugfs did not place {', '.join(missing[:3])}")

    def existing(self, paths: list[str]) -> set[str]:
        """Which of ``paths`` exist (one debugfs run listing each parent folder)."""
        parents = sorted({str(PurePosixPath(p).parent) for p in paths})
        out = self.debugfs([f"ls -p {_q(d)}" for d in parents])
        present: set[str] = set()
        current = None
        for line in out.splitlines():
            if line.startswith("debugfs: ls -p "):  # debugfs echoes each command it reads
                current = line.removeprefix("debugfs: ls -p ").strip().strip('"').rstrip("/")
                continue
            fields = line.split("/")
            if current is not None and len(fields) >= 7 and fields[1].isdigit() and fields[1] != "0":
                present.add(f"{current}/{'/'.join(fields[5:-2])}")
        return {p for p in paths if p in present}

    def read(self, path: str) -> bytes | None:
        """A file's bytes, or None when it is not there."""
        with tempfile.TemporaryDirectory(prefix="clusterctl-ext4.") as tmp:
            out = Path(tmp) / "f"
            self.debugfs([f"dump {_q(path)} {_q(str(out))}"])
            return out.read_bytes() if out.exists() else None

    def listdir(self, path: str) -> list[Entry] | None:
        """A folder's entries (not . and ..), or None when it is not a folder."""
        out = self.debugfs([f"ls -p {_q(path)}"])
        entries = []
        found = False  # a folder lists at least "." and ".."; a missing one lists nothing
        for line in out.splitlines():
            # /inode/mode/uid/gid/name/size/
            fields = line.split("/")
            if len(fields) < 7 or not fields[1].isdigit():
                continue
            found = True
            name = "/".join(fields[5:-2])
            if name in (".", "..") or fields[1] == "0":
                continue
            entries.append(Entry(name, int(fields[2], 8), int(fields[3]), int(fields[4])))
        return entries if found else None

    def write_files(self, files: list[tuple[str, bytes, int, int, int]]) -> None:
        """Place files: (path, bytes, mode, uid, gid); parent folders are made as needed (0755)."""
        folders = sorted({"/" + "/".join(p.strip("/").split("/")[:j]) for p, *_ in files
                          for j in range(1, p.strip("/").count("/") + 1)})
        made = self.existing(folders)
        with tempfile.TemporaryDirectory(prefix="clusterctl-ext4.") as tmp:
            cmds: list[str] = []
            for i, (path, data, mode, uid, gid) in enumerate(files):
                parts = path.strip("/").split("/")[:-1]
                for j in range(1, len(parts) + 1):
                    d = "/" + "/".join(parts[:j])
                    if d not in made:
                        made.add(d)
                        cmds.append(f"mkdir {_q(d)}")
                src = Path(tmp) / str(i)
                src.write_bytes(data)
                q = _q(path)
                cmds += [f"rm {q}", f"write {_q(str(src))} {q}", f"sif {q} mode 0{0o100000 | mode:o}",
                         f"sif {q} uid {uid}", f"sif {q} gid {gid}"]
            self.debugfs(cmds, write=True)

    def remove(self, paths: list[str]) -> None:
        """Remove files and symlinks (missing ones are fine)."""
        self.debugfs([f"rm {_q(p)}" for p in paths], write=True)

    def walk(self, top: str) -> list[tuple[str, Entry]]:
        """Every entry under ``top`` (paths relative to it), parents before children."""
        out: list[tuple[str, Entry]] = []
        pending = [""]
        while pending:
            rel = pending.pop(0)
            for e in self.listdir(f"{top}/{rel}".rstrip("/")) or []:
                child = f"{rel}/{e.name}".lstrip("/")
                out.append((child, e))
                if e.is_dir:
                    pending.append(child)
        return out

    def remove_tree(self, top: str) -> None:
        """Remove a folder and everything in it (children first); nothing when it is absent."""
        if self.listdir(top) is None:
            return
        items = self.walk(top)
        cmds = [f"rm {_q(f'{top}/{rel}')}" for rel, e in reversed(items) if not e.is_dir]
        cmds += [f"rmdir {_q(f'{top}/{rel}')}" for rel, e in reversed(items) if e.is_dir]
        cmds.append(f"rmdir {_q(top)}")
        self.debugfs(cmds, write=True)


def dump_tree(fs: Ext4, top: str, dest: Path) -> bool:
    """Copy a folder out of the file system (owners and modes kept); False when it is absent."""
    if fs.listdir(top) is None:
        return False
    dest.mkdir(parents=True, exist_ok=True)
    fs.debugfs([f"rdump {_q(top)} {_q(str(dest))}"])
    return True


def place_tree(fs: Ext4, local: Path, dest: str) -> int:
    """Lay a local folder over ``dest`` in the file system: files, folders, symlinks, with their
    owners and modes. Returns the number of entries placed."""
    cmds: list[str] = []
    count = 0
    # debugfs 1.47.0's mkdir of a folder that exists can leave a half-made folder inode behind
    # (e2fsck: "unconnected directory inode"), so only missing folders are made.
    folders = [f"/{dest.strip('/')}/{Path(d, n).relative_to(local).as_posix()}".replace("//", "/")
               for d, dn, _ in os.walk(local) for n in dn if not Path(d, n).is_symlink()]
    there = fs.existing(folders)
    for dirpath, dirnames, filenames in os.walk(local):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(local)
        for name in sorted(dirnames) + sorted(filenames):
            src = Path(dirpath, name)
            rel = "" if rel_dir == Path(".") else rel_dir.as_posix()
            path = "/" + "/".join(p for p in (dest.strip("/"), rel, name) if p)
            st = src.lstat()
            q = _q(path)
            if src.is_symlink():
                cmds += [f"rm {q}", f"symlink {q} {_q(os.readlink(src))}"]
            elif src.is_dir():
                cmds += [] if path in there else [f"mkdir {q}"]
                cmds.append(f"sif {q} mode 0{0o040000 | (st.st_mode & 0o7777):o}")
            else:
                cmds += [f"rm {q}", f"write {_q(str(src))} {q}", f"sif {q} mode 0{0o100000 | (st.st_mode & 0o7777):o}"]
            cmds += [f"sif {q} uid {st.st_uid}", f"sif {q} gid {st.st_gid}"] if not src.is_symlink() else []
            count += 1
    fs.debugfs(cmds, write=True)
    return count
