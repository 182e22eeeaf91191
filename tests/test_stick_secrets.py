"""Sealed stick secrets (cluster.stick_secrets: passphrase): the format, the build's refusals,
and first boot getting the passphrase from the kernel command line, the CLUSTER partition or a
person at the screen or the serial line (real pseudo-terminals, real mtools on a real FAT).
The QEMU side (a built sealed stick, its bytes scanned, a person typing the passphrase on the
emulated keyboard) is in tests/test_firstboot_qemu.py."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.firstboot.cmdline import parse
from agent.stickseal import (
    SealError,
    SecretFile,
    StickKey,
    WrongPassphrase,
    key_for,
    read_header,
    seal,
    unseal,
)
from builder.profile import load_profile
from core.disk.gpt import CLAIMS_NAME, read_table
from core.disk.tools import MTOOLS_ENV, fat
from core.events import parse_line
from tests.hwfixtures import load_inventory
from tests.test_claims import stick_with_claims
from tests.test_consoles import Pty

ROOT = Path(__file__).resolve().parents[1]
PASSPHRASE = "correct horse battery"
FILES = [SecretFile("ssh/ssh_host_ed25519_key", 0o600, b"-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n"),
         SecretFile("identity/hosts.json", 0o644, b"{}\n")]


@pytest.fixture(scope="module")
def key() -> StickKey:
    return StickKey.derive(PASSPHRASE, b"0123456789abcdef")


def test_sealed_files_open_with_the_passphrase_only(key: StickKey) -> None:
    blob = seal(key, "dualnano", "left", FILES)
    assert b"PRIVATE KEY" not in blob and b"abc" not in blob
    assert seal(key, "dualnano", "left", FILES) == blob  # a rebuild gives the same bytes
    assert unseal(key_for(blob, PASSPHRASE), blob, "left") == FILES
    with pytest.raises(WrongPassphrase):
        unseal(key_for(blob, "correct horse battery!"), blob, "left")


def test_a_blob_cannot_pass_for_another_host_or_be_weakened(key: StickKey) -> None:
    blob = seal(key, "dualnano", "left", FILES)
    with pytest.raises(SealError, match="host 'left'"):
        unseal(key, blob, "right")
    head, _, rest = blob.partition(b"\n")
    header = read_header(blob)
    for change in ({"host": "right"}, {"cluster": "other"}, {"kdf": {**header["kdf"], "n": 2}}):
        forged = json.dumps({**header, **change}, sort_keys=True, separators=(",", ":")).encode() + b"\n" + rest
        with pytest.raises(WrongPassphrase):
            unseal(key, forged, change.get("host"))  # type: ignore[arg-type]
    flipped = bytearray(blob)
    flipped[len(head) + 5] ^= 1
    with pytest.raises(SealError):
        unseal(key, bytes(flipped), "left")
    with pytest.raises(SealError, match="not a sealed-secrets file"):
        read_header(b"PRIVATE KEY\n")


def test_the_kernel_command_line_may_carry_the_passphrase() -> None:
    assert parse("quiet clusterctl.passphrase=horse-battery-staple").passphrase == "horse-battery-staple"
    assert parse("quiet").passphrase is None


# --- the build ---------------------------------------------------------------------------------


def sealed_profile(tmp_path: Path) -> Path:
    text = (ROOT / "profiles" / "dual-nano-itx.yaml").read_text()
    assert "  name: dualnano\n" in text
    profile = tmp_path / "sealed.yaml"
    profile.write_text(text.replace("  name: dualnano\n", "  name: dualnano\n  stick_secrets: passphrase\n"))
    return profile


def clusterctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "CLUSTERCTL_STICK_PASSPHRASE"}
    return subprocess.run([sys.executable, "-m", "builder", *args], cwd=ROOT, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, env={**base, **(env or {})}, timeout=300)


def test_a_sealed_profile_without_a_passphrase_builds_nothing(tmp_path: Path) -> None:
    profile = sealed_profile(tmp_path)
    out = tmp_path / "images"
    proc = clusterctl("build", str(profile), "--out", str(out), "--cache-dir", str(tmp_path / "cache"))
    assert proc.returncode == 2, proc.stderr
    assert "stick_secrets is passphrase" in proc.stderr and "--stick-passphrase-file" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(out.rglob("*.img"))
    short = tmp_path / "short"
    short.write_text("horse\n")
    proc = clusterctl("build", str(profile), "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
                      "--stick-passphrase-file", str(short))
    assert proc.returncode == 2 and "at least 8 characters" in proc.stderr, proc.stderr
    proc = clusterctl("build", str(profile), "--out", str(out), "--stick-passphrase-file", str(tmp_path / "nope"))
    assert proc.returncode == 2 and "No such file" in proc.stderr, proc.stderr
    assert not list(out.rglob("*.img"))


def test_the_plan_warns_of_a_clear_stick_and_keys_a_sealed_one(tmp_path: Path) -> None:
    from builder.plan import make_plan

    clear = make_plan(load_profile(ROOT / "profiles" / "dual-nano-itx.yaml"), out_dir=tmp_path)
    assert any("in the clear" in w and "stick_secrets: passphrase" in w for w in clear.warnings)
    sealed = make_plan(load_profile(sealed_profile(tmp_path)), out_dir=tmp_path,
                       secrets_digest={"stick": "sealed 1234"})
    assert not any("in the clear" in w for w in sealed.warnings)
    image = next(s for s in sealed.stages.values() if s.kind == "image")
    assert image.inputs["stick_secrets"] == "sealed 1234"
    other = make_plan(load_profile(sealed_profile(tmp_path)), out_dir=tmp_path,
                      secrets_digest={"stick": "sealed 5678"})
    assert next(s for s in other.stages.values() if s.kind == "image").key != image.key  # a new passphrase
    shown = clusterctl("plan", str(ROOT / "profiles" / "dual-nano-itx.yaml"), "--out", str(tmp_path / "images"))
    assert shown.returncode == 0 and "warning: images.stick:" in shown.stderr and "in the clear" in shown.stderr


# --- first boot --------------------------------------------------------------------------------


def first_boot(tmp_path: Path, key: StickKey, cmdline: str, consoles: list[str], stick: Path | None = None,
               ) -> subprocess.Popen[str]:
    """agent.firstboot run (dry run) on a captured nano-itx inventory, with both hosts' secrets sealed."""
    secrets = tmp_path / "secrets"
    for host in ("left", "right"):
        (secrets / host).mkdir(parents=True)
        (secrets / host / "sealed").write_bytes(seal(key, "dualnano", host, FILES))
    inv = load_inventory("nano-itx-desktop")
    if stick is not None:
        for d in inv["disks"]:
            if d.get("boot_medium"):
                d["path"] = str(stick)
    (tmp_path / "inv.json").write_text(json.dumps(inv))
    (tmp_path / "profile.json").write_text(load_profile(ROOT / "profiles/dual-nano-itx.yaml").model.dumps())
    (tmp_path / "cmdline").write_text(cmdline + "\n")
    return subprocess.Popen(
        [sys.executable, "-m", "agent.firstboot", "run", "--cmdline", str(tmp_path / "cmdline"), "--profile",
         str(tmp_path / "profile.json"), "--facts", str(tmp_path / "none.json"), "--inventory",
         str(tmp_path / "inv.json"), "--work", str(tmp_path / "run"), "--secrets", str(secrets), "--dry-run",
         *[a for c in consoles for a in ("--console", c)]],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)


def asked_twice(pty: Pty, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while pty.seen.count(b"Passphrase that unlocks") < 2:
        assert time.monotonic() < deadline, pty.seen.decode(errors="replace")
        if select.select([pty.master], [], [], 1)[0]:
            pty.seen += os.read(pty.master, 65536)


def events_of(out: str) -> list[dict[str, object]]:
    return [e for e in map(parse_line, out.splitlines()) if e]


def test_the_person_types_the_passphrase_hidden_on_either_console(tmp_path: Path, key: StickKey) -> None:
    screen, serial = Pty(), Pty()
    proc = first_boot(tmp_path, key, "console=tty0 console=ttyS0 clusterctl.after=none",
                      [f"screen={screen.path}", f"serial={serial.path}"])
    try:
        shown = screen.read_until("Passphrase that unlocks this stick's host keys: ")
        assert "sealed with a passphrase" in shown
        serial.read_until("Passphrase that unlocks")
        screen.type("horse battery correct\r")  # a wrong one, at the screen
        screen.read_until("does not unlock the keys (4 tries left)")
        serial.read_until("does not unlock the keys (4 tries left)")
        asked_twice(serial)  # keys typed before the question is asked again are dropped
        serial.type(PASSPHRASE + "\r")  # the right one, on the serial line
        screen.read_until("(answered on the serial: hidden)")
        screen.read_until("[y] install, [o] another host")
        screen.type("y\r")
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        screen.close()
        serial.close()
    assert proc.returncode == 0, err
    for seen in (screen.seen.decode(errors="replace"), serial.seen.decode(errors="replace"), out, err):
        assert PASSPHRASE not in seen and "horse battery correct" not in seen  # never echoed, never logged
    names = [(e["event"], e.get("question")) for e in events_of(out)]
    assert names == [("asking", "passphrase"), ("passphrase", None), ("asking", "passphrase"), ("unsealed", None),
                     ("inventory", None), ("asking", None), ("matched", None), ("claim", None)]


def test_unattended_the_passphrase_comes_from_the_stick_after_a_wrong_one_on_the_cmdline(
        tmp_path: Path, key: StickKey) -> None:
    stick = stick_with_claims(tmp_path)
    part = read_table(str(stick)).by_name(CLAIMS_NAME)
    assert part is not None
    (tmp_path / "passphrase.txt").write_text(PASSPHRASE + "\n")
    subprocess.run(["mcopy", "-i", fat(str(stick), part.start), str(tmp_path / "passphrase.txt"), "::passphrase.txt"],
                   env=MTOOLS_ENV, check=True)
    proc = first_boot(tmp_path, key, "clusterctl.unattended=1 clusterctl.after=none clusterctl.passphrase=wrong-one",
                      [], stick=stick)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    events = events_of(out)
    assert {"event": "passphrase", "source": "cmdline", "ok": False} in events
    assert {"event": "unsealed", "source": "stick"} in events
    assert not any(e.get("question") == "passphrase" for e in events)
    assert next(e for e in events if e["event"] == "matched")["host"] == "left"


def test_with_no_passphrase_and_nobody_to_ask_nothing_is_chosen_or_written(tmp_path: Path, key: StickKey) -> None:
    proc = first_boot(tmp_path, key, "clusterctl.unattended=1 clusterctl.after=none", [])
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, out + err
    events = events_of(out)
    assert events[-1]["event"] == "error" and events[-1]["stage"] == "unseal"
    assert "no passphrase unlocked them" in str(events[-1]["message"])
    assert not any(e["event"] in ("matched", "claim") for e in events)
    assert not (tmp_path / "run" / "decision.json").exists()
