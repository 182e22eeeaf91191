"""A tiny QMP client: QEMU's JSON machine protocol over a unix socket.

One JSON object per line each way. After the greeting the client must send
``qmp_capabilities``; then each command gets exactly one ``return`` or ``error``
reply, possibly after asynchronous ``event`` messages, which are kept in order.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any


class QMPError(RuntimeError):
    """QEMU refused a command, or the connection broke."""


class QMP:
    def __init__(self, path: str | Path, timeout: float = 10.0) -> None:
        self.path = str(path)
        self.events: list[dict[str, Any]] = []
        self._sock = self._connect(timeout)
        self._file = self._sock.makefile("rb")
        greeting = self._read()
        if "QMP" not in greeting:
            raise QMPError(f"not a QMP greeting: {greeting}")
        self.execute("qmp_capabilities")

    def _connect(self, timeout: float) -> socket.socket:
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.path)
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if time.monotonic() > deadline:
                    raise QMPError(f"no QMP socket at {self.path} after {timeout:.0f} s") from None
                time.sleep(0.05)
                continue
            sock.settimeout(timeout)
            return sock

    def _read(self) -> dict[str, Any]:
        try:
            line = self._file.readline()
        except OSError as e:
            raise QMPError(f"QMP connection failed: {e}") from None
        if not line:
            raise QMPError("QEMU closed the QMP connection")
        value = json.loads(line)
        if not isinstance(value, dict):
            raise QMPError(f"unexpected QMP message: {value!r}")
        return value

    def execute(self, command: str, **arguments: Any) -> Any:
        """Run one command; its ``return`` value, or :class:`QMPError` with QEMU's reason."""
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        try:
            self._sock.sendall(json.dumps(message).encode() + b"\n")
        except OSError as e:
            raise QMPError(f"QMP send failed: {e}") from None
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
            elif "return" in reply:
                return reply["return"]
            elif "error" in reply:
                err = reply["error"]
                raise QMPError(f"{command}: {err.get('class')}: {err.get('desc')}")

    def close(self) -> None:
        try:
            self._file.close()
        finally:
            self._sock.close()

    def __enter__(self) -> QMP:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
