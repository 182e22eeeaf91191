"""``python3 -m agent.firstboot install`` (``clusterctl-install``): run the installer by hand (or from a test).

    python3 -m agent.firstboot install --stick /dev/sdb --target /dev/nvme0n1 --host left \\
        --role desktop --oses stable,next,rescue [--allow-wipe] [--events /dev/ttyS0]

Emits ``installing`` {host, disk, step} as each step starts, then ``installed`` {host, disk,
seconds}, or ``error`` {stage, message} and exits 1.
``--kill-at STEP[+SECONDS]`` cuts the power for tests: the whole process group is killed
SECONDS after STEP starts (0: at once), as a power cut would stop the machine.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import TextIO

from agent.firstboot.installer import Request, StepHook, install
from core import exitcodes
from core.disk.tools import InstallError
from core.events import emit


def power_cut_hook(spec: str) -> StepHook:
    step, _, delay = spec.partition("+")
    seconds = float(delay or 0)

    def cut() -> None:
        os.killpg(os.getpgid(0), signal.SIGKILL)

    def on_step(name: str) -> None:
        if name == step:
            if seconds <= 0:
                cut()
            threading.Timer(seconds, cut).start()

    return on_step


def run_install(req: Request, events: TextIO, disk_name: str | None = None, kill_at: str | None = None,
                progress: StepHook | None = None) -> int:
    """Install; ``installing`` {host, disk, step} as each step starts, then ``installed`` or ``error``.
    ``progress(step)`` shows each step to the person (the consoles)."""
    cut = power_cut_hook(kill_at) if kill_at else None

    def on_step(step: str) -> None:
        emit("installing", stream=events, host=req.host, disk=disk_name or req.target, step=step)
        if progress is not None:
            progress(step)
        if cut is not None:
            cut(step)

    try:
        result = install(req, on_step=on_step, disk_name=disk_name)
    except InstallError as e:
        emit("error", stream=events, stage=e.stage, message=str(e), host=req.host, disk=disk_name or req.target)
        return exitcodes.FAILED
    except OSError as e:
        emit("error", stream=events, stage="install", message=str(e), host=req.host, disk=disk_name or req.target)
        return exitcodes.FAILED
    emit("installed", stream=events, **result)
    return exitcodes.OK


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stick", required=True, help="the stick (device or image file)")
    p.add_argument("--target", required=True, help="the disk to install onto (device or image file)")
    p.add_argument("--host", required=True)
    p.add_argument("--role", required=True)
    p.add_argument("--oses", required=True, help="the role's OSes, comma separated, default first")
    p.add_argument("--allow-wipe", action="store_true", help="the disk may hold data that is to be erased")
    p.add_argument("--events", help="append events to this file or device (default: stdout)")
    p.add_argument("--kill-at", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    oses = [o for o in args.oses.split(",") if o]
    if not oses:
        print("clusterctl-install: --oses names no OS", file=sys.stderr)
        return exitcodes.USAGE
    req = Request(args.stick, args.target, args.host, args.role, oses, allow_wipe=args.allow_wipe)
    try:
        events = open(args.events, "a", encoding="utf-8") if args.events else sys.stdout  # noqa: SIM115
    except OSError as e:
        print(f"clusterctl-install: cannot open {args.events}: {e}", file=sys.stderr)
        return exitcodes.USAGE
    return run_install(req, events, kill_at=args.kill_at)

