"""Running the build's external tools: one log file per stage, output streamed line by line.

Every tool a stage runs appends to that stage's log, so a failure can name the stage and
point at a file holding everything the tool said. ``on_line`` lets the caller show progress
(mmdebstrap's download/unpack lines) while the tool runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

LineSink = Callable[[str], None]


class ToolError(RuntimeError):
    """A tool exited non-zero (or is missing); the message names it and the log."""

    def __init__(self, message: str, log: Path | None = None) -> None:
        super().__init__(message)
        self.log = log


class ToolRunner:
    """Runs commands for one stage, appending their output to ``log``."""

    def __init__(self, log: Path, on_line: LineSink | None = None) -> None:
        self.log = log
        self.on_line = on_line

    def run(self, argv: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
            stdin_bytes: bytes | None = None) -> str:
        """Run ``argv``; return its output; raise :class:`ToolError` on failure."""
        exe = shutil.which(argv[0])
        if exe is None:
            raise ToolError(f"{argv[0]} is not installed (see scripts/debian-packages.txt)", self.log)
        full_env = {**os.environ, **(env or {})}
        lines: list[str] = []
        with open(self.log, "a", encoding="utf-8") as log:
            log.write(f"$ {shlex.join(argv)}\n")
            log.flush()
            proc = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                stdin=subprocess.PIPE if stdin_bytes is not None else subprocess.DEVNULL,
                env=full_env, cwd=cwd, text=False,
                # The tool gets its own process group so a SIGINT at the terminal reaches us
                # first; we then end it ourselves and clean up in order.
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
            try:
                if stdin_bytes is not None and proc.stdin is not None:
                    proc.stdin.write(stdin_bytes)
                    proc.stdin.close()
                assert proc.stdout is not None
                for raw in proc.stdout:
                    line = raw.decode("utf-8", "replace").rstrip("\n")
                    lines.append(line)
                    log.write(line + "\n")
                    if self.on_line:
                        self.on_line(line)
                rc = proc.wait()
            except BaseException:
                _end(proc)
                raise
        if rc != 0:
            tail = "\n".join(lines[-15:])
            raise ToolError(f"{argv[0]} exited with status {rc}:\n{tail}", self.log)
        return "\n".join(lines)


def _die_with_parent() -> None:
    """In the child: be killed if the build process dies (a SIGKILLed build leaves no tool running)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _end(proc: subprocess.Popen[bytes]) -> None:
    """Stop a tool we started (and its children) when the build is interrupted."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        proc.wait()


_MEMO = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "clusterctl" / "tool-versions.json"


@functools.cache
def tool_version(name: str) -> str:
    """The first version-looking token a tool prints; part of stage keys (new tool, new result).

    Remembered per binary (path, size, mtime), so planning a no-op rebuild runs no tools.
    """
    exe = shutil.which(name)
    if exe is None:
        return "missing"
    st = os.stat(exe)
    sig = f"{os.path.realpath(exe)}:{st.st_size}:{st.st_mtime_ns}"
    memo = read_memo(_MEMO)
    if sig in memo:
        return memo[sig]
    version = _ask_version(name, exe)
    memo[sig] = version
    write_memo(_MEMO, memo)
    return version


def read_memo(path: Path) -> dict[str, str]:
    """A JSON memo of facts about files, keyed by the file's identity; empty when unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_memo(path: Path, memo: dict[str, str]) -> None:
    """Replace the memo whole (a memo that cannot be written is only a slower next plan)."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(memo, indent=1, sort_keys=True))
        os.replace(tmp, path)


def _ask_version(name: str, exe: str) -> str:
    flags = {"mkfs.ext4": ["-V"], "mke2fs": ["-V"], "debugfs": ["-V"], "mkfs.vfat": ["--help"],
             "syslinux": ["--version"], "sfdisk": ["--version"], "mmdebstrap": ["--version"], "qemu-img": ["--version"]}
    try:
        out = subprocess.run([exe, *flags.get(name, ["--version"])], capture_output=True, text=True,
                             timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    m = re.search(r"\d+(\.\d+)+\S*", out.stdout + out.stderr)
    return m.group(0) if m else "unknown"


def userns_prefix() -> list[str]:
    """Run a command as root of a user namespace when we are not root (rootless builds).

    Extracting a root file system with its owners needs uid 0 or a mapped range of ids;
    ``unshare --map-auto`` maps the caller's /etc/subuid range, like mmdebstrap's unshare mode.
    """
    if os.geteuid() == 0:
        return []
    return ["unshare", "--user", "--map-root-user", "--map-auto", "--"]
