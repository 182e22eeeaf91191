"""Commands run on a guest's serial console, their results read back as events.

Both halves of one small protocol live here:

- the guest's: :data:`GUEST_FILES`, files an overlay puts on an image (a lab's, see
  testdriver/meshlab.py): ``/usr/local/bin/t TAG CMD [LIMIT]`` runs ``sh -c CMD`` (killed after
  LIMIT seconds) and prints its status, output and duration as one ``CLUSTERCTL {"event": "t",
  "id": TAG, "rc": ..., "out": ..., "err": ..., "seconds": ...}`` line; root is logged in on
  the serial console (getty's autologin); kernel messages stay off the console (they would
  cut those lines);
- the driver's: :class:`SerialShell`, which types ``t`` lines on a :class:`~testdriver.qemu.Machine`'s
  console and waits for the event with its own id. ``Machine.execute``, ``succeed``, ``fail``
  and ``wait_until_succeeds`` (named as in the NixOS test driver) go through it.

Waiting for a result does not move the machine's event cursor: ``wait_for`` after a command
still sees the events that came before the command's.
"""

from __future__ import annotations

import itertools
import shlex
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from testdriver.errors import MachineError, MachineExited, MachineTimeout

if TYPE_CHECKING:
    from testdriver.qemu import Machine

__all__ = ["GUEST_FILES", "GUEST_MODES", "CommandFailed", "CommandResult", "SerialShell"]

# Runs a shell command; prints its status, output (bounded) and duration as one event line.
T_SCRIPT = r'''#!/usr/bin/python3
import json, subprocess, sys, time
tag, cmd = sys.argv[1], sys.argv[2]
t0 = time.monotonic()
try:
    p = subprocess.run(["sh", "-c", cmd], capture_output=True, timeout=float(sys.argv[3]) if len(sys.argv) > 3 else 120)
    rc, out, err = p.returncode, p.stdout, p.stderr
except subprocess.TimeoutExpired as e:
    rc, out, err = -1, e.stdout or b"", (e.stderr or b"") + b"timeout"
ev = {"event": "t", "id": tag, "rc": rc, "seconds": round(time.monotonic() - t0, 3),
      "out": out.decode("utf-8", "replace")[-6000:], "err": err.decode("utf-8", "replace")[-2000:]}
sys.stdout.write("\nCLUSTERCTL " + json.dumps(ev) + "\n")
sys.stdout.flush()
'''

AUTOLOGIN = """[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --noclear --keep-baud 115200,57600,38400,9600 %I $TERM
"""

QUIET = "kernel.printk = 1 4 1 7\n"

# What a guest needs for SerialShell, as overlay files (path in the root -> text) and modes.
GUEST_FILES = {
    "usr/local/bin/t": T_SCRIPT,
    "etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf": AUTOLOGIN,
    "etc/sysctl.d/90-lab-quiet.conf": QUIET,
}
GUEST_MODES = {"usr/local/bin/t": "0755"}

CONNECT_TIMEOUT = 120.0  # from a boot until the autologin shell answers
RETRY_EVERY = 1.0  # seconds between tries of wait_until_succeeds


@dataclass(frozen=True)
class CommandResult:
    """One command's end, as the guest's ``t`` reported it (status -1: killed at its limit)."""

    command: str
    status: int
    out: str
    err: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.status == 0


class CommandFailed(AssertionError):
    """A command's status was not what the test expected; the text has the command, its status
    and its output (stdout and stderr). An AssertionError: a test's expectation failed, not the
    machine."""

    def __init__(self, machine: str, result: CommandResult, expected: str) -> None:
        self.result = result
        super().__init__(f"{machine}: `{result.command}` {expected} (status {result.status}, "
                         f"{result.seconds:.1f} s)\nstdout: {result.out}\nstderr: {result.err}")


def _commands_only(cmds: tuple[str, ...]) -> None:
    # succeed("cmd", 60) would run "60": the timeout goes by name.
    if not cmds or not all(isinstance(c, str) for c in cmds):
        raise TypeError(f"commands are strings, at least one; give the timeout by name (timeout=...): {cmds!r}")


class SerialShell:
    """The shell on one machine's serial console. The machine's life cycle tells it when a new
    boot begins (:meth:`reboot`): the first command after it waits for the shell to answer."""

    _ids = itertools.count(1)  # one sequence for every machine: ids never repeat in a process

    def __init__(self, machine: Machine) -> None:
        self.m = machine
        self.connected = False

    def reboot(self) -> None:
        self.connected = False

    def _send(self, cmd: str, limit: float) -> str:
        tag = f"{self.m.name}-{next(self._ids)}"
        self.m.send_serial(f"t {tag} {shlex.quote(cmd)} {limit:g}\n")
        return tag

    def _result(self, tag: str, cmd: str, since: int, timeout: float) -> CommandResult:
        console = self.m.console
        if console is None:
            raise MachineError(f"machine {self.m.name} was never started")

        def find() -> dict[str, Any] | None:
            for e in console.events[since:]:
                if e.get("event") == "t" and e.get("id") == tag:
                    return e
            return None

        found = console.wait(find, timeout)
        if found:
            return CommandResult(cmd, int(found["rc"]), str(found.get("out", "")), str(found.get("err", "")),
                                 float(found.get("seconds", 0.0)))
        raise self.m.no_answer(f"no result of `{cmd}` (t id {tag})", timeout)

    def run(self, cmd: str, timeout: float = 60.0, limit: float | None = None,
            connect_timeout: float = CONNECT_TIMEOUT) -> CommandResult:
        """Runs ``cmd`` with ``sh -c`` as root; waits ``timeout`` seconds for its result. The guest
        kills it after ``limit`` seconds (default: 5 s before the timeout), so a hung command comes
        back as status -1 rather than as a timeout here. The first command of a boot first waits
        up to ``connect_timeout`` for the shell (:meth:`connect`)."""
        if not self.connected:
            self.connect(connect_timeout)
        return self._run(cmd, timeout, limit)

    def _run(self, cmd: str, timeout: float, limit: float | None) -> CommandResult:
        console = self.m.console
        since = len(console.events) if console is not None else 0
        tag = self._send(cmd, limit if limit is not None else max(timeout - 5, 5))
        return self._result(tag, cmd, since, timeout)

    def connect(self, timeout: float = CONNECT_TIMEOUT) -> None:
        """Pokes the autologin shell until a command answers (typing before it is up is lost or
        queued; either way only the answer with its own id counts)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._run("true", timeout=min(10.0, max(deadline - time.monotonic(), 1.0)), limit=5)
                self.connected = True
                return
            except MachineExited:
                raise
            except MachineTimeout:
                if time.monotonic() > deadline:
                    raise

    def execute(self, cmd: str, timeout: float = 60.0, limit: float | None = None) -> tuple[int, str]:
        r = self.run(cmd, timeout, limit)
        return r.status, r.out

    def succeed(self, *cmds: str, timeout: float = 60.0) -> str:
        _commands_only(cmds)
        out = ""
        for cmd in cmds:
            r = self.run(cmd, timeout)
            if r.status != 0:
                raise CommandFailed(self.m.name, r, "failed")
            out += r.out
        return out

    def fail(self, *cmds: str, timeout: float = 60.0) -> str:
        _commands_only(cmds)
        out = ""
        for cmd in cmds:
            r = self.run(cmd, timeout)
            if r.status == 0:
                raise CommandFailed(self.m.name, r, "succeeded, but was expected to fail")
            out += r.out
        return out

    def wait_until_succeeds(self, cmd: str, timeout: float = 900.0, every: float = RETRY_EVERY) -> str:
        """Runs ``cmd`` again (``every`` seconds after a failure) until its status is 0; its output.
        A try that gets no answer counts as a failed one; the machine's end does not wait."""
        deadline = time.monotonic() + timeout
        last: CommandResult | None = None
        tries = 0
        while True:
            left = deadline - time.monotonic()
            tries += 1
            try:
                last = self.run(cmd, timeout=max(left, 1.0), connect_timeout=max(left, 1.0))
                if last.status == 0:
                    return last.out
            except MachineExited:
                raise
            except MachineTimeout:
                pass
            if deadline - time.monotonic() <= every:
                if last is None:
                    raise self.m.no_answer(f"`{cmd}` never answered ({tries} tries)", timeout)
                raise MachineTimeout(self.m.explain(
                    f"`{cmd}` did not succeed within {timeout:.0f} s ({tries} tries); the last: status "
                    f"{last.status}\nstdout: {last.out}\nstderr: {last.err}"))
            time.sleep(every)
