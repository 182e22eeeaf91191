"""The wizard on two consoles at once (a screen and a serial line), each a real pseudo-terminal."""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.firstboot.consoles import Consoles, console_devices
from builder.profile import load_profile
from core.events import parse_line

ROOT = Path(__file__).resolve().parents[1]


class Pty:
    """A pseudo-terminal: the console's device (``path``) and the person's end (``master``)."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.path = os.ttyname(self.slave)
        self.seen = b""

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def read_until(self, needle: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while needle.encode() not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{needle!r} never shown; shown: {self.seen.decode(errors='replace')!r}")
            if select.select([self.master], [], [], left)[0]:
                self.seen += os.read(self.master, 65536)
        return self.seen.decode(errors="replace")

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


@pytest.fixture
def two() -> tuple[Pty, Pty]:
    screen, serial = Pty(), Pty()
    yield screen, serial
    screen.close()
    serial.close()


def test_the_first_answer_wins_and_the_other_console_is_told(two: tuple[Pty, Pty]) -> None:
    screen, serial = two
    consoles = Consoles([("screen", screen.path), ("serial", serial.path)])
    answers: list[str] = []
    t = threading.Thread(target=lambda: answers.append(consoles.input("Install? ")))
    t.start()
    screen.read_until("Install? ")
    serial.read_until("Install? ")
    serial.type("no")  # typed, not yet Enter: not an answer
    time.sleep(0.3)
    screen.type("y\r")  # a keyboard's Enter
    t.join(10)
    assert answers == ["y"]
    assert consoles.source.name == "screen"
    assert "(answered on the screen: y)" in serial.read_until("answered on the screen")
    consoles.print("[bold]both[/bold]")
    assert "both" in screen.read_until("both") and "both" in serial.read_until("both")
    consoles.close()


def test_a_console_that_hangs_up_leaves_the_other(two: tuple[Pty, Pty]) -> None:
    screen, serial = two
    consoles = Consoles([("screen", screen.path), ("serial", serial.path)])
    answers: list[str] = []
    t = threading.Thread(target=lambda: answers.append(consoles.input("Pick: ")))
    t.start()
    serial.read_until("Pick: ")
    os.close(serial.master)  # the serial line goes away
    serial.master = -1
    time.sleep(0.3)
    screen.type("2\n")
    t.join(10)
    assert answers == ["2"]
    consoles.close()


def test_consoles_of_the_kernel(tmp_path: Path) -> None:
    active = tmp_path / "active"
    active.write_text("ttyS0 tty0\n")
    assert console_devices(str(active)) == [("screen", "/dev/tty1"), ("serial", "/dev/ttyS0")]
    active.write_text("ttyS0\n")
    assert console_devices(str(active)) == [("serial", "/dev/ttyS0")]
    assert console_devices(str(tmp_path / "none")) == [("console", "/dev/console")]
    with pytest.raises(OSError, match="no console"):
        Consoles([("screen", str(tmp_path / "no-such-tty"))])


def test_first_boot_asks_on_both_and_takes_the_screens_answer(two: tuple[Pty, Pty], tmp_path: Path) -> None:
    """An interactive profile (dual-nano-itx as written): the wizard asks on the screen and the
    serial line; the person at the screen says yes; events stay on standard output."""
    screen, serial = two
    profile = tmp_path / "profile.json"
    profile.write_text(load_profile(ROOT / "profiles" / "dual-nano-itx.yaml").model.dumps())
    (tmp_path / "cmdline").write_text("console=tty0 console=ttyS0 clusterctl.after=none\n")
    (tmp_path / "host.json").write_text(json.dumps({"host": None, "candidates": ["left", "right"]}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.firstboot", "run", "--cmdline", str(tmp_path / "cmdline"),
         "--profile", str(profile), "--facts", str(tmp_path / "host.json"),
         "--inventory", str(ROOT / "tests/fixtures/inventory/nano-itx-desktop.json"), "--work", str(tmp_path / "run"),
         "--dry-run", "--console", f"screen={screen.path}", "--console", f"serial={serial.path}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        shown = screen.read_until("[y] install, [o] another host")
        assert "This is left" in shown and "Install to:" in shown and "nvme0n1" in shown
        assert "This is left" in serial.read_until("[y] install, [o] another host")
        assert "CLUSTERCTL" not in shown  # events are not the person's screen
        assert shown.startswith("\x1b[H\x1b[2J")  # a clean screen, not below the kernel's messages
        assert ") - now" in shown and "—" not in shown  # the console font has no em dash
        assert ") — now" in serial.seen.decode()  # the serial terminal shows it as it is
        screen.type("y\r")
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    events = [e for e in map(parse_line, out.splitlines()) if e]
    assert [e["event"] for e in events] == ["inventory", "asking", "matched", "claim"]
    assert events[2]["host"] == "left" and events[2]["chosen_by"] == "person"
    assert events[3]["recorded"] is False  # the inventory's /dev/sda is not this machine's stick
    assert "(answered on the screen: y)" in serial.read_until("answered on the screen")
    decision = json.loads((tmp_path / "run" / "decision.json").read_text())
    assert decision["host"] == "left"
