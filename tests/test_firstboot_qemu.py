"""End to end in QEMU: one universal stick from profiles/dual-nano-itx.yaml, as written, installs both boards.

The stick is built once per module from the profile as a user has it: not unattended, so the
wizard asks on every box, and it is answered as a person answers it: on the emulated keyboard
(QMP send-key), never the serial line, after reading the screen (a screenshot, OCR) or, on the
storage board that has no display, the wizard's copy on the serial console. After ``installed``
the box's restart powers it off instead (QMP set-action), the stick is pulled and the box is
powered on from its disk, to ``ready`` with the right host and role.

nano-itx (UEFI, one NVMe, a display): host left, role desktop.
nano-itx-storage (BIOS, a 32 GB SSD and two 2 TB disks, no display): host right, role storage;
one 2 TB disk is full of data and must be byte-identical afterwards; the power is cut while the
installer writes, and the stick is booted again: it takes up its own unfinished install.

The wizard when the box is not certain: a mini PC with a display and a second disk fits both
hosts, so it asks which; a laptop (its emulated battery seen) fits neither, so it says so and
lists them all. And the claim ledger: a second nano-itx box booting the same stick is told that
left is already installed on the first box, and is offered what is still free (nothing fits
it, so it quits).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from builder.profile import load_profile
from core.events import parse_line
from testdriver.board import Disk, load_board
from testdriver.qemu import Machine
from testdriver.qemu_cmd import MachinePaths
from testdriver.testrun import HostRun, answer_wizard, plan_runs
from tests.diskroom import module_workdir

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiles" / "dual-nano-itx.yaml"
BOOT, INSTALL = 900.0, 1800.0  # seconds, under TCG on a shared 2-core machine


@pytest.fixture(scope="module")
def dualnano_stick(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The universal stick (built once; CLUSTERCTL_TEST_CACHE keeps the stage cache across runs)."""
    with module_workdir(tmp_path_factory, "dualnano") as base:
        yield _build_stick(base)


def _build_stick(base: Path) -> Path:
    cache = Path(os.environ.get("CLUSTERCTL_TEST_CACHE") or base / "cache")
    out = base / "images"
    proc = subprocess.run([sys.executable, "-m", "builder", "build", str(PROFILE), "--out", str(out),
                           "--cache-dir", str(cache)], cwd=ROOT, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stick = out / "dualnano" / "stick.img"
    assert stick.is_file()
    return stick


def host_run(host: str) -> HostRun:
    """What ``clusterctl test`` knows of a host: its board and what it is meant to become."""
    (run,) = plan_runs(load_profile(PROFILE).model, Path("/unused"), load_board, [host])
    return run


def answer_as_a_person(m: Machine, host: str) -> dict[str, Any]:
    """Wait for the wizard's question and answer it on the keyboard; the ``matched`` event."""
    asking = m.wait_for("asking", timeout=BOOT)
    problem = answer_wizard(m, host_run(host), asking)
    assert problem is None, problem
    matched = m.wait_for({"event": "matched"}, timeout=120)
    assert matched["host"] == host and matched["chosen_by"] == "person"
    return matched


def boot_stick_until_installed(board: str, workdir: Path, stick: Path, host: str, disk: str | None) -> dict[str, Any]:
    """``disk``: the device name the selector must pick, where names are stable (NVMe); SATA
    names change from boot to boot (sda one time, sdd the next), so there it is None."""
    with Machine(load_board(board), workdir, boot_image=stick, name=f"{host}-stick") as m:
        m.start()
        matched = answer_as_a_person(m, host)
        assert matched["disk"] == (disk or matched["disk"])
        installed = m.wait_for({"event": "installed"}, timeout=INSTALL)
        assert installed["disk"] == matched["disk"]
        m.qmp("set-action", reboot="shutdown")  # its restart powers it off: the stick can be pulled
        m.wait_exit(300)
        return installed


def boot_disk_until_ready(board: str, workdir: Path, host: str) -> dict[str, Any]:
    with Machine(load_board(board), workdir, name=f"{host}-disk") as m:  # no stick
        m.start()
        return m.wait_for({"event": "ready"}, timeout=BOOT)


def test_clusterctl_test_installs_and_boots_both_hosts(dualnano_stick: Path, tmp_path: Path) -> None:
    """The README's ``clusterctl test profiles/dual-nano-itx.yaml``, on the real stick: each board
    boots the stick, the wizard asks, the command reads the screen and types the answer on the
    keyboard; the box installs, restarts without the stick, and is ``ready`` as its own host."""
    work = tmp_path / "machines"
    proc = subprocess.run(
        [sys.executable, "-m", "builder", "test", str(PROFILE),
         "--images", str(dualnano_stick.parent), "--workdir", str(work), "--keep", "--timeout", str(INSTALL)],
        cwd=ROOT, capture_output=True, text=True, timeout=2 * (INSTALL + BOOT),
        env={**os.environ, "COLUMNS": "240"})  # one table row a line  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for host, board, firmware in (("left", "nano-itx", "uefi"), ("right", "nano-itx-storage", "bios")):
        # The table's row, not the progress line ("left: stick ... on nano-itx (uefi), expecting ...").
        row = next(line for line in proc.stdout.splitlines() if f" {host} " in line and f" {board} " in line)
        assert firmware in row and "ready" in row and "pass" in row.lower(), row
        console = (work / host / "console.log").read_text(errors="replace")
        events = [e for line in console.splitlines() if (e := parse_line(line))]
        matched = next(e for e in events if e["event"] == "matched")
        assert matched["host"] == host and matched["chosen_by"] == "person"
        # Answered on the keyboard: the serial console says so (the wizard shows it on both).
        assert "(answered on the screen: y)" in console
        assert next(e for e in events if e["event"] == "claim") == {"event": "claim", "host": host, "recorded": True}
        # The stick's own system says it is up while the wizard asks (host null); after the
        # install, only the installed system's 'ready' comes, naming the host.
        after = events[next(i for i, e in enumerate(events) if e["event"] == "installed"):]
        assert [(e["host"], e["role"]) for e in after if e["event"] == "ready"] == [(host, host_run(host).role)]
    # left has a display: its screen was read, and showed the proposal the wizard made.
    shots = sorted((work / "left").glob("screen-*.png"))
    assert shots, "no screenshot of left's screen"
    events = [e for line in (work / "left" / "console.log").read_text(errors="replace").splitlines()
              if (e := parse_line(line))]  # fmt: skip
    installed = next(e for e in events if e["event"] == "installed")
    assert installed["host"] == "left" and installed["disk"] == "/dev/nvme0n1"  # the selector's disk {type: nvme}
    ready = [e for e in events if e["event"] == "ready"][-1]
    assert (ready["host"], ready["role"], ready["os"]) == ("left", "desktop", "stable")


def data_disk(path: Path, size: int, work: Path) -> None:
    """A qcow2 disk of ``size`` bytes holding an ext4 file system full of random data."""
    tree = work / "data"
    tree.mkdir()
    (tree / "archive.bin").write_bytes(os.urandom(48 * 1024 * 1024))
    raw = work / "data.raw"
    with open(raw, "wb") as f:
        f.truncate(64 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "archive", "-d", str(tree), str(raw)], check=True)
    subprocess.run(["qemu-img", "convert", "-q", "-O", "qcow2", str(raw), str(path)], check=True)
    subprocess.run(["qemu-img", "resize", "-q", str(path), str(size)], check=True)
    raw.unlink()


def same_disk(a: Path, b: Path) -> bool:
    """qemu-img compare: the guest-visible contents of two disks, byte for byte."""
    return subprocess.run(["qemu-img", "compare", "-q", "-f", "qcow2", "-F", "qcow2", str(a), str(b)]).returncode == 0


def test_right_survives_a_power_cut_and_leaves_the_data_disk_alone(dualnano_stick: Path, tmp_path: Path) -> None:
    board = load_board("nano-itx-storage")
    wd = tmp_path / "right"
    wd.mkdir()
    data = MachinePaths(wd, wd).disk(1)  # the first 2 TB disk
    data_disk(data, board.disks[1].size, tmp_path)
    pristine = tmp_path / "data-before.qcow2"
    subprocess.run(["cp", "--sparse=always", str(data), str(pristine)], check=True)

    # First boot from the stick; the power goes while the root is being written.
    with Machine(board, wd, boot_image=dualnano_stick, name="right-cut") as m:
        m.start()
        answer_as_a_person(m, "right")  # install.disk {smallest: true}: the SSD
        m.wait_for(lambda e: e["event"] == "installing" and e["step"].startswith("copy:"), timeout=INSTALL)
        m.kill()
        assert not any(e["event"] == "installed" for e in m.events)

    # The stick again: its own unfinished install is offered as blank, and the box's own claim
    # does not stand in its way; the person says yes again.
    installed = boot_stick_until_installed("nano-itx-storage", wd, dualnano_stick, "right", None)
    assert installed["host"] == "right"
    ready = boot_disk_until_ready("nano-itx-storage", wd, "right")
    assert (ready["host"], ready["role"], ready["os"]) == ("right", "storage", "stable")
    assert same_disk(pristine, data), "the data disk changed"


def test_the_wizard_asks_when_two_hosts_fit_and_says_so_when_none_does(dualnano_stick: Path, tmp_path: Path) -> None:
    mini = load_board("vesa-mini-pc")
    # left wants a desktop or mini PC with a display; right wants two disks or more: this box is both.
    both = dataclasses.replace(mini, name="mini-pc-two-disks", disks=(
        *mini.disks, Disk(bus="sata", size=2 * 10**12, model="WDC WD20EFRX-68EUZN0", serial="WD-WCC4M0009999",
                          rotational=True)))  # fmt: skip
    with Machine(both, tmp_path / "both", boot_image=dualnano_stick, name="both") as m2, \
            Machine(load_board("laptop"), tmp_path / "laptop", boot_image=dualnano_stick, name="laptop") as m0:
        m2.start()
        m0.start()
        asking = m2.wait_for("asking", timeout=BOOT)
        assert (asking["outcome"], asking["candidates"]) == ("ambiguous", ["left", "right"])
        m2.wait_for_line(r"This machine fits 2 hosts; which one is it\?", timeout=60)
        m2.wait_for_line(r"Pick a host \[1-2\], s = shell, q = quit: ", timeout=60)
        m2.wait_for_screen("which one is it", "q = quit")
        m2.send_chars("2\n")
        m2.wait_for_line(r"This is right", timeout=60)
        m2.wait_for_screen("This is right", "another host")
        m2.wait_for_line(r"\[y\] install, \[o\] another host, \[s\] shell, \[q\] quit: ", timeout=60)
        assert not [e for e in m2.events if e["event"] in ("matched", "installing", "installed")]

        # The laptop board's emulated ACPI battery (testdriver/acpi): detect sees a power_supply of
        # type Battery that is the machine's own (not scope=Device).
        assert m0.wait_for("inventory", timeout=BOOT)["battery"] is True
        asking = m0.wait_for("asking", timeout=120)
        assert asking["outcome"] == "none"
        m0.wait_for_line("No host of this stick matches this machine.", timeout=60)
        # Each with why not (rich wraps at the console's 80 columns: match within one line).
        m0.wait_for_line(r"1\. left \(role desktop, .*\): chassis laptop, not desktop/mini-pc", timeout=60)
        m0.wait_for_line(r"2\. right \(role storage, .*\): 1 disk, wanted ≥ 2", timeout=60)
        m0.wait_for_line(r"Pick a host \[1-2\], s = shell, q = quit: ", timeout=60)
        m0.wait_for_screen("No host of this stick matches", "q = quit")
        m0.send_chars("q\n")  # nothing decided, nothing written
        quit_ = m0.wait_for({"event": "error", "stage": "match"}, timeout=120)
        assert quit_["message"] == "no host was chosen; nothing was installed"
        assert not [e for e in m0.events if e["event"] in ("matched", "installing", "installed")]


def test_a_second_box_of_the_same_board_is_told_the_host_is_taken(dualnano_stick: Path, tmp_path: Path) -> None:
    """Two nano-itx boxes boot one stick in turn. The first becomes left, and its claim is on the
    stick before its disk is written; the second (another serial, other MACs) is told which box
    holds left, and nothing else fits it: it quits, and nothing is written."""
    board = load_board("nano-itx")
    first = tmp_path / "first"
    with Machine(board, first, boot_image=dualnano_stick, name="first") as m:
        m.start()
        answer_as_a_person(m, "left")
        assert m.wait_for("claim", timeout=120) == {"event": "claim", "host": "left", "recorded": True}
        m.wait_for("installing", timeout=120)  # the claim is on the stick before the disk is written
        m.kill()
    twin = dataclasses.replace(board, name="nano-itx-twin",
                               dmi=dataclasses.replace(board.dmi, serial="JW-NF9-0077"),
                               nics=tuple(dataclasses.replace(n, mac="52:54:00:c1:77:01") for n in board.nics))
    # The same stick: the first box's stick, with what the first box wrote on it.
    with Machine(twin, tmp_path / "second", boot_image=first / "stick.qcow2", name="second") as m:
        m.start()
        asking = m.wait_for("asking", timeout=BOOT)
        assert asking["outcome"] == "none"
        text = m.wait_for_screen("This box would be left", "already installed on", "q = quit")
        assert "JW-NF9-0001" in text or "Jetway" in text  # which box holds it
        m.wait_for_line(r"1\. left .*already installed on Jetway NF9HG-2930", timeout=60)
        m.send_chars("q\n")
        quit_ = m.wait_for({"event": "error", "stage": "match"}, timeout=120)
        assert quit_["message"] == "no host was chosen; nothing was installed"
        assert not [e for e in m.events if e["event"] in ("matched", "installing", "installed")]


# --- a sealed stick (cluster.stick_secrets: passphrase) ----------------------------------------

PASSPHRASE = "Lost sticks tell nothing 42"


def private_needles(secrets: Path, host: str) -> list[bytes]:
    """Byte strings that would give the host's private keys away: each private file whole, and a
    line of each key's base64 body (a copy in any layout would still show it)."""
    needles = []
    for f in [*secrets.joinpath(host).glob("ssh_host_*_key"), *secrets.joinpath(host, "agent").iterdir()]:
        if f.is_file() and f.stat().st_mode & 0o077 == 0:  # 0600: private
            data = f.read_bytes().strip()
            needles.append(data)
            body = [line for line in data.splitlines() if line and not line.startswith(b"-----")]
            needles.append(body[len(body) // 2][-40:])  # key bytes, not a header every key shares
    assert len(needles) >= 8, needles  # two ssh keys, the identity key, the WireGuard key
    return needles


def found_in_image(image: Path, needles: list[bytes]) -> set[bytes]:
    """Which needles occur in the image's bytes (its data extents; holes hold none)."""
    found: set[bytes] = set()
    overlap = max(len(n) for n in needles)
    fd = os.open(image, os.O_RDONLY)
    try:
        end, pos, tail = os.fstat(fd).st_size, 0, b""
        while pos < end:
            try:
                pos = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break  # no data after pos
            hole = os.lseek(fd, pos, os.SEEK_HOLE)
            tail = b""
            while pos < hole:
                chunk = tail + os.pread(fd, min(16 << 20, hole - pos), pos)
                pos += len(chunk) - len(tail)
                found.update(n for n in needles if n in chunk)
                tail = chunk[-overlap:]
    finally:
        os.close(fd)
    return found


def test_a_sealed_stick_gives_no_key_away_and_installs_when_the_passphrase_is_typed(
        dualnano_stick: Path, tmp_path: Path) -> None:
    """The profile with cluster.stick_secrets: passphrase: no host's private key is in the stick's
    bytes (the clear stick of the same profile has them all: the scan can fail); then the
    README's ``clusterctl test`` on left reads the passphrase question on the screen, types it on
    the keyboard, and the box installs and is ready with its own keys (a wrong passphrase and the
    unattended sources: tests/test_stick_secrets.py)."""
    profile = tmp_path / "sealed.yaml"
    profile.write_text(PROFILE.read_text().replace("  name: dualnano\n",
                                                   "  name: dualnano\n  stick_secrets: passphrase\n"))
    secret_file = tmp_path / "passphrase"
    secret_file.write_text(PASSPHRASE + "\n")
    out = tmp_path / "images"
    cache = Path(os.environ.get("CLUSTERCTL_TEST_CACHE") or dualnano_stick.parents[2] / "cache")
    proc = subprocess.run([sys.executable, "-m", "builder", "build", str(profile), "--out", str(out), "--cache-dir",
                           str(cache), "--stick-passphrase-file", str(secret_file)],
                          cwd=ROOT, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "in the clear" not in proc.stdout + proc.stderr
    sealed = out / "dualnano" / "stick.img"
    needles = {h: private_needles(out / "dualnano" / ".secrets", h) for h in ("left", "right")}
    assert found_in_image(sealed, [n for ns in needles.values() for n in ns]) == set()
    clear_needles = private_needles(dualnano_stick.parent / ".secrets", "left")
    assert found_in_image(dualnano_stick, clear_needles) == set(clear_needles)
    # The person's way, on left's screen and keyboard: one wrong passphrase, then the right one.
    work = tmp_path / "machines"
    proc = subprocess.run(
        [sys.executable, "-m", "builder", "test", str(profile), "--host", "left", "--images", str(sealed.parent),
         "--workdir", str(work), "--keep", "--timeout", str(INSTALL), "--stick-passphrase-file", str(secret_file)],
        cwd=ROOT, capture_output=True, text=True, timeout=2 * (INSTALL + BOOT),
        env={k: v for k, v in os.environ.items() if k != "CLUSTERCTL_STICK_PASSPHRASE"} | {"COLUMNS": "240"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    console = (work / "left" / "console.log").read_text(errors="replace")
    assert PASSPHRASE not in console
    events = [e for line in console.splitlines() if (e := parse_line(line))]
    assert {"event": "unsealed", "source": "person"} in events
    assert [e["host"] for e in events if e["event"] == "installed"] == ["left"]
    assert [(e["host"], e["role"]) for e in events if e["event"] == "ready" and e.get("host")] == [("left", "desktop")]
    # The installed disk holds left's own keys, as the build made them.
    disk = work / "left" / "disk0.qcow2"
    assert installed_file(disk, work, "/etc/ssh/ssh_host_ed25519_key.pub") == \
        (out / "dualnano" / ".secrets" / "left" / "ssh_host_ed25519_key.pub").read_bytes()
    subprocess.run(["rm", "-rf", str(out), str(work)], check=True)  # GiBs: the suite's peak disk stays low


def installed_file(disk: Path, work: Path, path: str) -> bytes:
    """A file of the installed default root, read with debugfs from a raw copy of the guest's disk."""
    raw = work / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(disk), str(raw)], check=True)
    table = json.loads(subprocess.run(["sfdisk", "--json", str(raw)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    root = next(p for p in table["partitions"] if p.get("name") == "root-stable")
    fs = f"{raw}?offset={root['start'] * 512}"
    # The machine was stopped, not shut down: its journal is replayed first (debugfs does not).
    subprocess.run(["e2fsck", "-fy", fs], capture_output=True)
    got = subprocess.run(["debugfs", "-R", f"cat {path}", fs], capture_output=True, check=True)
    raw.unlink()
    assert got.stdout, f"debugfs read nothing of {path}: {got.stderr.decode(errors='replace')[-500:]}"
    return got.stdout
