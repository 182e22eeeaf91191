"""``clusterctl test``'s work: boot each built image on the boards of its hosts, check the events.

For a universal USB installer, each of its hosts boots the stick on its own board and must
report ``matched`` with its own host and role, then ``ready`` with them. For a host's disk or
cloud image, the image is that host's internal disk and must reach ``ready``. An ``error``
event, a wrong host or role, a machine that dies, or a deadline fails the host at once.

When the wizard asks (event ``asking``), the test answers as a person at the box would: it
reads the screen (a screenshot, OCR) to see what the wizard proposes, then types on the
emulated keyboard, never the serial line: ``y`` when the proposal is this host; the host's
number when the box fits several; or the keys a user scripted (``--answer``). A sealed stick
asks for its passphrase first: it is typed the same way. A board without
a display is answered on its keyboard all the same, and the serial console's copy of the
wizard is read back instead of a screen.

After ``installed``, the machine's restart powers it off instead (QMP ``set-action``), the
stick is pulled and the machine powered on again, as a person pulls the stick when the box
restarts; an installer that powers off by itself is treated the same way.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.model import Image, Profile
from testdriver.board import Board, board_from_dict
from testdriver.lan import Lan
from testdriver.qemu import Machine, MachineError, MachineExited
from testdriver.screen import ScreenError, wait_for_text


@dataclass
class HostRun:
    """One host booting one image."""

    host: str
    role: str
    board: Board
    image: str
    image_type: str
    image_path: Path
    expect: list[str]  # event names, in order; each must carry this host and role
    macs: list[str] | None = None
    dmi_serial: str | None = None
    answer: str | None = None  # keys to type when the wizard asks, instead of the person's own
    passphrase: str | None = None  # a sealed stick's (cluster.stick_secrets: passphrase), typed when asked

    @property
    def as_usb(self) -> bool:
        return self.image_type == "usb-installer"


@dataclass
class HostResult:
    run: HostRun
    reached: list[tuple[str, float]] = field(default_factory=list)  # (event, seconds since first power-on)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and [e for e, _ in self.reached if e in self.run.expect] == self.run.expect


def image_path(images_dir: Path, name: str, image: Image) -> Path:
    """Where ``clusterctl build`` puts an image (same naming as ``clusterctl plan``)."""
    return images_dir / f"{name}.{'qcow2' if image.format == 'qcow2' else 'img'}"


def _unique_mac(mac: str, used: set[str]) -> str:
    # Hosts sharing a board would share its MACs; vary the last byte so a LAN sees distinct NICs.
    head, last = mac.rsplit(":", 1)
    n = int(last, 16)
    while mac in used:
        n = (n + 1) % 256
        mac = f"{head}:{n:02x}"
    return mac


def plan_runs(profile: Profile | dict[str, Any], images_dir: Path, load_board: Callable[[str], Board],
              only_hosts: list[str] | None = None, answers: dict[str, str] | None = None,
              passphrase: str | None = None) -> list[HostRun]:  # fmt: skip
    """The host runs of a resolved profile (the model, or its JSON), in image then host order."""
    model = profile if isinstance(profile, Profile) else Profile.from_json(profile)
    runs: list[HostRun] = []
    used_macs: set[str] = set()
    boards: dict[str, Board] = {}
    for name, image in model.images.items():
        for host in image.hosts:
            if only_hosts and host not in only_hosts:
                continue
            spec = model.hosts[host]
            if spec.board not in boards:  # the profile's own boards first, then testdriver/boards/
                own = model.boards.get(spec.board)
                boards[spec.board] = board_from_dict(dict(own), spec.board) if own else load_board(spec.board)
            board = boards[spec.board]
            pin = spec.pin
            pinned: Any = pin.get("mac") or []
            pinned = [pinned] if isinstance(pinned, str) else list(pinned)
            macs = [pinned[i] if i < len(pinned) else _unique_mac(n.mac, used_macs) for i, n in enumerate(board.nics)]
            used_macs.update(macs)
            expect = ["matched", "ready"] if image.installer else ["ready"]
            runs.append(HostRun(
                host=host, role=spec.role, board=board, image=name, image_type=image.type,
                image_path=image_path(images_dir, name, image), expect=expect, macs=macs,
                dmi_serial=pin.get("serial"),
                answer=(answers or {}).get(host, (answers or {}).get(spec.board)),
                passphrase=passphrase if image.installer else None,
            ))  # fmt: skip
    return runs


def check_event(run: HostRun, event: dict[str, Any]) -> str | None:
    """Why an awaited event is wrong for this host, or None."""
    if event["event"] == "error":
        return f"the guest reported an error: {event.get('stage', '?')}: {event.get('message', event)}"
    wrong = [f"{k} {event.get(k)!r} (expected {want!r})"
             for k, want in (("host", run.host), ("role", run.role)) if event.get(k) != want]  # fmt: skip
    return f"{event['event']} with " + ", ".join(wrong) if wrong else None


def run_host(run: HostRun, workdir: Path, lan: Lan | None, timeout: float,
             on_event: Callable[[HostRun, str, float], None] | None = None) -> HostResult:  # fmt: skip
    """Boot, follow the events, stop the machine; never raises for a guest's failure."""
    result = HostResult(run)
    if not run.image_path.is_file():
        result.error = f"image {run.image_path} is not built (run 'clusterctl build' first)"
        return result
    m = Machine(run.board, workdir / run.host, boot_image=run.image_path, as_usb=run.as_usb, macs=run.macs,
                dmi_serial=run.dmi_serial, lan=lan, name=run.host)  # fmt: skip
    began = time.monotonic()
    deadline = began + timeout
    installed = False
    try:
        m.start()
        for name in run.expect:
            while True:
                try:
                    event = m.wait_for(
                        lambda e, name=name: e["event"] in (name, "error", "installed", "asking")
                        and not is_the_sticks_own(run, e),
                        timeout=max(1.0, deadline - time.monotonic()),
                    )
                except MachineExited:
                    if not (installed and run.as_usb and m.config.boot_image is not None):
                        raise
                    m.config.boot_image = None  # pull the stick, press the power button
                    m.start()
                    continue
                if event["event"] == "asking" and name != "asking":
                    result.error = answer_wizard(m, run, event)
                    if result.error:
                        return result
                    continue
                if event["event"] == "installed":
                    installed = True
                    result.reached.append(("installed", time.monotonic() - began))
                    if run.as_usb:
                        # The box restarts into its disk: power off instead, pull the stick, power on.
                        m.qmp("set-action", reboot="shutdown")
                    if name != "installed":
                        continue
                problem = check_event(run, event)
                if problem:
                    result.error = m.explain(problem)
                    return result
                seconds = time.monotonic() - began
                result.reached.append((name, seconds))
                if on_event:
                    on_event(run, name, seconds)
                break
    except MachineError as e:
        result.error = str(e)
    finally:
        m.close()
    return result


def is_the_sticks_own(run: HostRun, event: dict[str, Any]) -> bool:
    """The stick's own system saying it is up (no host yet): not the host's ``ready``, which comes
    from the installed system after the restart."""
    return run.as_usb and event["event"] == "ready" and event.get("host") is None


def answer_wizard(m: Machine, run: HostRun, asking: dict[str, Any]) -> str | None:
    """Answer the wizard on the keyboard as a person would; why it could not be, or None."""
    look = Look(m)
    cands = list(asking.get("candidates") or [])
    try:
        if asking.get("question") == "passphrase":
            if run.passphrase is None:
                return m.explain("the stick's host keys are sealed and first boot asks for the passphrase: give "
                                 "clusterctl test --stick-passphrase-file FILE or $CLUSTERCTL_STICK_PASSPHRASE")
            look.wait(["Passphrase", "host keys"])
            m.send_chars(run.passphrase + "\n")
            return None
        if run.answer is not None:
            look.wait(["quit"])  # the question is on the screen: keys typed before it are not an answer
            m.send_chars(run.answer)
            return None
        if asking.get("outcome") == "ambiguous" and run.host in cands:
            look.wait(["which one is it", "quit"])
            m.send_chars(f"{cands.index(run.host) + 1}\n")
        elif asking.get("outcome") != "certain" or cands[:1] != [run.host]:
            return m.explain(f"the wizard found no place for {run.host} on this box "
                             f"({asking.get('outcome')}, candidates {cands}); the screen shows:\n{look.text}")
        look.wait([f"This is {run.host}", "Install to", "another host"])
        m.send_chars("y\n")
    except (ScreenError, MachineError) as e:
        return m.explain(f"answering the wizard: {e}")
    return None


class Look:
    """What the person sees: the screen read back by OCR, or, on a box without a display, the
    wizard's copy on the serial console."""

    def __init__(self, m: Machine) -> None:
        self.m, self.text = m, ""

    def read(self) -> str:
        if self.m.board.display:
            self.text = self.m.screen_text()
        else:
            self.text = "\n".join(self.m.console.tail(60)) if self.m.console else ""
        return self.text

    def wait(self, phrases: list[str], timeout: float = 120.0) -> str:
        return wait_for_text(self.read, phrases, timeout)


def run_all(runs: list[HostRun], workdir: Path, timeout: float, keep: bool,
            on_event: Callable[[HostRun, str, float], None] | None = None) -> list[HostResult]:  # fmt: skip
    """Each host in turn (one guest at a time), all on one guest-only LAN."""
    workdir.mkdir(parents=True, exist_ok=True)
    results: list[HostResult] = []
    with Lan("test") as lan:
        for run in runs:
            results.append(run_host(run, workdir, lan, timeout, on_event))
            if not keep:
                shutil.rmtree(workdir / run.host, ignore_errors=True)
    return results
