"""In-process change stream behind the 9P ``events`` file.

The agent publishes one event per change (a client connected, a file was created through an
export, a service changed state, a ctl command ran). Each reader of ``events`` starts at the
moment it opened the file and each read returns the next event line(s), waiting when there
are none. Lines use the project's event-stream format (``CLUSTERCTL {json}``, see
core/events.py) so one parser reads the console and the 9P stream alike. The last
``keep`` events are kept; a reader that falls further behind skips to the oldest kept.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from core.events import format_event


class EventBus:
    def __init__(self, keep: int = 1024) -> None:
        self.seq = 0
        self.ring: deque[tuple[int, bytes]] = deque(maxlen=keep)
        self._wake: asyncio.Future[None] | None = None

    def publish(self, event: str, **fields: Any) -> dict[str, Any]:
        self.seq += 1
        record = {"seq": self.seq, "time": round(time.time(), 3), **fields}
        self.ring.append((self.seq, (format_event(event, **record) + "\n").encode()))
        wake, self._wake = self._wake, None
        if wake is not None and not wake.done():
            wake.set_result(None)
        return {"event": event, **record}

    def since(self, cursor: int) -> list[tuple[int, bytes]]:
        if not self.ring or self.ring[-1][0] <= cursor:
            return []
        return [item for item in self.ring if item[0] > cursor]

    async def wait_after(self, cursor: int) -> list[tuple[int, bytes]]:
        while True:
            items = self.since(cursor)
            if items:
                return items
            if self._wake is None or self._wake.done():
                self._wake = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._wake)


class EventReader:
    """One open ``events`` file: a cursor plus any part of a line a short read left over."""

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self.cursor = bus.seq
        self.left = b""

    async def next_chunk(self, count: int) -> bytes:
        if not self.left:
            items = await self.bus.wait_after(self.cursor)
            self.cursor = items[-1][0]
            self.left = b"".join(line for _seq, line in items)
        # Whole lines when they fit; a line longer than the read is split across reads.
        out = self.left[:count]
        if len(self.left) > count:
            cut = out.rfind(b"\n") + 1
            if cut:
                out = out[:cut]
        self.left = self.left[len(out):]
        return out
