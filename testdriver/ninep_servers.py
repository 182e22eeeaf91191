"""Servers for tests and the bench: ours in a background thread, diod as a subprocess.

Both give an address on 127.0.0.1 and the attach name of their export, so one client test
suite can run unchanged against either.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from agent.eventbus import EventBus
from agent.namespace import AgentNamespace
from agent.ninep.localfs import Export
from agent.ninep.server import Server

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    """Run one coroutine to completion on a fresh loop, with a deadline."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


@dataclass
class Running:
    kind: str  # "ours" or "diod"
    address: str
    aname: str  # attach name of the first export
    root: str  # its directory on disk
    extra: dict[str, Any] = field(default_factory=dict)


class OurServer:
    """AgentNamespace + Server on 127.0.0.1:0 in a thread with its own event loop."""

    def __init__(self, exports: Iterable[Export], ctl_allow: Iterable[str] = (), max_msize: int = 1 << 20) -> None:
        self.exports = list(exports)
        self.ctl_allow = list(ctl_allow)
        self.max_msize = max_msize
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.address = ""
        self.bus = EventBus()
        self.server: Server | None = None
        self.namespace: AgentNamespace | None = None
        self.listener: asyncio.base_events.Server | None = None
        self.thread = threading.Thread(target=self._main, name="9p-server", daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            self.namespace = AgentNamespace(self.exports, self.bus, self.ctl_allow,
                                            connections=lambda: len(self.server.connections) if self.server else 0)
            self.server = Server(self.namespace, max_msize=self.max_msize, on_event=self.bus.publish)
            listener = await self.server.listen("127.0.0.1:0")
            self.listener = listener
            port = listener.sockets[0].getsockname()[1]
            self.address = f"127.0.0.1:{port}"
            self.ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    def start(self) -> OurServer:
        self.thread.start()
        if not self.ready.wait(10):
            raise RuntimeError("9P server did not start")
        return self

    def call(self, fn: Any, *args: Any) -> Any:
        """Run fn(*args) on the server's loop (publishing events from a test)."""
        done = threading.Event()
        box: list[Any] = []

        def go() -> None:
            box.append(fn(*args))
            done.set()

        self.loop.call_soon_threadsafe(go)
        done.wait(5)
        return box[0] if box else None

    def stop(self) -> None:
        async def shutdown() -> None:
            if self.listener is not None:
                self.listener.close()
            if self.server is not None:
                for conn in list(self.server.connections):
                    if conn.transport is not None:
                        conn.transport.abort()
            await asyncio.sleep(0.01)  # let the aborted transports close their sockets

        if self.thread.is_alive():
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(5)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def diod_path() -> str | None:
    return shutil.which("diod") or (os.path.exists("/usr/sbin/diod") and "/usr/sbin/diod") or None


@contextlib.contextmanager
def diod_server(export: str, pids: list[int] | None = None) -> Iterator[str]:
    """Debian's diod on loopback, no auth, serving ``export``; yields its address (and
    appends its process id to ``pids``, for the bench's CPU accounting)."""
    exe = diod_path()
    if exe is None:
        raise FileNotFoundError("diod is not installed (apt-get install diod)")
    port = free_port()
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen([exe, "-f", "-n", "-l", f"127.0.0.1:{port}", "-e", export, "-L", "stderr"],
                            stdout=subprocess.DEVNULL, stderr=log)
    if pids is not None:
        pids.append(proc.pid)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"diod did not start: {log.read().decode(errors='replace')}") from None
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
