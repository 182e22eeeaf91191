"""``clusterctl boot`` (one image on one board, console on this terminal) and ``clusterctl test``."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from core import exitcodes
from testdriver.board import Board, BoardError, load_board
from testdriver.lan import LanError
from testdriver.qemu_cmd import MachineConfig, MachinePaths, MachineSetupError, build_command, prepare_files
from testdriver.screen import ScreenError, keys_for
from testdriver.testrun import HostResult, HostRun, plan_runs, run_all


def checked_board(name: str) -> Board:
    """A board through the profile's validated loader (located errors), as the driver's type."""
    return load_board(name)


def _usage_error(message: str) -> int:
    print(f"clusterctl: {message}", file=sys.stderr)
    return exitcodes.USAGE


def cmd_boot(args: argparse.Namespace) -> int:
    from builder.profile import ProfileInvalid

    image = Path(args.image)
    if not image.is_file():
        return _usage_error(f"no image at {image}")
    try:
        board = checked_board(args.board)
    except ProfileInvalid as err:
        for d in err.diagnostics:
            print(d, file=sys.stderr)
        return exitcodes.USAGE
    except BoardError as err:
        return _usage_error(str(err))
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix=f"clusterctl-boot-{board.name}-"))
    cfg = MachineConfig(board=board, boot_image=image, as_usb=not args.internal, interactive=True)
    paths = MachinePaths(workdir, workdir)
    try:
        prepare_files(cfg, paths)
        argv = build_command(cfg, paths)
    except MachineSetupError as err:
        return _usage_error(str(err))
    err = Console(stderr=True)
    medium = "internal disk" if args.internal else "USB stick"
    err.print(f"[bold]{image}[/] as {medium} on [bold]{board.name}[/] ({board.firmware}); "
              f"work dir {workdir}. Quit with [bold]Ctrl-A X[/].")  # fmt: skip
    if args.verbose:
        err.print(shlex.join(argv), markup=False, highlight=False)
    try:
        code = subprocess.call(argv)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return code


def _events_cell(result: HostResult) -> str:
    return " → ".join(f"{name} {seconds:.0f}s" for name, seconds in result.reached) or "—"


def cmd_test(args: argparse.Namespace) -> int:
    from builder.commands.profile_cmds import build_folders, load_or_report
    from builder.profile import ProfileInvalid

    loaded = load_or_report(args.profile, guarded=build_folders(args))
    if isinstance(loaded, int):
        return loaded
    model = loaded.model
    hosts = args.host or None
    unknown = sorted(set(hosts or []) - set(model.hosts))
    if unknown:
        return _usage_error(f"no host {', '.join(unknown)} in {args.profile} (hosts: {', '.join(model.hosts)})")
    images_dir = Path(args.images) if args.images else Path("images") / loaded.name
    answers: dict[str, str] = {}
    for spec in args.answer:
        who, sep, keys = spec.partition("=")
        if not sep or not who or not keys:
            return _usage_error(f"--answer {spec!r}: expected BOARD_OR_HOST=KEYS, e.g. left=y\\n")
        if who not in model.hosts and who not in {h.board for h in model.hosts.values()}:
            return _usage_error(f"--answer {spec!r}: {who} is neither a host nor a board of {args.profile}")
        try:
            answers[who] = keys.encode("latin-1", "backslashreplace").decode("unicode_escape")
            for char in answers[who]:
                keys_for(char)
        except (UnicodeDecodeError, ScreenError) as err:
            return _usage_error(f"--answer {spec!r}: {err}")
    passphrase = None
    if model.cluster.stick_secrets == "passphrase" and any(
            img.installer and (not hosts or set(img.hosts) & set(hosts)) for img in model.images.values()):
        from builder.passphrase import PassphraseError, stick_passphrase

        try:
            passphrase = stick_passphrase(args.stick_passphrase_file, confirm=False)
        except PassphraseError as err:
            return _usage_error(str(err))
        if passphrase is None:
            return _usage_error(f"{args.profile}: the stick's host keys are sealed (cluster.stick_secrets: "
                                "passphrase) and first boot asks for the passphrase: give --stick-passphrase-file "
                                "FILE or $CLUSTERCTL_STICK_PASSPHRASE, or run on a terminal to be asked")
        try:
            for char in passphrase:
                keys_for(char)
        except ScreenError as err:
            return _usage_error(f"the stick passphrase cannot be typed on the emulated keyboard: {err}")
    try:
        runs = plan_runs(model, images_dir, checked_board, hosts, answers, passphrase)
    except (ProfileInvalid, BoardError) as err:
        return _usage_error(str(err))
    if not runs:
        return _usage_error(f"{args.profile} has no image to test" + (f" for {', '.join(hosts)}" if hosts else ""))
    out = Console()
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix=f"clusterctl-test-{loaded.name}-"))

    def progress(run: HostRun, event: str, seconds: float) -> None:
        out.print(f"  {run.host}: {event} after {seconds:.1f} s")

    for run in runs:
        out.print(f"[bold]{run.host}[/]: {run.image} ({run.image_type}) on {run.board.name} ({run.board.firmware}), "
                  f"expecting {', '.join(run.expect)}")  # fmt: skip
    try:
        results = run_all(runs, workdir, args.timeout, args.keep, progress)
    except (MachineSetupError, LanError) as err:
        return _usage_error(str(err))
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    table = Table(title=f"clusterctl test {args.profile}")
    for col in ("host", "board", "firmware", "image", "events reached (seconds after power-on)", "result"):
        table.add_column(col)
    for r in results:
        verdict = "[green]pass[/]" if r.ok else "[red]FAIL[/]"
        table.add_row(r.run.host, r.run.board.name, r.run.board.firmware, r.run.image, _events_cell(r), verdict)
    out.print(table)
    for r in results:
        if not r.ok:
            out.print(f"\n[red bold]{r.run.host} failed[/]", highlight=False)
            print(r.error or f"expected {', '.join(r.run.expect)}", file=sys.stdout)
    if args.keep:
        out.print(f"work dirs (disks, console logs) kept in {workdir}")
    return exitcodes.OK if all(r.ok for r in results) else exitcodes.FAILED


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("boot", help="boot one image on one board, its serial console on this terminal",
                              description="Boot IMAGE in QEMU on a board from testdriver/boards/, as a USB stick "
                              "(default) or the internal disk. The serial console is this terminal: Ctrl-A X quits.")
    p.add_argument("image", help="a built image (raw .img or .qcow2); it is never written to")
    p.add_argument("--board", required=True, help="a board name (testdriver/boards/NAME.yaml) or a board file")
    p.add_argument("--internal", action="store_true", help="attach the image as the first internal disk")
    p.add_argument("--workdir", help="keep the machine's disks and firmware variables here (reused next time)")
    p.add_argument("--keep", action="store_true", help="keep the temporary work dir")
    p.add_argument("-v", "--verbose", action="store_true", help="print the QEMU command line")
    p.set_defaults(func=cmd_boot)

    t = subparsers.add_parser("test", help="boot the built images on their hosts' boards and check the events",
                              description="Boot every image of PROFILE on the board of each of its hosts (one "
                              "guest at a time, on a guest-only LAN) and wait for 'matched' (USB installers) "
                              "and 'ready' with the right host and role. Exit 0 only if all pass.")
    t.add_argument("profile", help="the cluster profile (YAML)")
    t.add_argument("--host", action="append", help="only this host (repeatable)")
    t.add_argument("--images", help="where the built images are (default images/<cluster name>)")
    t.add_argument("--timeout", type=float, default=float(os.environ.get("CLUSTERCTL_TEST_TIMEOUT", 1800)),
                   help="seconds each host may take to reach its last event (default 1800)")
    t.add_argument("--workdir", help="machines' work dirs here instead of a temporary dir")
    t.add_argument("--keep", action="store_true", help="keep the machines' disks and console logs")
    t.add_argument("--answer", action="append", default=[], metavar="BOARD_OR_HOST=KEYS",
                   help="keys to type on that host's (or board's) keyboard when the wizard asks, instead of "
                        "accepting its own host: backslash escapes work, e.g. 'right=o2\\ny\\n' (another host, "
                        "the second, install) or 'left=q\\n' (quit) or 'left=s\\n' (a shell) (repeatable)")
    t.add_argument("--stick-passphrase-file", metavar="FILE",
                   help="a sealed stick's passphrase, typed when first boot asks (default "
                        "$CLUSTERCTL_STICK_PASSPHRASE, else asked on the terminal)")
    t.set_defaults(func=cmd_test)
