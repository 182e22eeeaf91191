"""Reading and changing files in an ext4 file system inside a disk, with debugfs (no mount).

The same calls work on a target disk (a block device) and on a sparse test file, through
e2fsprogs' ``?offset=`` device option.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from core.disk.tools import InstallError, ext4

# debugfs reports these and carries on; anything else on stderr is a failure.
_BENIGN = re.compile(r"^(debugfs [\d.]+ \(|"
                     r"rm: File not found by ext2_lookup|Allocated inode: \d+|$)")


@dataclass(frozen=True)
class Entry:
    name: str
    mode: int
    uid: int
    gid: int

    @property
    def is_dir(self) -> bool:
        return (self.mode & 0o170000) == 0o040000


def _q(path: str) -> str:
    if '"' in path or "\n" in path:
        raise InstallError("identity", f"cannot handle a path with quotes or newlines: {path!r}")
    return f'"{path}"'


class Ext4:
    """One ext4 file system at ``offset`` bytes into ``disk``."""

    def __init__(self, disk: str, offset: int, stage: str = "identity") -> None:
        self.target = ext4(disk, offset)
        self.stage = stage

    def debugfs(self, commands: list[str], write: bool = False) -> str:
        if not commands:
            return ""
        argv = ["debugfs", *(["-w"] if write else []), "-f", "-", self.target]
        proc = subprocess.run(argv, input="\n".join(commands).encode() + b"\n", capture_output=True,
                              env={**os.environ, "LC_ALL": "C"})
        err = proc.stderr.decode("utf-8", "replace")
        bad = [line for line in err.splitlines() if not _BENIGN.match(line.strip())]
        if proc.returncode != 0 or (write and bad):
            raise InstallError(self.stage, f"debugfs on {self.target}: {'; '.join(bad[:3]) or proc.returncode}")
        return proc.stdout.decode("utf-8", "replace")

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
