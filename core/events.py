"""The event stream: one JSON object per line, prefixed ``CLUSTERCTL ``.

Written by first boot, the installer and the agent (on the serial console and in
the journal); read by tests and people. A serial console may put escape
sequences before the prefix, so readers look for ``CLUSTERCTL {`` anywhere.
This module must run under Debian's python3 inside images: standard library only.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any, TextIO

PREFIX = "CLUSTERCTL "
_MARK = PREFIX + "{"


def format_event(event: str, **fields: Any) -> str:
    """One event as its console line (without the newline)."""
    return PREFIX + json.dumps({"event": event, **fields}, sort_keys=False, separators=(", ", ": "))


def emit(event: str, stream: TextIO | None = None, **fields: Any) -> dict[str, Any]:
    """Write one event line and flush, so a console reader sees it at once."""
    line = format_event(event, **fields)
    out = stream if stream is not None else sys.stdout
    out.write(line + "\n")
    out.flush()
    return {"event": event, **fields}


_DECODER = json.JSONDecoder()


def parse_line(line: str) -> dict[str, Any] | None:
    """The event on a console line, or None when the line carries none (or a torn one)."""
    start = line.find(_MARK)
    if start < 0:
        return None
    text = line[start + len(PREFIX):].strip()
    # A bootloader or getty may append escape sequences, or a second copy of the line (GRUB on
    # the screen and the serial port, both mirrored to the port), after the object: decode the
    # first object and ignore what follows.
    try:
        value, _ = _DECODER.raw_decode(text)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("event"), str):
        return None
    return value


# A kernel message printed in the middle of an event line: its timestamp up to the line's end.
_KERNEL_MESSAGE = re.compile(r"\[\s*\d+\.\d+\] [^\n]*$")


def mend_torn(torn: str, following: str) -> dict[str, Any] | None:
    """An event line the kernel cut in two (a printk to the same console, ending the line with
    its own message) put back together: ``torn`` without the kernel's message, then the line
    that follows. None when that does not make an event."""
    start = torn.find(_MARK)
    if start < 0:
        return None
    cut = None
    for m in _KERNEL_MESSAGE.finditer(torn, start):
        cut = m.start()
    if cut is None:
        return None
    return parse_line(torn[:cut] + following)
