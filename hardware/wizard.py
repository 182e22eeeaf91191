"""The first-boot wizard: which host is this box, where does it install, and does the person agree?

On the console (rich): what was found, the proposed host and role with the reasons, the target
disk with what is on it now, the OSes to install; then install, pick another host, or drop to a
shell (the wizard comes back when the shell exits). Unattended mode (``cluster.unattended`` or
``--unattended``) installs without asking when the match is certain and the disk is safe to use.

Emits the ``inventory`` and ``matched`` events (core/events.py). Writes the decision as JSON for
the installer and claims the host in the ledger. Runs in the images: Debian python3, python3-rich.

    python3 -m agent.firstboot wizard --profile PROFILE.json --inventory INV.json --decision OUT.json
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from rich.markup import escape

from core.model import Profile
from hardware import ledger as ledger_mod
from hardware.match import Candidate, MatchResult, rank
from hardware.selectors import DiskChoice, SelectorError, choose_disk, describe_contents, describe_disk
from hardware.summary import event_fields, machine_name, render


@dataclass
class Decision:
    """What the installer needs: the host, its role, the disk, the OSes, and how it was chosen."""

    host: str
    role: str | None
    score: float
    outcome: str
    chosen_by: str  # "unattended" | "person"
    disk: str | None
    disk_path: str | None
    wipe: bool
    oses: list[str] = field(default_factory=list)
    why: list[str] = field(default_factory=list)


class Wizard:
    def __init__(self, profile: Profile | dict[str, Any], inventory: dict[str, Any], *, ledger_path: str | None = None,
                 hosts: list[str] | None = None, unattended: bool | None = None, console: Any = None,
                 events: TextIO | None = None, ask: Callable[[str], str] | None = None,
                 shell: str | None = None, spawn_shell: Callable[[list[str]], int] | None = None,
                 ledger: dict[str, Any] | None = None, ledger_problem: str | None = None,
                 record_claim: Callable[[], str | None] | None = None) -> None:
        from rich.console import Console

        # The resolved profile as the builder writes it (profile.json), read through the model.
        self.profile = profile if isinstance(profile, Profile) else Profile.from_json(profile)
        self.inventory = inventory
        self.ledger_path = ledger_path
        self.ledger = ledger if ledger is not None else (ledger_mod.load(ledger_path) if ledger_path else None)
        # Why the stick's ledger can't be used (then no claim is checked or recorded), and how a
        # claim saved at ledger_path goes back onto the stick (returns why it could not).
        self.ledger_problem = ledger_problem
        self.record_claim = record_claim
        self.hosts = hosts
        self.unattended = self.profile.cluster.unattended if unattended is None else unattended
        self.console = console or Console(highlight=False)
        self.events = events if events is not None else sys.stdout
        self.ask = ask or (lambda prompt: self.console.input(escape(prompt)))
        self.shell = shell or os.environ.get("SHELL") or "/bin/sh"
        self.spawn_shell = spawn_shell or subprocess.call

    # --- output ------------------------------------------------------------------------

    def say(self, text: str = "") -> None:
        self.console.print(text)

    def emit(self, event: str, **fields: Any) -> None:
        from core.events import emit

        emit(event, stream=self.events, **fields)

    def oses_of(self, role: str | None) -> list[str]:
        r = self.profile.roles.get(role) if role else None
        return list(r.os) if r else []

    def describe_oses(self, names: list[str]) -> str:
        out = []
        for i, name in enumerate(names):
            o = self.profile.oses[name]
            what = f"{o.distro} {o.suite}" if o.kind == "system" else o.kind
            out.append(f"{name} ({what}{', default' if i == 0 else ''})")
        return ", ".join(out) or "none"

    def disk_for(self, host: str) -> DiskChoice:
        h = self.profile.hosts.get(host)
        if h is None:
            return DiskChoice(None, [], [], f"no host {host!r} in the profile")
        try:
            return choose_disk(dict(h.install_disk), self.inventory)
        except SelectorError as e:
            return DiskChoice(None, [], [], str(e))

    # --- screens -----------------------------------------------------------------------

    def show_found(self) -> None:
        self.say(f"[bold]clusterctl first boot[/bold] — cluster "
                 f"[bold]{escape(self.profile.cluster.name)}[/bold]")
        self.say(f"\n[bold]What was found[/bold]: {escape(machine_name(self.inventory))}")
        self.console.print(render(self.inventory))

    def show_list(self, cands: list[Candidate], title: str) -> None:
        self.say(f"\n[bold]{escape(title)}[/bold]")
        for i, c in enumerate(cands, start=1):
            state = "" if c.eligible else f"  [dim](no: {escape(str(c.excluded))})[/dim]"
            self.say(f"  {i}. {c.host} (role {c.role}, score {c.score:.2f}): {escape('; '.join(c.reasons))}{state}")

    def show_proposal(self, c: Candidate, disk: DiskChoice) -> None:
        self.say(f"\n[bold]This is {c.host}[/bold], role [bold]{c.role}[/bold] (score {c.score:.2f})")
        for r in c.reasons:
            self.say(f"  • {escape(r)}")
        if not c.eligible:
            self.say(f"  [yellow]Note: chosen by hand; the profile says no: {escape(str(c.excluded))}[/yellow]")
        if disk.disk is None:
            self.say(f"[red]No install disk:[/red] {escape(str(disk.error))}")
        else:
            d = disk.disk
            self.say(f"Install to: {escape(describe_disk(d))} — now {escape(describe_contents(d))}")
            if disk.holds_data:
                verdict = "the profile allows wiping it" if disk.wipe_allowed else "you will be asked to confirm"
                self.say(f"  [yellow]It holds data that will be erased; {verdict}.[/yellow]")
        self.say(f"OSes: {escape(self.describe_oses(self.oses_of(c.role)))}")

    # --- flow --------------------------------------------------------------------------

    def drop_to_shell(self) -> None:
        self.say(f"Starting {escape(self.shell)}; exit it to come back here.")
        self.console.file.flush()
        try:
            self.spawn_shell([self.shell])
        except OSError as e:
            self.say(f"[red]cannot start {escape(self.shell)}: {escape(str(e))}[/red]")
        self.say("Back in the first-boot wizard.")

    def pick(self, cands: list[Candidate], prompt: str) -> Candidate | str:
        """A candidate by number, or 's' / 'q'."""
        while True:
            answer = self.ask(prompt).strip().lower()
            if answer in ("s", "q"):
                return answer
            if answer.isdigit() and 1 <= int(answer) <= len(cands):
                return cands[int(answer) - 1]
            self.say(f"Please answer 1-{len(cands)}, s or q.")

    def confirm_wipe(self, disk: dict[str, Any]) -> bool:
        token = disk.get("serial") or disk["name"]
        answer = self.ask(f"{disk['name']} holds {describe_contents(disk)}. Type its serial {token} to erase it "
                          "(anything else goes back): ").strip()
        return answer == token

    def decide(self, c: Candidate, disk: DiskChoice, result: MatchResult, chosen_by: str) -> Decision:
        d = disk.disk or {}
        decision = Decision(
            host=c.host, role=c.role, score=c.score, outcome=result.outcome, chosen_by=chosen_by,
            disk=d.get("name"), disk_path=d.get("path"), wipe=bool(disk.holds_data),
            oses=self.oses_of(c.role), why=c.reasons,
        )
        self.emit("matched", host=c.host, role=c.role, score=c.score, outcome=result.outcome, why=c.reasons,
                  chosen_by=chosen_by, disk=decision.disk_path, wipe=decision.wipe)
        recorded = self.ledger_path is not None and self.ledger is not None
        problem = self.ledger_problem
        if recorded:
            ledger_mod.claim(self.ledger, c.host, self.inventory)
            ledger_mod.save(self.ledger_path, self.ledger)
            problem = self.record_claim() if self.record_claim is not None else None
        if problem:
            self.say(f"[yellow]The claim could not be recorded: {escape(problem)}. The install goes on; "
                     f"another box could be made {escape(c.host)} too.[/yellow]")
            self.emit("claim", host=c.host, recorded=False, message=problem)
        elif recorded:
            self.emit("claim", host=c.host, recorded=True)
        self.say(f"\n[bold green]Installing {c.host}[/bold green] to {decision.disk_path}.")
        return decision

    def claimed_elsewhere(self, result: MatchResult) -> Candidate | None:
        """The host this box would be, certainly, were it not already claimed by another box."""
        if result.outcome == "certain" or not ledger_mod.active_claims(self.ledger):
            return None
        free = rank(self.profile, self.inventory, None, self.hosts)
        if free.outcome != "certain" or free.best is None:
            return None
        return next((c for c in result.ranked if c.host == free.best.host and not c.eligible), None)

    def run(self) -> Decision | None:
        self.emit("inventory", **event_fields(self.inventory))
        result = rank(self.profile, self.inventory, self.ledger, self.hosts)
        self.show_found()
        everyone = result.ranked
        current: Candidate | None = result.best
        taken = self.claimed_elsewhere(result)
        if taken is not None:
            self.say(f"\n[bold yellow]This box would be {escape(taken.host)}[/bold yellow], but "
                     f"{escape(str(taken.excluded))}.")
            if self.unattended:
                self.emit("error", stage="match", host=taken.host,
                          message=f"{taken.host} is {taken.excluded}; nothing was installed")
                return None
            self.say("Pick one of the hosts still free, or release the claim and start again.")
        if result.outcome == "certain" and current is not None:
            disk = self.disk_for(current.host)
            if self.unattended and disk.disk is not None and not disk.needs_confirmation:
                self.show_proposal(current, disk)
                self.say("Unattended: the match is certain.")
                return self.decide(current, disk, result, "unattended")
        # "matched" comes once, when a host is decided; until then say that a person is being asked.
        self.emit("asking", outcome=result.outcome, candidates=[c.host for c in result.candidates])
        while True:
            if current is None:
                if result.outcome == "ambiguous":
                    cands = result.candidates
                    self.show_list(cands, f"This machine fits {len(cands)} hosts; which one is it?")
                else:
                    cands = everyone
                    self.say("\n[bold red]No host of this stick matches this machine.[/bold red]")
                    self.show_list(cands, "The hosts, and why not:")
                choice = self.pick(cands, f"Pick a host [1-{len(cands)}], s = shell, q = quit: ")
                if choice == "q":
                    return None
                if choice == "s":
                    self.drop_to_shell()
                    continue
                assert isinstance(choice, Candidate)
                current = choice
            disk = self.disk_for(current.host)
            self.show_proposal(current, disk)
            options = "[y] install, [o] another host, [s] shell, [q] quit: " if disk.disk is not None else \
                "[o] another host, [s] shell, [q] quit: "
            answer = self.ask(options).strip().lower()
            if answer in ("y", "yes", "") and disk.disk is not None:
                if disk.needs_confirmation and not self.confirm_wipe(disk.disk):
                    self.say("Not erased.")
                    continue
                return self.decide(current, disk, result, "person")
            if answer == "o":
                self.show_list(everyone, "All hosts of this stick:")
                choice = self.pick(everyone, f"Pick a host [1-{len(everyone)}], s = shell, q = quit: ")
                if choice == "q":
                    return None
                if choice == "s":
                    self.drop_to_shell()
                    continue
                assert isinstance(choice, Candidate)
                current = choice
            elif answer == "s":
                self.drop_to_shell()
            elif answer == "q":
                return None
            else:  # nothing was changed: say what the keys are, and ask again
                keys = "y (install), o, s or q" if disk.disk is not None else "o, s or q"
                self.say(f"[yellow]{escape(answer)!s} is not an answer here: type {keys}, then Enter.[/yellow]")
