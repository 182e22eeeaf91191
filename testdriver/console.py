"""A guest's serial console, read live: raw bytes to a log file, lines kept, events parsed.

A reader thread owns the socket's receiving side; tests wait on a condition until an
event they expect arrives, the console closes (QEMU exited), or a deadline passes.
"""

from __future__ import annotations

import collections
import contextlib
import re
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.events import PREFIX, mend_torn, parse_line

Event = dict[str, Any]

# The kernel's own boot, from its banner to starting init (or the first event): where an
# emulator hang shows as silence (see Machine's stall_reset_after). Under UEFI the EFI stub's
# own lines come first, and at loglevel 4 (the test kit's) they are all the kernel prints: the
# banner is a notice.
KERNEL_START = re.compile(r"Linux version \d|EFI stub: ")
KERNEL_DONE = re.compile(r"Run /\S+ as init process|Freeing unused kernel|systemd\[1\]|Welcome to ")
# A line without its newline is looked at for those marks too (a guest stopped or hung in the
# middle of its banner line is still in the kernel), up to the longest line a kernel prints.
PARTIAL_SCAN_MAX = 4096


class Console:
    def __init__(self, sock: socket.socket, log_path: Path, started: float, keep_lines: int = 400) -> None:
        self._sock = sock
        self.log_path = log_path
        self.started = started
        self.lines: collections.deque[str] = collections.deque(maxlen=keep_lines)
        self.line_count = 0  # lines ever received; self.lines holds the last of them
        self.events: list[Event] = []
        self.times: list[float] = []  # seconds since start, one per event
        self.closed = False
        self._partial = b""
        self._partial_marked = False  # the partial line's kernel mark was already taken into in_kernel
        self._torn: str | None = None  # an event line a kernel message cut short
        self.last_output = time.monotonic()
        self.in_kernel = False  # between KERNEL_START and KERNEL_DONE
        self.watchdog: Callable[[], None] | None = None  # called while someone waits
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"console:{log_path.parent.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with self.log_path.open("ab") as log:
            while True:
                try:
                    chunk = self._sock.recv(65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    break
                log.write(chunk)
                log.flush()
                self._feed(chunk)
        with self._cond:
            if self._partial:
                self._line(self._partial, marked=self._partial_marked)
                self._partial = b""
            self.closed = True
            self._cond.notify_all()

    def _feed(self, chunk: bytes) -> None:
        with self._cond:  # an RLock: wait()'s checks may call tail() while holding it
            self.last_output = time.monotonic()
            *complete, self._partial = (self._partial + chunk).split(b"\n")
            for raw in complete:
                self._line(raw, marked=self._partial_marked)
                self._partial_marked = False
            self._mark_partial()
            self._cond.notify_all()  # a prompt without a newline may be what someone waits for

    def _mark_partial(self) -> None:
        """The kernel marks of the line still being written. The serial port brings a line a few
        bytes at a time, and a guest may stop (hang, or be stopped) before its newline: the
        banner arms the stall watchdog as soon as its bytes are here, not at the end of its line."""
        if self._partial_marked or not self._partial or len(self._partial) > PARTIAL_SCAN_MAX:
            return
        text = self._partial.decode("utf-8", "replace").replace("\r", "")
        self._partial_marked = self._kernel_mark(text)

    def _kernel_mark(self, text: str) -> bool:
        """Moves in_kernel on the kernel's banner or its end; True if ``text`` carried either."""
        if KERNEL_START.search(text):
            self.in_kernel = True
            return True
        if self.in_kernel and KERNEL_DONE.search(text):
            self.in_kernel = False
            return True
        return False

    def _line(self, raw: bytes, marked: bool = False) -> None:
        """One complete line; ``marked``: its kernel mark was taken while it was partial (once
        is enough: after a watchdog reset the rest of that line must not arm it again)."""
        text = raw.decode("utf-8", "replace").replace("\r", "")
        self.lines.append(text)
        self.line_count += 1
        if not marked:
            self._kernel_mark(text)
        event = parse_line(text)
        if event is None and self._torn is not None:
            event = mend_torn(self._torn, text)
        self._torn = text if event is None and PREFIX + "{" in text else None  # mended with the next line
        if event is not None:
            self.in_kernel = False
            self.events.append(event)
            self.times.append(time.monotonic() - self.started)

    def wait(self, check: Callable[[], Any], timeout: float) -> Any:
        """Block until ``check()`` is truthy (returned), the console closes, or the timeout passes (None)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                result = check()
                if result or self.closed:
                    return result
                if self.watchdog is not None:
                    self.watchdog()
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(min(left, 0.5))

    def lines_since(self, count: int) -> list[str]:
        """Complete lines received after the first ``count`` (as many as are still kept)."""
        new = self.line_count - count
        return list(self.lines)[-new:] if new > 0 else []

    def note(self, text: str) -> None:
        """A line of the driver's own in the log and the tail (not from the guest)."""
        with self._cond:
            line = f"[clusterctl driver] {text}"
            self.lines.append(line)
            with self.log_path.open("a") as log:
                log.write(f"\n{line}\n")

    def send(self, text: str | bytes) -> None:
        data = text.encode() if isinstance(text, str) else text
        self._sock.sendall(data)

    def tail(self, n: int = 40) -> list[str]:
        with self._cond:
            lines = list(self.lines)
            if self._partial:  # a prompt or a line still being written
                lines.append(self._partial.decode("utf-8", "replace").replace("\r", ""))
            return lines[-n:]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(timeout=5)
