"""The console reader and the serial shell without QEMU: bytes fed through a socketpair.

The kernel watchdog's arming is checked on a banner line whose newline has not arrived (a
guest stopped or hung in the middle of it), and the shell's protocol against a fake guest that
answers ``t`` lines as the guest's helper does.
"""

from __future__ import annotations

import json
import shlex
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from core.events import format_event, parse_line
from testdriver.board import load_board
from testdriver.console import Console
from testdriver.qemu import CommandFailed, Machine, MachineTimeout

BANNER = b"[    0.000000] Linux version 6.1.0-31-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14)"


@pytest.fixture
def wire(tmp_path: Path) -> Iterator[tuple[socket.socket, Console]]:
    """(the guest's end, the console on the driver's end)."""
    guest, host = socket.socketpair()
    console = Console(host, tmp_path / "console.log", time.monotonic())
    yield guest, console
    guest.close()
    console.close()


def settle(console: Console, check: Callable[[], Any], timeout: float = 5.0) -> Any:
    return console.wait(check, timeout)


def test_a_banner_without_its_newline_arms_the_watchdog(wire: tuple[socket.socket, Console]) -> None:
    guest, console = wire
    guest.sendall(b"SeaBIOS (version 1.16.2-debian-1.16.2-1)\r\nBooting from ROM...\r\n")
    assert settle(console, lambda: console.line_count == 2)
    assert not console.in_kernel
    # The banner comes a few bytes at a time, and the guest stops before the end of its line.
    for i in range(0, len(BANNER), 7):
        guest.sendall(BANNER[i:i + 7])
    assert settle(console, lambda: console.in_kernel)
    assert console.line_count == 2  # still no newline: the banner is only the partial line
    # The end of the kernel's boot, once the line comes in full, disarms it as before.
    guest.sendall(b" #1 SMP\r\n[    1.2] Run /init as init process\r\n")
    assert settle(console, lambda: not console.in_kernel)
    assert console.line_count == 4


def test_an_event_line_cut_by_a_kernel_message_is_mended(wire: tuple[socket.socket, Console]) -> None:
    """As the rescue system's console showed it: a printk lands in the middle of the ``ready``
    line and ends it; the event's rest comes on the next line."""
    guest, console = wire
    guest.sendall(b'[   18.771583] python3[204]: CLUSTERCTL {"event": "ready", "os": "rescue", "firmware": '
                  b'{"mode": "uefi", "se[   18.730807] sd 6:0:0:0: [sda] Write Protect is off\r\n'
                  b'tup_mode": false}}\r\n[   18.746491] sd 6:0:0:0: [sda] Write cache: enabled\r\n'
                  b'CLUSTERCTL {"event": "after"}\r\n')
    assert settle(console, lambda: len(console.events) == 2)
    assert console.events == [{"event": "ready", "os": "rescue", "firmware": {"mode": "uefi", "setup_mode": False}},
                              {"event": "after"}]
    # A torn line whose rest never comes stays no event; the lines after it are read as usual.
    guest.sendall(b'CLUSTERCTL {"event": "lost", "a[    19.1] usb 1-1: new device\r\nplain text\r\n'
                  b'CLUSTERCTL {"event": "last"}\r\n')
    assert settle(console, lambda: len(console.events) == 3)
    assert console.events[-1] == {"event": "last"}


def test_the_end_of_the_kernel_in_a_partial_line_disarms(wire: tuple[socket.socket, Console]) -> None:
    guest, console = wire
    guest.sendall(BANNER + b"\r\n[    2.1] Run /init as in")
    assert settle(console, lambda: console.in_kernel)
    guest.sendall(b"it process")
    assert settle(console, lambda: not console.in_kernel)


def test_the_rest_of_an_armed_line_does_not_arm_again(wire: tuple[socket.socket, Console]) -> None:
    # After the watchdog's reset, what the new boot prints is appended to the stopped banner line:
    # once that line ends it must not count as a second banner.
    guest, console = wire
    guest.sendall(BANNER)
    assert settle(console, lambda: console.in_kernel)
    with console._cond:
        console.in_kernel = False  # as the watchdog leaves it
    guest.sendall(b"\x1bc\x1b[?7l SeaBIOS (version 1.16.2)\r\n")
    assert settle(console, lambda: console.line_count == 1)
    assert not console.in_kernel


def test_the_efi_stubs_line_arms(wire: tuple[socket.socket, Console]) -> None:
    # At loglevel 4 the banner is never printed: under OVMF the stub's line is the kernel's only sign.
    guest, console = wire
    guest.sendall(b"BdsDxe: starting Boot0001\r\n"
                  b"EFI stub: Loaded initrd from LINUX_EFI_INITRD_MEDIA_GUID device path\r\n")
    assert settle(console, lambda: console.in_kernel and console.line_count == 2)
    guest.sendall(format_event("started").encode() + b"\r\n")  # init's first event disarms
    assert settle(console, lambda: not console.in_kernel)


def test_a_complete_banner_line_still_arms(wire: tuple[socket.socket, Console]) -> None:
    guest, console = wire
    guest.sendall(BANNER + b"\r\n")
    assert settle(console, lambda: console.in_kernel and console.line_count == 1)


def idle_machine(tmp_path: Path, sock: socket.socket, **options: Any) -> Machine:
    """A Machine that never started QEMU, its console on ``sock``."""
    m = Machine(load_board("nano-itx"), tmp_path / "m", name="fake", **options)
    m.workdir.mkdir(parents=True, exist_ok=True)
    m.console = Console(sock, m.paths.console_log, time.monotonic())
    m.started_at = time.monotonic()
    return m


def test_the_watchdog_presses_reset_once_on_a_banner_cut_short(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    guest, host = socket.socketpair()
    m = idle_machine(tmp_path, host, stall_reset_after=0.5)
    assert m.console is not None
    m.console.watchdog = m._kernel_watchdog
    pressed: list[str] = []
    monkeypatch.setattr(m, "qmp", lambda command, **_: pressed.append(command))
    try:
        guest.sendall(BANNER)  # and then silence: a stopped guest
        assert m.console.wait(lambda: False, 2.0) is None
        assert m.stall_resets == 1 and pressed == ["system_reset", "cont"]
        assert "pressing reset (once)" in m.paths.console_log.read_text()
        guest.sendall(b"\r\n" + BANNER)  # a second silence in the kernel: no second press
        assert m.console.wait(lambda: False, 1.5) is None
        assert m.stall_resets == 1 and pressed == ["system_reset", "cont"]
    finally:
        guest.close()
        m.console.close()


Answer = Callable[[str], tuple[int, str, str] | None]


class FakeGuest:
    """Reads ``t TAG CMD LIMIT`` lines from the console and answers each as the guest's helper
    would, with a status and output chosen by ``answer(cmd)``; None: no answer (a hung shell)."""

    def __init__(self, sock: socket.socket, answer: Answer) -> None:
        self.sock, self.answer = sock, answer
        self.commands: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        buf = b""
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            if not data:
                return
            buf += data
            *lines, buf = buf.split(b"\n")
            for line in lines:
                _, tag, cmd, _limit = shlex.split(line.decode())
                self.commands.append(cmd)
                got = self.answer(cmd)
                if got is None:
                    continue
                rc, out, err = got
                ev = {"event": "t", "id": tag, "rc": rc, "seconds": 0.01, "out": out, "err": err}
                self.sock.sendall(b"root@x:~# noise\r\nCLUSTERCTL " + json.dumps(ev).encode() + b"\r\n")


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[Callable[[Answer], tuple[Machine, FakeGuest]]]:
    made: list[tuple[Machine, FakeGuest]] = []

    def make(answer: Answer) -> tuple[Machine, FakeGuest]:
        guest, host = socket.socketpair()
        m = idle_machine(tmp_path / str(len(made)), host)
        made.append((m, FakeGuest(guest, answer)))
        return made[-1]

    yield make
    for m, g in made:
        g.sock.close()
        assert m.console is not None
        m.console.close()


def shell_like(cmd: str) -> tuple[int, str, str]:
    if cmd == "true":
        return 0, "", ""
    if cmd.startswith("echo "):
        return 0, cmd[5:] + "\n", ""
    return 2, "", f"sh: {cmd}: not found\n"


def test_execute_succeed_and_fail(fake: Any) -> None:
    m, guest = fake(shell_like)
    assert m.execute("echo hi") == (0, "hi\n")
    assert guest.commands == ["true", "echo hi"]  # the first command of a boot waits for the shell
    assert m.execute("nope") == (2, "")
    assert m.succeed("echo a", "echo b") == "a\nb\n"
    assert m.fail("nope") == ""
    with pytest.raises(CommandFailed) as err:
        m.succeed("echo ok", "nope")
    text = str(err.value)
    assert "`nope` failed (status 2" in text and "sh: nope: not found" in text and "fake" in text
    with pytest.raises(CommandFailed, match="`echo x` succeeded, but was expected to fail"):
        m.fail("echo x")
    with pytest.raises(TypeError, match="timeout by name"):
        m.succeed("echo a", 60)  # type: ignore[arg-type]
    r = m.run_shell("nope")
    assert (r.status, r.out, r.err, r.ok) == (2, "", "sh: nope: not found\n", False)
    assert guest.commands.count("true") == 1


def test_commands_leave_the_event_cursor_alone(fake: Any) -> None:
    m, guest = fake(shell_like)
    guest.sock.sendall(b'CLUSTERCTL {"event": "ready", "host": "x"}\n')
    m.succeed("echo 1")
    assert m.wait_for("ready", timeout=5)["host"] == "x"  # came before the command's result


def test_wait_until_succeeds_retries_until_status_0(fake: Any) -> None:
    tries = iter(range(100))

    def third_time(cmd: str) -> tuple[int, str, str]:
        if cmd == "true":
            return 0, "", ""
        n = next(tries)
        return (0, f"up after {n}\n", "") if n >= 2 else (1, "", "not yet\n")

    m, guest = fake(third_time)
    began = time.monotonic()
    assert m.wait_until_succeeds("test -e /ready", timeout=30) == "up after 2\n"
    assert guest.commands.count("test -e /ready") == 3 and time.monotonic() - began < 10


def test_wait_until_succeeds_gives_up_with_the_last_output(fake: Any) -> None:
    m, _ = fake(shell_like)
    with pytest.raises(MachineTimeout) as err:
        m.wait_until_succeeds("nope", timeout=3)
    assert "`nope` did not succeed within 3 s" in str(err.value) and "sh: nope: not found" in str(err.value)


def test_a_command_without_an_answer_times_out_with_the_console(fake: Any) -> None:
    m, _ = fake(lambda cmd: (0, "", "") if cmd == "true" else None)
    began = time.monotonic()
    with pytest.raises(MachineTimeout) as err:
        m.execute("sleep 100", timeout=1)
    assert time.monotonic() - began < 5
    assert "no result of `sleep 100`" in str(err.value) and "console lines" in str(err.value)


def test_an_event_line_followed_by_its_copy_is_read_once() -> None:
    # GRUB echoes to the screen and the serial port, and OVMF mirrors the screen to the port: the
    # two copies can share a console line, the second one torn by a wrap.
    line = 'CLUSTERCTL {"event": "error", "stage": "iso"}CLUSTERCTL {"event": "error", "st'
    assert parse_line(line) == {"event": "error", "stage": "iso"}
    assert parse_line('CLUSTERCTL {"event": "error", "st') is None
