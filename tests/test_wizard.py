"""The first-boot wizard, driven through a pty on inventory fixtures (Debian's python3 and python3-rich)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pexpect
import pytest

from builder.profile import load_profile
from core.events import parse_line
from tests.hwfixtures import INVENTORIES, ROOT, SYSTEM_PYTHON

PROMPT_YES = r"\[y\] install, \[o\] another host, \[s\] shell, \[q\] quit: "


@pytest.fixture(scope="module")
def profile_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The resolved dual-nano profile as JSON, as the builder would put it on the stick."""
    path = tmp_path_factory.mktemp("wizard") / "profile.json"
    path.write_text(json.dumps(load_profile(ROOT / "profiles" / "dual-nano-itx.yaml").data))
    return path


class Run:
    def __init__(self, tmp: Path, profile: Path, shape: str, *extra: str) -> None:
        self.decision, self.events, self.ledger = tmp / "decision.json", tmp / "events.log", tmp / "claims.json"
        args = ["-m", "agent.firstboot", "wizard", "--profile", str(profile),
                "--inventory", str(INVENTORIES / f"{shape}.json"),
                "--decision", str(self.decision), "--events", str(self.events), "--ledger", str(self.ledger), *extra]
        env = {"PATH": "/usr/bin:/bin", "NO_COLOR": "1", "TERM": "xterm", "SHELL": "/bin/sh", "HOME": str(tmp)}
        self.child = pexpect.spawn(SYSTEM_PYTHON, args, cwd=str(ROOT), env=env, encoding="utf-8",
                                   dimensions=(60, 200), timeout=30)

    def expect(self, pattern: str) -> None:
        self.child.expect(pattern)

    def send(self, line: str) -> None:
        self.child.sendline(line)

    def finish(self) -> int:
        self.child.expect(pexpect.EOF)
        self.child.close()
        return int(self.child.exitstatus)

    def event_list(self) -> list[dict[str, Any]]:
        return [e for e in map(parse_line, self.events.read_text().splitlines()) if e]


def test_certain_match_confirmed(tmp_path: Path, profile_json: Path) -> None:
    run = Run(tmp_path, profile_json, "nano-itx-desktop")
    run.expect("What was found")
    run.expect("Jetway NF9HG-2930")
    run.expect("This is left")
    run.expect("chassis desktop")
    run.expect(r"Install to: nvme0n1 \(NVMe, 69 GB, Samsung SSD 980 64GB, S64ANS0T100001\) — now empty")
    run.expect(r"OSes: stable \(debian bookworm, default\), next \(debian trixie\), rescue \(rescue\)")
    run.expect(PROMPT_YES)
    run.send("x")  # a key the question has no use for: a hint, nothing decided
    run.expect("x is not an answer here: type y \\(install\\), o, s or q, then Enter.")
    run.expect(PROMPT_YES)
    assert not run.decision.exists()
    run.send("y")
    run.expect("Installing left")
    assert run.finish() == 0
    decision = json.loads(run.decision.read_text())
    assert decision["host"] == "left" and decision["disk_path"] == "/dev/nvme0n1" and decision["chosen_by"] == "person"
    assert decision["wipe"] is False and decision["oses"] == ["stable", "next", "rescue"]
    events = run.event_list()
    assert [e["event"] for e in events] == ["inventory", "asking", "matched", "claim"]
    assert events[3] == {"event": "claim", "host": "left", "recorded": True}
    assert events[0]["disks"] == 1 and events[0]["display"] is True and events[0]["boot_medium"] == "sda"
    assert events[2]["host"] == "left" and events[2]["outcome"] == "certain"
    assert json.loads(run.ledger.read_text())["claims"]["left"]["serial"] == "JW-NF9-0001"


def test_certain_match_unattended(tmp_path: Path, profile_json: Path) -> None:
    run = Run(tmp_path, profile_json, "storage-box", "--unattended")
    run.expect("This is right")
    run.expect("Unattended: the match is certain")
    assert run.finish() == 0
    decision = json.loads(run.decision.read_text())
    assert (decision["host"], decision["disk"], decision["chosen_by"]) == ("right", "sda", "unattended")
    assert [e["event"] for e in run.event_list()] == ["inventory", "matched", "claim"]


def test_ambiguous_asks(tmp_path: Path, profile_json: Path) -> None:
    run = Run(tmp_path, profile_json, "mini-pc-two-disks", "--unattended")  # ambiguity is never unattended
    run.expect("This machine fits 2 hosts; which one is it?")
    run.expect(r"1\. left \(role desktop, score 0\.71\): chassis mini-pc; display connected")
    run.expect(r"2\. right \(role storage, score 0\.67\): 2 disks \(≥ 2 wanted\)")
    run.expect(r"Pick a host \[1-2\], s = shell, q = quit: ")
    run.send("7")
    run.expect("Please answer 1-2, s or q.")
    run.send("2")
    run.expect("This is right")
    run.expect(r"Install to: nvme0n1 .* now empty")  # smallest of NVMe 500 GB and HDD 1 TB
    run.expect(PROMPT_YES)
    run.send("y")
    assert run.finish() == 0
    decision = json.loads(run.decision.read_text())
    assert (decision["host"], decision["outcome"], decision["chosen_by"]) == ("right", "ambiguous", "person")
    assert [e["event"] for e in run.event_list()] == ["inventory", "asking", "matched", "claim"]
    assert run.event_list()[1]["candidates"] == ["left", "right"]


def test_no_match_says_so_offers_the_list_and_a_shell(tmp_path: Path, profile_json: Path) -> None:
    run = Run(tmp_path, profile_json, "laptop")
    run.expect("No host of this stick matches this machine.")
    run.expect(r"1\. left .*\(no: chassis laptop, not desktop/mini-pc\)")
    run.expect(r"2\. right .*\(no: 1 disk, wanted ≥ 2\)")
    run.expect(r"Pick a host \[1-2\], s = shell, q = quit: ")
    run.send("s")
    run.expect("exit it to come back here")
    run.send("echo shell-$((6*7)); exit")
    run.expect("shell-42")
    run.expect("Back in the first-boot wizard.")
    run.expect(r"Pick a host \[1-2\], s = shell, q = quit: ")
    run.send("1")
    run.expect("Note: chosen by hand; the profile says no: chassis laptop, not desktop/mini-pc")
    run.expect(r"now gpt: vfat SYSTEM, Microsoft reserved partition, ntfs Windows")
    run.expect("you will be asked to confirm")
    run.expect(PROMPT_YES)
    run.send("y")
    run.expect("Type its serial S4ELNX0R300001 to erase it")
    run.send("nope")
    run.expect("Not erased.")
    run.expect(PROMPT_YES)
    run.send("y")
    run.expect("Type its serial S4ELNX0R300001 to erase it")
    run.send("S4ELNX0R300001")
    assert run.finish() == 0
    decision = json.loads(run.decision.read_text())
    assert (decision["host"], decision["outcome"], decision["wipe"]) == ("left", "none", True)


def test_quit_leaves_no_decision(tmp_path: Path, profile_json: Path) -> None:
    run = Run(tmp_path, profile_json, "cloud-vm")
    run.expect("No host of this stick matches this machine.")
    run.expect(r"Pick a host \[1-2\], s = shell, q = quit: ")
    run.send("q")
    assert run.finish() == 1
    assert not run.decision.exists() and not run.ledger.exists()
    assert [e["event"] for e in run.event_list()] == ["inventory", "asking"]


def test_bad_profile_path_exit_2(tmp_path: Path) -> None:
    child = pexpect.spawn(SYSTEM_PYTHON,
                          ["-m", "agent.firstboot", "wizard", "--profile", str(tmp_path / "missing.json")],
                          cwd=str(ROOT), encoding="utf-8", timeout=30)
    child.expect("clusterctl first boot: .*missing.json")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 2 and "Traceback" not in (child.before or "")


def claimed_by_another_box(ledger: Path, host: str) -> None:
    ledger.write_text(json.dumps({"version": 1, "claims": {host: {
        "serial": "JW-NF9-0002", "macs": ["00:30:18:c1:09:09"], "product": "Jetway NF9HG-2930",
        "at": "2026-12-01T10:00:00Z"}}}))


def test_a_host_claimed_by_another_box_is_named_and_the_free_ones_offered(tmp_path: Path, profile_json: Path) -> None:
    run_dir = tmp_path
    claimed_by_another_box(run_dir / "claims.json", "left")
    run = Run(run_dir, profile_json, "nano-itx-desktop")
    run.expect(r"This box would be left.*already installed on Jetway NF9HG-2930")
    run.expect("Pick one of the hosts still free")
    run.expect(r"2\. right .*\(no: 1 disk, wanted ≥ 2\)")
    run.expect(r"Pick a host \[1-2\], s = shell, q = quit: ")
    run.send("q")
    assert run.finish() == 1
    assert not run.decision.exists()
    assert set(json.loads(run.ledger.read_text())["claims"]) == {"left"}  # untouched


def test_unattended_refuses_a_host_claimed_by_another_box(tmp_path: Path, profile_json: Path) -> None:
    claimed_by_another_box(tmp_path / "claims.json", "left")
    run = Run(tmp_path, profile_json, "nano-itx-desktop", "--unattended")
    assert run.finish() == 1
    assert not run.decision.exists()
    error = run.event_list()[-1]
    assert error["event"] == "error" and error["host"] == "left"
    assert "already installed on Jetway NF9HG-2930" in error["message"] and "nothing was installed" in error["message"]
