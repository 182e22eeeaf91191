"""How a build shows itself: rich progress for people, JSON lines for machines, or quiet."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Protocol

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn


class Reporter(Protocol):
    def start(self, name: str, reason: str) -> None: ...
    def line(self, name: str, text: str) -> None: ...
    def done(self, name: str, seconds: float, reused: bool, reason: str, key: str) -> None: ...
    def failed(self, name: str, message: str, log: str | None) -> None: ...
    def note(self, text: str) -> None: ...
    def close(self) -> None: ...


class RichReporter:
    """A line per stage with a spinner, the tool's latest output line beside it."""

    def __init__(self, explain: bool) -> None:
        self.console = Console(stderr=True)
        self.explain = explain
        self.progress = Progress(SpinnerColumn(), TextColumn("[bold]{task.fields[stage]}"),
                                 TextColumn("{task.fields[detail]}", style="dim"), TimeElapsedColumn(),
                                 console=self.console, transient=True)
        self.tasks: dict[str, TaskID] = {}
        self.progress.start()

    def start(self, name: str, reason: str) -> None:
        if self.explain:
            self.progress.console.print(f"[yellow]build[/] {name}: {reason}")
        self.tasks[name] = self.progress.add_task("", total=None, stage=name, detail=reason)

    def line(self, name: str, text: str) -> None:
        task = self.tasks.get(name)
        if task is not None and text.strip():
            self.progress.update(task, detail=text.strip()[:100])

    def done(self, name: str, seconds: float, reused: bool, reason: str, key: str) -> None:
        task = self.tasks.pop(name, None)
        if task is not None:
            self.progress.remove_task(task)
        if reused:
            msg = f"[green]✓[/] {name} [dim]reused {key[:12]}[/]"
            if self.explain:
                msg += f" [dim]({reason})[/]"
        else:
            msg = f"[green]✓[/] {name} [dim]built {key[:12]} in {seconds:.1f} s[/]"
        self.progress.console.print(msg)

    def failed(self, name: str, message: str, log: str | None) -> None:
        task = self.tasks.pop(name, None)
        if task is not None:
            self.progress.remove_task(task)
        self.progress.console.print(f"[red]✗ stage {name} failed[/]: {message}")
        if log:
            self.progress.console.print(f"  log: {log}")

    def note(self, text: str) -> None:
        self.progress.console.print(text)

    def close(self) -> None:
        self.progress.stop()


class QuietReporter:
    """Only failures (on stderr)."""

    def start(self, name: str, reason: str) -> None: ...
    def line(self, name: str, text: str) -> None: ...
    def done(self, name: str, seconds: float, reused: bool, reason: str, key: str) -> None: ...

    def failed(self, name: str, message: str, log: str | None) -> None:
        print(f"clusterctl: stage {name} failed: {message}" + (f"\n  log: {log}" if log else ""), file=sys.stderr)

    def note(self, text: str) -> None: ...
    def close(self) -> None: ...


class JsonReporter:
    """One JSON object per line on stdout: stage start/done/failed, with reasons and keys."""

    def _emit(self, **fields: Any) -> None:
        print(json.dumps({"time": round(time.time(), 3), **fields}), flush=True)

    def start(self, name: str, reason: str) -> None:
        self._emit(event="stage", stage=name, state="start", reason=reason)

    def line(self, name: str, text: str) -> None: ...

    def done(self, name: str, seconds: float, reused: bool, reason: str, key: str) -> None:
        self._emit(event="stage", stage=name, state="reused" if reused else "built", seconds=round(seconds, 3),
                   reason=reason, key=key)

    def failed(self, name: str, message: str, log: str | None) -> None:
        self._emit(event="stage", stage=name, state="failed", message=message, log=log)

    def note(self, text: str) -> None:
        self._emit(event="note", text=text)

    def close(self) -> None: ...
