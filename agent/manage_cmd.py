"""``clusterctl manage [HOST [COMMAND ...]]``: the live view, a one-off table or JSON, or one
action on a host (written to its ctl file; see agent/manage.py)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import sys
import termios
import threading
import tty
from pathlib import Path
from typing import Any

from agent.manage import View, act, live
from agent.mesh.members import RUN
from core import exitcodes


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("host", nargs="?", help="show only this host (its detail), or act on it")
    p.add_argument("command", nargs=argparse.REMAINDER,
                   help="an action for HOST's ctl file: reboot, poweroff, boot OS (the next boot only), "
                        "svc start|stop|restart|reload UNIT")
    p.add_argument("--once", action="store_true", help="print the view once and exit (no live screen)")
    p.add_argument("--json", action="store_true", help="print the view as JSON once and exit")
    p.add_argument("--viewer", action="store_true",
                   help="look, never act (a kiosk's screen: the keys that act are refused)")
    p.add_argument("--run-dir", default=str(RUN), metavar="DIR", help=argparse.SUPPRESS)


def _fail(message: str, code: int = exitcodes.FAILED) -> int:
    print(f"clusterctl manage: {message}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from agent.manage_view import detail, table

    try:
        view = View(Path(args.run_dir))
        snap = view.snapshot()
    except FileNotFoundError as e:
        return _fail(f"{e.filename} is missing: the agent has not run on this host (systemctl status "
                     "clusterctl-agent)")
    except (OSError, ValueError) as e:
        return _fail(str(e))
    names = [h["host"] for h in snap["hosts"]]
    if args.host and args.host not in names:
        return _fail(f"no host {args.host!r} in the cluster (hosts: {', '.join(names)})", exitcodes.USAGE)
    namespace = Path(view.members().get("namespace") or "/n")
    if args.command and args.viewer:
        return _fail("a viewer does not act", exitcodes.USAGE)
    if args.command:
        row = next(h for h in snap["hosts"] if h["host"] == args.host)
        if args.command[0] == "boot" and (len(args.command) != 2 or args.command[1] not in row["oses"]):
            return _fail(f"{args.host} boots {', '.join(row['oses']) or 'nothing of its own'}: "
                         f"use 'boot OS' with one of them", exitcodes.USAGE)
        problem = act(namespace, args.host, " ".join(args.command))
        if problem:
            return _fail(problem)
        print(f"{args.host}: {' '.join(args.command)} sent")
        return exitcodes.OK
    if args.json:
        if args.host:
            snap["hosts"] = [h for h in snap["hosts"] if h["host"] == args.host]
        print(json.dumps(snap, indent=1))
        return exitcodes.OK
    console = Console()
    if args.once or not sys.stdout.isatty():
        picked = next((h for h in snap["hosts"] if h["host"] == args.host), None)
        console.print(detail(picked) if picked is not None else table(snap))
        return exitcodes.OK
    return Screen(view, namespace, args.host or (names[0] if names else None), viewer=args.viewer).run()


def split_keys(chunk: str) -> list[str]:
    """Keys typed quickly arrive together: one string per key, arrow keys' escapes kept whole."""
    keys, i = [], 0
    while i < len(chunk):
        n = 3 if chunk.startswith("\x1b[", i) and i + 2 < len(chunk) else 1
        keys.append(chunk[i:i + n])
        i += n
    return keys


class Screen:
    """The live full-screen view with keys (a kiosk passes viewer=True: it may look, not act)."""

    def __init__(self, view: View, namespace: Path, selected: str | None, viewer: bool) -> None:
        self.view, self.namespace, self.selected, self.viewer = view, namespace, selected, viewer
        self.snap: dict[str, Any] = {"hosts": []}
        self.message = ""
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.confirm: str | None = None  # the action waiting for 'y'
        self.choosing: list[str] = []  # the OSes offered after 'b'
        self.live: Any = None

    def draw(self, snap: dict[str, Any] | None = None) -> None:
        from agent.manage_view import screen

        with self.lock:
            if snap is not None:
                self.snap = snap
            if self.live is not None:
                self.live.update(screen(self.snap, self.selected, self.message), refresh=True)

    def run(self) -> int:
        from rich.live import Live

        with Live(auto_refresh=False, screen=True, redirect_stdout=False) as self.live:
            keys = threading.Thread(target=self._keys, daemon=True)
            keys.start()
            with contextlib.suppress(KeyboardInterrupt):
                live(self.view, self.draw, self.done.is_set)
        return exitcodes.OK

    def _keys(self) -> None:
        fd = sys.stdin.fileno()
        try:
            old = termios.tcgetattr(fd)
        except termios.error:
            return  # not a terminal: the view only shows
        try:
            tty.setcbreak(fd)
            while not self.done.is_set():
                if not select.select([fd], [], [], 0.5)[0]:
                    continue
                for k in split_keys(os.read(fd, 64).decode("utf-8", "replace")):
                    self.key(k)
        finally:
            with contextlib.suppress(termios.error):
                termios.tcsetattr(fd, termios.TCSADRAIN, old)

    def key(self, k: str) -> None:
        names = [h["host"] for h in self.snap["hosts"]]
        if self.choosing:
            oses, self.choosing = self.choosing, []
            if k.isdigit() and 1 <= int(k) <= len(oses) and self.selected:
                self.confirm = f"boot {oses[int(k) - 1]}"
                self.message = f"{self.confirm} on {self.selected}'s next boot only? y/n"
            else:
                self.message = "cancelled"
        elif self.confirm is not None:
            action, self.confirm = self.confirm, None
            if k.lower() == "y" and self.selected:
                self.message = act(self.namespace, self.selected, action) or f"{self.selected}: {action} sent"
            else:
                self.message = "cancelled"
        elif k in ("q", "\x1b"):
            self.done.set()
        elif k in ("\x1b[A", "k", "\x1b[B", "j") and names:
            i = names.index(self.selected) if self.selected in names else 0
            self.selected = names[(i + (-1 if k in ("\x1b[A", "k") else 1)) % len(names)]
            self.message = ""
        elif k in ("r", "p", "b") and self.selected:
            oses = next((h.get("oses") or [] for h in self.snap["hosts"] if h["host"] == self.selected), [])
            if self.viewer:
                self.message = "this screen may look, not act"
            elif k == "b":
                self.choosing = oses
                self.message = "boot which OS next time only? " + "  ".join(
                    f"{i + 1}: {o}" for i, o in enumerate(oses)) + "  (any other key: cancel)"
            else:
                self.confirm = "reboot" if k == "r" else "poweroff"
                self.message = f"{self.confirm} {self.selected}? y/n"
        self.draw()
