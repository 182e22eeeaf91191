"""The first-boot service on the stick: detect → wizard → install → reboot.

    python3 -m agent.firstboot run [--cmdline FILE] [--profile FILE] [--facts FILE]

Kernel command line: ``clusterctl.unattended=1`` installs without asking when the match is
certain and the disk safe; ``clusterctl.host=NAME`` forces the host (its disk selector still
picks the disk, and a disk holding data still needs the profile's or a person's consent);
``clusterctl.after=reboot|poweroff|none``; ``clusterctl.install=0`` skips first boot.

Events on stdout (the unit points it at the console): ``inventory``, ``asking``, ``matched``
(from the wizard), then ``installed`` or ``error``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from agent.firstboot import cmdline, journal
from agent.firstboot.claims import StickLedger
from agent.firstboot.consoles import Consoles, Progress, console_devices
from agent.firstboot.install_cmd import run_install
from agent.firstboot.installer import HOST_SECRETS, Request
from agent.firstboot.unseal import PASSPHRASE_FILE, Unlocked, host_files, sealed_blobs, unlock
from agent.stickseal import SealError
from core import exitcodes
from core.events import emit
from core.model import Profile
from hardware.detect import collect
from hardware.selectors import SelectorError, choose_disk
from hardware.wizard import Decision, Wizard

PROFILE = "/etc/clusterctl/profile.json"
FACTS = "/etc/clusterctl/host.json"
WORK = "/run/clusterctl"


def show_unfinished_as_blank(inventory: dict[str, Any]) -> list[str]:
    """Disks holding only our own unfinished install are offered as blank: the installer may
    start them again without asking (it checks the journal itself too). Returns their names."""
    found = []
    for d in inventory.get("disks") or []:
        if d.get("boot_medium") or not journal.is_incomplete(journal.read(d.get("path") or f"/dev/{d['name']}")):
            continue
        d.update(partition_table=None, filesystem=None, partitions=[], unfinished_install=True)
        found.append(d["name"])
    return found


def forced_decision(profile: Profile | dict[str, Any], inventory: dict[str, Any], host: str, events: TextIO) -> Any:
    """clusterctl.host=NAME: that host, unless its disk needs a person (then None: ask)."""
    model = profile if isinstance(profile, Profile) else Profile.from_json(profile)
    h = model.hosts.get(host)
    if h is None:
        raise LookupError(f"clusterctl.host={host}: the profile has no such host "
                          f"(hosts: {', '.join(model.hosts)})")
    try:
        choice = choose_disk(dict(h.install_disk), inventory)
    except SelectorError as e:
        raise LookupError(str(e)) from None
    if choice.disk is None:
        raise LookupError(f"host {host}: {choice.error}")
    if choice.needs_confirmation:
        return None
    role = h.role
    oses = list(model.oses_of_host(host))
    why = ["named on the kernel command line (clusterctl.host)"]
    emit("matched", stream=events, host=host, role=role, score=1.0, outcome="forced", why=why,
         chosen_by="cmdline", disk=choice.disk["path"], wipe=choice.holds_data)
    return Decision(host=host, role=role, score=1.0, outcome="forced", chosen_by="cmdline",
                    disk=choice.disk["name"], disk_path=choice.disk["path"], wipe=choice.holds_data, oses=oses, why=why)


def best_effort(argv: list[str]) -> bool:
    """Run a system tool whose failure (or absence) must not stop first boot; True if it worked."""
    try:
        return subprocess.run(argv, capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def freeze_root() -> bool:
    """Make the running root read-only so its copy is consistent (the stick's root is one of the
    partitions copied). The journal moves to /run first. Best effort: the copy is fsck'd anyway."""
    best_effort(["journalctl", "--relinquish-var"])
    best_effort(["sync"])
    return best_effort(["mount", "-o", "remount,ro", "/"])


def thaw_root() -> None:
    best_effort(["mount", "-o", "remount,rw", "/"])
    best_effort(["journalctl", "--flush"])


def prefer_disk_next(disk: str) -> bool:
    """UEFI: a boot entry for the installed disk's ESP, first in BootOrder (efibootmgr puts new
    entries first), so the reboot lands on the disk even with the stick still in. Without
    efibootmgr the firmware's own order decides (pull the stick)."""
    if not os.path.isdir("/sys/firmware/efi"):
        return False
    return best_effort(["efibootmgr", "--quiet", "--create", "--disk", disk, "--part", "1", "--label", "clusterctl",
                        "--loader", "\\EFI\\BOOT\\BOOTX64.EFI"])


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cmdline", default="/proc/cmdline")
    p.add_argument("--profile", default=PROFILE)
    p.add_argument("--facts", default=FACTS)
    p.add_argument("--inventory", help="a captured inventory instead of detecting this machine")
    p.add_argument("--work", default=WORK, help="where the decision and scratch files go (tmpfs)")
    p.add_argument("--secrets", default=HOST_SECRETS, help="where the stick keeps each host's keys")
    p.add_argument("--dry-run", action="store_true", help="decide, but do not install")
    p.add_argument("--console", action="append", default=[], metavar="NAME=DEVICE",
                   help="a console the wizard asks on (repeatable); default: the kernel's consoles (the screen "
                        "and the serial port), or this terminal with --inventory")


def run(args: argparse.Namespace) -> int:
    try:
        return first_boot(args)
    except Exception as e:  # a bug must still reach the console as an event, not only the journal
        traceback.print_exc()
        emit("error", stage="firstboot", message=f"{type(e).__name__}: {e}")
        return exitcodes.FAILED


def first_boot(args: argparse.Namespace) -> int:
    events = sys.stdout
    try:
        opts = cmdline.read(args.cmdline)
        profile = Profile.read(args.profile)  # ModelError is a ValueError: a malformed profile.json
        facts = json.loads(Path(args.facts).read_text(encoding="utf-8")) if os.path.exists(args.facts) else {}
    except (OSError, ValueError, cmdline.CmdlineError) as e:
        emit("error", stream=events, stage="firstboot", message=str(e))
        return exitcodes.USAGE
    if not opts.install:
        return exitcodes.OK
    if args.inventory:
        inventory = json.loads(Path(args.inventory).read_text(encoding="utf-8"))
    else:
        inventory = collect(wait_for_udev=True)
    show_unfinished_as_blank(inventory)
    medium = next((d for d in inventory.get("disks") or [] if d.get("boot_medium")), None)
    if medium is None:
        emit("error", stream=events, stage="detect", message="cannot tell which disk this system booted from")
        return exitcodes.FAILED
    candidates = list(facts.get("candidates") or []) or None
    consoles = open_consoles(args.console, live=args.inventory is None)
    try:
        return decide_and_install(args, opts, profile, inventory, medium, candidates, consoles, events)
    finally:
        if consoles is not None:
            consoles.close()  # the gettys take the consoles over when this unit stops


def say(consoles: Consoles | None, text: str) -> None:
    if consoles is not None:
        consoles.print(text)
        consoles.flush()


def open_consoles(named: list[str], live: bool) -> Consoles | None:
    """The consoles the wizard asks on: those named, else the kernel's on the stick, else None
    (this process's own terminal, as when a captured inventory is replayed by hand or in a test)."""
    if named:
        return Consoles([tuple(n.split("=", 1)) if "=" in n else (n, n) for n in named])  # type: ignore[misc]
    if not live:
        return None
    try:
        return Consoles(console_devices())
    except OSError:
        return None  # no console at all: stdout (the unit's journal and /dev/console) still works


def unlock_stick(blobs: dict[str, bytes], opts: cmdline.Options, on_stick: bytes | None, consoles: Consoles | None,
                 events: TextIO) -> Unlocked | None:
    """The passphrase from the kernel command line, the CLUSTER partition, then the person."""
    from_stick = on_stick.decode("utf-8", "replace").splitlines()[0] if on_stick and on_stick.strip() else None
    ask = (lambda prompt: consoles.input(prompt, secret=True)) if consoles is not None else None
    return unlock(blobs, [("cmdline", opts.passphrase), ("stick", from_stick)], ask, lambda t: say(consoles, t),
                  events)


def decide_and_install(args: argparse.Namespace, opts: cmdline.Options, profile: Profile, inventory: dict[str, Any],
                       medium: dict[str, Any], candidates: list[str] | None, consoles: Consoles | None,
                       events: TextIO) -> int:
    io: dict[str, Any] = ({"console": consoles, "ask": consoles.input, "spawn_shell": consoles.spawn_shell}
                          if consoles is not None else {})
    # The claim ledger on the stick's CLUSTER partition: read now, written back before the disk is.
    claims = StickLedger.find(medium.get("path") or f"/dev/{medium['name']}", Path(args.work, "claims.json"))
    ledger = claims.fetch()
    blobs = sealed_blobs(args.secrets)
    unlocked: Unlocked | None = None
    if blobs:
        unlocked = unlock_stick(blobs, opts, claims.read_file(PASSPHRASE_FILE), consoles, events)
        if unlocked is None:
            emit("error", stream=events, stage="unseal",
                 message="the stick's host keys are sealed and no passphrase unlocked them; nothing was installed")
            say(consoles, "Nothing was installed: without the passphrase the stick's host keys stay locked. "
                          "Log in below to look around.")
            return exitcodes.FAILED
    try:
        decision = forced_decision(profile, inventory, opts.host, events) if opts.host else None
        if decision is None:
            hosts = [opts.host] if opts.host else candidates
            decision = Wizard(profile, inventory, hosts=hosts, unattended=opts.unattended, events=events,
                              ledger_path=str(claims.local) if ledger is not None else None, ledger=ledger,
                              ledger_problem=claims.problem, record_claim=claims.store, **io).run()
    except LookupError as e:
        emit("error", stream=events, stage="match", message=str(e))
        return exitcodes.FAILED
    except (EOFError, KeyboardInterrupt):
        decision = None
    if decision is None:
        emit("error", stream=events, stage="match", message="no host was chosen; nothing was installed")
        say(consoles, "Nothing was installed. The stick's own system is yours: log in below to look around.")
        return exitcodes.FAILED
    os.makedirs(args.work, exist_ok=True)
    Path(args.work, "decision.json").write_text(json.dumps(asdict(decision), indent=2) + "\n", encoding="utf-8")
    if args.dry_run:
        return exitcodes.OK
    os.makedirs(f"{args.work}/tmp", exist_ok=True)
    os.environ["TMPDIR"] = f"{args.work}/tmp"  # / is read-only while its copy is taken
    # On the stick (not replaying a captured inventory) the running root is one of the copies.
    live = args.inventory is None
    frozen = freeze_root() if live else False
    try:
        secrets = host_files(unlocked, blobs, decision.host) if unlocked is not None else None
    except SealError as e:
        emit("error", stream=events, stage="unseal", message=str(e))
        return exitcodes.FAILED
    req = Request(stick=medium.get("path") or f"/dev/{medium['name']}", target=str(decision.disk_path),
                  host=decision.host, role=str(decision.role), oses=list(decision.oses), allow_wipe=decision.wipe,
                  secrets=secrets)
    progress = Progress(consoles, req.host, str(decision.disk_path)).step if consoles is not None else None
    # From here the stick's own 'ready' must not speak for the host it is installing (its unit
    # checks this file), not even in the moment between 'installed' and the restart.
    marker = Path(args.work, "installed")
    marker.write_text(req.host + "\n", encoding="utf-8")
    rc = run_install(req, events, disk_name=decision.disk_path, progress=progress)
    if rc != exitcodes.OK:
        marker.unlink(missing_ok=True)
        if frozen:
            thaw_root()
        say(consoles, f"[red]The install of {req.host} failed[/red] (the serial console's events say why); "
                      "nothing else was changed. Log in below to look around.")
        return rc
    after = {"reboot": "Restarting into it", "poweroff": "Powering off: take the stick out, then power on",
             "none": "Restart when you are ready"}.get(opts.after, opts.after)
    say(consoles, f"[bold green]{req.host} is installed[/bold green] on {decision.disk_path}. {after}.")
    if live:
        prefer_disk_next(req.target)
    if live and opts.after != "none" and not best_effort(["systemctl", "--no-block", opts.after]):
        emit("error", stream=events, stage=opts.after, message=f"systemctl {opts.after} failed; do it by hand")
        return exitcodes.FAILED
    return exitcodes.OK

