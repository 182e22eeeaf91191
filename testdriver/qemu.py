"""The machine driver: one QEMU process imitating one board, watched through its serial console.

    m = Machine(board, workdir, boot_image=image, as_usb=True)
    m.start()
    m.wait_for("ready", timeout=600)          # or a dict of fields, or a predicate on the event
    m.power_off(); m.reset(); m.kill(); m.set_link(0, up=False); m.send_serial("ls\\n")
    out = m.succeed("cat /proc/mounts"); status, out = m.execute("ls /n"); m.fail("cat /n/x")
    m.wait_until_succeeds("test -e /n/vault", timeout=120)

The command methods (named as in the NixOS test driver) need a guest with testdriver.shell's
guest files (the ``t`` helper, root logged in on the serial console), which a lab's overlay
puts on the image; the first command after a boot waits for that shell to answer.

Events are read live from the console (``CLUSTERCTL {...}`` lines) in arrival order; each
``wait_for`` consumes events up to the one it matched, so waiting twice for ``ready`` waits
for a second one. Failures raise :class:`MachineError` whose text carries the last console
lines and the events seen, which is what a person needs to see why a boot went wrong.

A kernel that prints nothing for ``stall_reset_after`` seconds (120) between its banner and
starting init is a hung emulator, not our code: while someone waits, the driver presses reset
once and says so in the console log (``stall_resets`` counts it; None turns it off).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from testdriver import screen
from testdriver.board import Board, Disk
from testdriver.console import Console, Event
from testdriver.errors import MachineError, MachineExited, MachineTimeout
from testdriver.qemu_cmd import (
    STICK_ID,
    MachineConfig,
    MachinePaths,
    MachineSetupError,
    build_command,
    prepare_files,
    uncabled_nics,
)
from testdriver.qmp import QMP, QMPError
from testdriver.shell import CommandFailed, CommandResult, SerialShell

if TYPE_CHECKING:
    from testdriver.lan import Lan

__all__ = ["CommandFailed", "CommandResult", "Machine", "MachineError", "MachineExited", "MachineSetupError",
           "MachineTimeout"]

Match = str | dict[str, Any] | Callable[[Event], bool]
TAIL_LINES = 40
STALL_RESET_AFTER = 120.0  # seconds of silence in the kernel's boot that mean a hung emulator
_SOCK_PATH_MAX = 100  # sun_path holds 108 bytes


def _matcher(match: Match) -> Callable[[Event], bool]:
    if callable(match):
        return match
    if isinstance(match, str):
        return lambda e: e.get("event") == match
    wanted = dict(match)
    return lambda e: all(e.get(k) == v for k, v in wanted.items())


def _describe(match: Match) -> str:
    if isinstance(match, str):
        return f"event {match!r}"
    if isinstance(match, dict):
        return f"event matching {json.dumps(match)}"
    return f"event matching {getattr(match, '__name__', 'a predicate')}"


class Machine:
    def __init__(
        self,
        board: Board,
        workdir: str | os.PathLike[str],
        *,
        boot_image: str | os.PathLike[str] | None = None,
        as_usb: bool = True,
        kernel: str | os.PathLike[str] | None = None,
        initrd: str | os.PathLike[str] | None = None,
        append: str = "",
        extra_disks: Sequence[Disk] = (),
        macs: Sequence[str] | None = None,
        dmi_serial: str | None = None,
        lan: Lan | Sequence[Lan | None] | None = None,
        name: str | None = None,
        stall_reset_after: float | None = STALL_RESET_AFTER,
    ) -> None:
        self.name = name or board.name
        self.stall_reset_after = stall_reset_after
        self.stall_resets = 0
        self.workdir = Path(workdir).resolve()
        lans: list[Lan | None] = [] if lan is None else (list(lan) if isinstance(lan, Sequence) else [lan])
        self.config = MachineConfig(
            board=board,
            boot_image=Path(boot_image) if boot_image is not None else None,
            as_usb=as_usb,
            kernel=Path(kernel) if kernel is not None else None,
            initrd=Path(initrd) if initrd is not None else None,
            append=append,
            extra_disks=list(extra_disks),
            macs=list(macs) if macs is not None else None,
            dmi_serial=dmi_serial,
            netdevs=[x.netdev() if x is not None else None for x in lans] if lans else None,
        )
        self._own_sockdir = len(str(self.workdir / "serial.sock")) > _SOCK_PATH_MAX
        sockdir = Path(tempfile.mkdtemp(prefix="clusterctl-qemu-")) if self._own_sockdir else self.workdir
        self.paths = MachinePaths(self.workdir, sockdir)
        self.proc: subprocess.Popen[bytes] | None = None
        self.console: Console | None = None
        self._qmp: QMP | None = None
        self._cursor = 0
        self.started_at = 0.0
        self._shell = SerialShell(self)

    @property
    def board(self) -> Board:
        return self.config.board

    # --- life cycle -------------------------------------------------------------------------

    def command(self) -> list[str]:
        prepare_files(self.config, self.paths)
        return build_command(self.config, self.paths)

    def start(self, timeout: float = 30.0) -> Machine:
        """Power on. Disks already in the work dir are kept, so a second start boots what was installed."""
        if self.running:
            raise MachineError(f"machine {self.name} is already running")
        self._disconnect()
        for sock in (self.paths.serial_sock, self.paths.qmp_sock):
            sock.unlink(missing_ok=True)
        argv = self.command()
        (self.workdir / "qemu.cmdline").write_text(shlex.join(argv) + "\n")
        with (self.workdir / "qemu.log").open("ab") as log:
            try:
                self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            except FileNotFoundError:
                raise MachineSetupError(f"{argv[0]} not found: install Debian's 'qemu-system-x86' package") from None
        self.started_at = time.monotonic()
        self._cursor = 0
        self._shell.reboot()
        try:
            sock = self._connect_serial(timeout)
            self.console = Console(sock, self.paths.console_log, self.started_at)
            self.console.watchdog = self._kernel_watchdog
            self._qmp = QMP(self.paths.qmp_sock, timeout=timeout)
            uncabled = uncabled_nics(self.config)
            if uncabled:  # started paused (-S): no carrier on those ports before the guest runs
                for i in uncabled:
                    self.set_link(i, up=False)
                self.qmp("cont")
        except (QMPError, OSError) as e:
            # QEMU checks devices only after the console is connected: a refused option ends it here.
            assert self.proc is not None
            try:
                code: int | None = self.proc.wait(5)
            except subprocess.TimeoutExpired:
                code = None
            self.kill()
            raise MachineSetupError(f"QEMU did not start (status {code}; {e}):\n{self._qemu_log()}") from None
        except BaseException:
            self.kill()
            raise
        return self

    def _connect_serial(self, timeout: float) -> socket.socket:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise MachineSetupError(f"QEMU exited at once (status {self.proc.returncode}):\n{self._qemu_log()}")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(self.paths.serial_sock))
                return sock
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if time.monotonic() > deadline:
                    raise MachineSetupError(f"QEMU's serial socket did not appear:\n{self._qemu_log()}") from None
                time.sleep(0.05)

    def _qemu_log(self) -> str:
        try:
            return (self.workdir / "qemu.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def _disconnect(self) -> None:
        if self._qmp is not None:
            self._qmp.close()
            self._qmp = None
        if self.console is not None:
            self.console.close()

    def close(self) -> None:
        """Stop the machine if it runs (QMP quit, else SIGKILL) and release sockets. Disks stay."""
        if self.running:
            try:
                self.quit()
            except (MachineError, QMPError, OSError):
                self.kill()
        self._disconnect()
        if self._own_sockdir:
            shutil.rmtree(self.paths.sockdir, ignore_errors=True)

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- power ------------------------------------------------------------------------------

    def qmp(self, command: str, **arguments: Any) -> Any:
        if self._qmp is None or not self.running:
            raise MachineError(f"machine {self.name} is not running")
        return self._qmp.execute(command, **arguments)

    def power_off(self, timeout: float = 60.0) -> bool:
        """Press the power button (ACPI); True if the guest shut down in time, else QEMU is quit."""
        self.qmp("system_powerdown")
        try:
            self.wait_exit(timeout)
            return True
        except MachineTimeout:
            self.quit()
            return False

    def reset(self) -> None:
        """The reset button: the guest reboots at once, without shutting down."""
        self.qmp("system_reset")
        self._shell.reboot()

    def _kernel_watchdog(self) -> None:
        """Once per machine, the reset button for a kernel gone silent before init: under TCG a
        guest very rarely hangs there (seen once in about 200 boots, after the switch to the
        HPET clocksource), before anything of ours runs. Nothing has been written by then, so a
        reset loses nothing; the console log says it happened."""
        console = self.console
        if (console is None or self.stall_reset_after is None or self.stall_resets or not console.in_kernel
                or time.monotonic() - console.last_output < self.stall_reset_after):
            return
        self.stall_resets += 1
        console.in_kernel = False
        console.note(f"the kernel printed nothing for {self.stall_reset_after:.0f} s before starting init: "
                     "pressing reset (once)")
        with contextlib.suppress(MachineError, QMPError):
            self.qmp("system_reset")
            self.qmp("cont")  # a guest stopped in the monitor runs again, too

    def quit(self, timeout: float = 10.0) -> None:
        """Stop QEMU in an orderly way (disk caches flushed); the guest gets no warning."""
        with contextlib.suppress(QMPError):  # QEMU may close the socket before it answers
            self.qmp("quit")
        self._reap(timeout)

    def kill(self) -> None:
        """A power cut: SIGKILL to QEMU, nothing flushed."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self._reap(10.0)

    def _reap(self, timeout: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if self.console is not None:
            self.console.wait(lambda: False, 5.0)  # let the reader drain to EOF

    def wait_exit(self, timeout: float) -> int:
        """Wait for QEMU to end (the guest powered off); its exit status."""
        if self.proc is None:
            raise MachineError(f"machine {self.name} was never started")
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise MachineTimeout(self.explain(f"machine did not power off within {timeout:.0f} s")) from None
        if self.console is not None:
            self.console.wait(lambda: False, 5.0)
        return code

    # --- devices ----------------------------------------------------------------------------

    def set_link(self, nic: int = 0, up: bool = True) -> None:
        """Plug (up) or pull (down) the cable of one NIC."""
        self.qmp("set_link", name=f"nic{nic}", up=up)

    # -- the person's side: keyboard and screen ---------------------------------------------
    def send_chars(self, text: str) -> None:
        """Type ``text`` on the emulated keyboard (a US layout), as a person at the box would."""
        screen.send_chars(self.qmp, text)

    def screenshot(self, name: str) -> Path:
        """The display as ``<workdir>/<name>.png``."""
        return screen.screenshot(self.qmp, self.paths.workdir / f"{name}.png")

    def screen_text(self) -> str:
        """What the display shows, read by OCR (tesseract); a screenshot is kept in the workdir."""
        self._shots = getattr(self, "_shots", 0) + 1
        return screen.read_text(self.screenshot(f"screen-{self._shots:02d}"))

    def wait_for_screen(self, *phrases: str, timeout: float = 120.0) -> str:
        """Read the display until it shows every phrase (spaces and case aside); its text."""
        return screen.wait_for_text(self.screen_text, phrases, timeout)

    def unplug_stick(self) -> None:
        """Pull the USB stick out (hot-unplug)."""
        self.qmp("device_del", id=STICK_ID)

    def send_serial(self, text: str | bytes) -> None:
        """Type on the serial console."""
        if self.console is None or self.console.closed:
            raise MachineError(f"machine {self.name} has no open console")
        self.console.send(text)

    # --- commands on the serial shell (testdriver/shell.py) ------------------------------------

    def wait_for_shell(self, timeout: float = 120.0) -> None:
        """Until the guest's serial shell answers a command (done by the first command anyway)."""
        self._shell.connect(timeout)

    def run_shell(self, cmd: str, timeout: float = 60.0, limit: float | None = None) -> CommandResult:
        """Runs ``sh -c cmd`` as root in the guest: its status, stdout, stderr and duration. The
        guest kills it after ``limit`` seconds (default 5 s before ``timeout``): status -1."""
        return self._shell.run(cmd, timeout, limit)

    def execute(self, cmd: str, timeout: float = 60.0, limit: float | None = None) -> tuple[int, str]:
        """(status, stdout) of ``cmd``; raises only when no answer comes (MachineTimeout/Exited)."""
        return self._shell.execute(cmd, timeout, limit)

    def succeed(self, *cmds: str, timeout: float = 60.0) -> str:
        """Runs each command; their stdout, joined. Raises CommandFailed (with the command, its status,
        stdout and stderr) at the first whose status is not 0."""
        return self._shell.succeed(*cmds, timeout=timeout)

    def fail(self, *cmds: str, timeout: float = 60.0) -> str:
        """Runs each command, each expected to fail; their stdout. Raises CommandFailed on a status 0."""
        return self._shell.fail(*cmds, timeout=timeout)

    def wait_until_succeeds(self, cmd: str, timeout: float = 900.0) -> str:
        """Runs ``cmd`` again (a second after each failure) until it succeeds: its stdout. Raises
        MachineTimeout, with the last try's status and output, if it has not within ``timeout``."""
        return self._shell.wait_until_succeeds(cmd, timeout)

    def no_answer(self, what: str, timeout: float) -> MachineError:
        """The error for a wait that ended without its answer: the machine ended, or the deadline."""
        console = self.console
        if (console is not None and console.closed) or (self.proc is not None and not self.running):
            code = self.proc.poll() if self.proc is not None else None
            return MachineExited(self.explain(f"QEMU ended (status {code}) before {what}"))
        return MachineTimeout(self.explain(f"{what} within {timeout:.0f} s"))

    # --- events -----------------------------------------------------------------------------

    @property
    def events(self) -> list[Event]:
        return list(self.console.events) if self.console is not None else []

    def timeline(self) -> list[tuple[float, Event]]:
        """(seconds since power-on, event) for every event of this run."""
        if self.console is None:
            return []
        return list(zip(self.console.times, self.console.events, strict=True))

    def wait_for(self, match: Match, timeout: float = 300.0) -> Event:
        """The next event (after the last one matched) that matches; raises on timeout or exit."""
        if self.console is None:
            raise MachineError(f"machine {self.name} was never started")
        console = self.console
        test = _matcher(match)

        def find() -> int | None:
            for i in range(self._cursor, len(console.events)):
                if test(console.events[i]):
                    return i + 1  # never 0, so a match is always truthy
            return None

        found = console.wait(find, timeout)
        if found:
            self._cursor = found
            return console.events[found - 1]
        if console.closed or not self.running:
            code = self.proc.wait(10) if self.proc is not None else None
            raise MachineExited(self.explain(f"QEMU ended (status {code}) before {_describe(match)}"))
        raise MachineTimeout(self.explain(f"no {_describe(match)} within {timeout:.0f} s"))

    def wait_for_line(self, pattern: str, timeout: float = 300.0, since: int = 0) -> str:
        """The first console line (of this run, after line ``since``) that matches a regex.

        For systems that write no events, such as a plain Debian waiting at ``login:``.
        A line still being written (a prompt) is matched as received so far.
        """
        if self.console is None:
            raise MachineError(f"machine {self.name} was never started")
        console = self.console
        regex = re.compile(pattern)

        def find() -> str | None:
            lines = console.lines_since(since)
            partial = console.tail(1)
            for line in [*lines, *partial[-1:]]:
                if regex.search(line):
                    return line
            return None

        found = console.wait(find, timeout)
        if found:
            return found
        if console.closed or not self.running:
            raise MachineExited(self.explain(f"QEMU ended before a console line matching {pattern!r}"))
        raise MachineTimeout(self.explain(f"no console line matching {pattern!r} within {timeout:.0f} s"))

    def explain(self, what: str) -> str:
        elapsed = time.monotonic() - self.started_at if self.started_at else 0.0
        lines = [f"machine {self.name} (board {self.board.name}, {self.board.firmware}): {what} "
                 f"[{elapsed:.1f} s after power-on]"]  # fmt: skip
        events = self.events
        lines.append(f"events seen ({len(events)}):" if events else "events seen: none")
        lines += [f"  {json.dumps(e)}" for e in events[-20:]]
        tail = self.console.tail(TAIL_LINES) if self.console is not None else []
        lines.append(f"last {len(tail)} console lines ({self.paths.console_log}):")
        lines += [f"  | {line}" for line in tail]
        return "\n".join(lines)
