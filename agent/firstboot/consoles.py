"""The wizard on every console the box has at once: its screen (the first virtual terminal) and
its serial port.

A person may stand at the monitor and keyboard, or sit at a serial line, or neither (a test
types on the emulated keyboard). Everything the wizard says goes to every console; the first
console on which a whole answer is typed wins that question, and the others are told where it
was answered. Events stay on the serial console (the unit's standard output), never here.

Which consoles: the kernel's own (``/sys/class/tty/console/active``, from ``console=``):
``tty0`` is the screen (written as ``/dev/tty1``, the VT shown at boot), ``ttyS0`` the serial
port. A box without a serial port still has its screen.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import struct
import subprocess
import termios
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

ACTIVE = "/sys/class/tty/console/active"
CLEAR = "\x1b[H\x1b[2J"
# The Linux console's built-in font has no glyph for these (they show as a block).
VGA_SAFE = str.maketrans({"—": "-", "–": "-", "…": "...", "→": "->", "≥": ">=", "≤": "<="})


class ScreenFile:
    """The screen's file: text the console font can show."""

    def __init__(self, file: Any) -> None:
        self.file = file

    def write(self, text: str) -> int:
        return int(self.file.write(text.translate(VGA_SAFE)))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)


@dataclass
class Terminal:
    """One console: its device, a rich console writing to it, and what was typed so far."""

    name: str  # "screen" | "serial" | the device's name
    path: str
    fd: int
    console: Console
    pending: bytes = b""
    open: bool = True


def console_devices(active: str = ACTIVE) -> list[tuple[str, str]]:
    """(name, device) of the kernel's consoles, the screen first; /dev/console if none is known."""
    try:
        with open(active, encoding="utf-8") as f:
            names = f.read().split()
    except OSError:
        names = []
    out: list[tuple[str, str]] = []
    for n in names:
        if n.startswith("tty") and n[3:].isdigit():
            dev = ("screen", "/dev/tty1" if n == "tty0" else f"/dev/{n}")
        elif n.startswith("ttyS"):
            dev = ("serial", f"/dev/{n}")
        else:
            dev = (n, f"/dev/{n}")
        if dev not in out:
            out.append(dev)
    out.sort(key=lambda d: d[0] != "screen")
    return out or [("console", "/dev/console")]


def _columns(fd: int) -> int:
    """The terminal's width; a serial line reports 0 (then 80, as rich assumes)."""
    with contextlib.suppress(OSError):
        _rows, cols, _x, _y = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
        if cols:
            return int(cols)
    return 80


def _line_mode(fd: int) -> None:
    """Canonical input with echo: the person sees what they type and edits it before Enter."""
    with contextlib.suppress(termios.error):
        attrs = termios.tcgetattr(fd)
        attrs[3] |= termios.ICANON | termios.ECHO | termios.ECHOE | termios.ICRNL
        attrs[0] |= termios.ICRNL
        termios.tcsetattr(fd, termios.TCSANOW, attrs)


def _echo(fd: int, on: bool) -> None:
    """Echo of typed keys on or off (a passphrase); the Enter still moves to the next line."""
    with contextlib.suppress(termios.error, OSError):
        attrs = termios.tcgetattr(fd)
        attrs[3] = (attrs[3] | termios.ECHO | termios.ECHOE) if on else (attrs[3] & ~(termios.ECHO | termios.ECHOE))
        attrs[3] |= termios.ECHONL
        termios.tcsetattr(fd, termios.TCSANOW, attrs)


class Consoles:
    """What the wizard prints goes to all; ``input`` returns the first whole line from any.

    Duck-types the parts of a rich Console the wizard uses (``print``, ``input``, ``file``)."""

    def __init__(self, devices: Sequence[tuple[str, str]] | None = None, term: str = "vt220") -> None:
        self.terminals: list[Terminal] = []
        for name, path in devices if devices is not None else console_devices():
            try:
                fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
            except OSError:
                continue  # a console that can't be opened is one the person can't use either
            _line_mode(fd)
            out: Any = os.fdopen(os.dup(fd), "w", encoding="utf-8", errors="replace", buffering=1)
            if name == "screen":
                out = ScreenFile(out)
                out.write(CLEAR)  # the wizard starts on a clean screen, not below the kernel's messages
            console = Console(file=out, force_terminal=True, width=_columns(fd), highlight=False,
                              color_system="standard", legacy_windows=False, _environ={"TERM": term})
            self.terminals.append(Terminal(name, path, fd, console))
        if not self.terminals:
            raise OSError("no console could be opened")
        self.source: Terminal = self.terminals[0]  # where the last answer came from

    # --- output -----------------------------------------------------------------------

    def print(self, *objects: Any, **kwargs: Any) -> None:
        for t in self.terminals:
            self._to(t, *objects, **kwargs)

    @staticmethod
    def _to(t: Terminal, *objects: Any, **kwargs: Any) -> None:
        """Print on one console; one that has gone away (EIO on a hung-up line) is left out from then on."""
        if not t.open:
            return
        try:
            t.console.print(*objects, **kwargs)
            t.console.file.flush()
        except OSError:
            t.open = False

    @property
    def file(self) -> Any:
        return self  # the wizard flushes console.file before a shell

    def flush(self) -> None:
        for t in self.terminals:
            if t.open:
                with contextlib.suppress(OSError):
                    t.console.file.flush()

    # --- input ------------------------------------------------------------------------

    def input(self, prompt: str = "", secret: bool = False) -> str:
        """Show ``prompt`` (plain text, not markup) everywhere; the first whole line typed on any
        console is the answer. ``secret``: nothing typed is shown, on any console."""
        for t in self.terminals:
            # Keys pressed before the question was on screen are not an answer to it.
            with contextlib.suppress(termios.error, OSError):
                termios.tcflush(t.fd, termios.TCIFLUSH)
            t.pending = b""
            if secret:
                _echo(t.fd, False)
            self._to(t, prompt, end="", markup=False)
        try:
            return self._first_line(secret)
        finally:
            if secret:
                for t in self.terminals:
                    _echo(t.fd, True)

    def _first_line(self, secret: bool) -> str:
        while True:
            readable = [t for t in self.terminals if t.open]
            if not readable:
                raise EOFError("every console is closed")
            ready, _, _ = select.select([t.fd for t in readable], [], [])
            for t in readable:
                if t.fd not in ready:
                    continue
                try:
                    chunk = os.read(t.fd, 1024)
                except OSError:
                    chunk = b""
                if not chunk:
                    t.open = False  # hung up: the others still count
                    continue
                t.pending += chunk
                if b"\n" in t.pending or b"\r" in t.pending:
                    line = t.pending.replace(b"\r", b"\n").split(b"\n", 1)[0].decode("utf-8", "replace")
                    t.pending = b""
                    self._answered(t, line, secret)
                    return line

    def _answered(self, winner: Terminal, line: str, secret: bool = False) -> None:
        self.source = winner
        shown = "hidden" if secret else line.strip() or "Enter"
        for t in self.terminals:
            if t is not winner:
                self._to(t, f"\n[dim](answered on the {winner.name}: {shown})[/dim]")

    # --- a shell on the console that asked for it ---------------------------------------

    def spawn_shell(self, argv: list[str]) -> int:
        where = self.source
        for t in self.terminals:
            if t is not where:
                self._to(t, f"[dim]A shell is open on the {where.name}; the wizard comes back when it exits.[/dim]")

        def own_terminal() -> None:  # the shell's controlling terminal is the console it runs on
            os.setsid()
            with contextlib.suppress(OSError):
                fcntl.ioctl(where.fd, termios.TIOCSCTTY, 0)

        return subprocess.call(argv, stdin=where.fd, stdout=where.fd, stderr=where.fd, preexec_fn=own_terminal)

    def close(self) -> None:
        for t in self.terminals:
            with contextlib.suppress(OSError):
                t.console.file.close()
            with contextlib.suppress(OSError):
                os.close(t.fd)
        self.terminals = []


@dataclass
class Progress:
    """The install's steps as the person at the box sees them, on every console."""

    consoles: Consoles
    host: str
    disk: str
    steps: list[str] = field(default_factory=list)

    def step(self, step: str) -> None:
        self.steps.append(step)
        kind, _, os_name = step.partition(":")
        what = {"partition": "writing the partition table", "esp": "copying the boot partition",
                "copy": f"copying {os_name}", "grow": f"growing {os_name} to the disk",
                "identity": f"making {os_name} this host", "boot": "writing the boot menus"}.get(kind, step)
        self.consoles.print(f"[bold]Installing {self.host}[/bold] on {self.disk}: {what} …")
        self.consoles.flush()
