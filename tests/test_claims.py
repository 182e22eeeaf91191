"""The claim ledger on a stick's CLUSTER partition: made by the builder's claims stage, read and
written by first boot (mtools on the disk image, no mount), listed and released by
``clusterctl claims``; a missing, full or corrupt partition is said, never fatal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent.firstboot.claims import StickLedger
from builder.plan import Stage
from builder.stages import claims as claims_stage
from core.disk import gpt
from hardware import ledger as ledger_mod
from tests.hwfixtures import load_inventory

ROOT = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024


def stick_with_claims(tmp: Path, partition: bytes | None = None) -> Path:
    """A disk image shaped like a stick's tail: a small root-like partition, then CLUSTER (made by
    the claims stage unless ``partition`` gives other bytes)."""
    work = tmp / "work"
    work.mkdir(exist_ok=True)
    stage = Stage("claims", "claims:stick", {"label": gpt.CLAIMS_NAME, "size_mib": 8, "volume_id": "c1a1e5ed"})
    ctx = SimpleNamespace(on_line=lambda stage: None)
    record, fat = claims_stage.run(ctx, stage, work, tmp / "claims.log")  # type: ignore[arg-type]
    assert record["size"] == 8 * MiB
    disk = tmp / "stick.img"
    with open(disk, "wb") as f:
        f.truncate(16 * MiB)
    parts = [gpt.Part("root-stable", MiB, 4 * MiB, gpt.ROOT_X86_64_TYPE, "11111111-2222-4333-8444-555555555555"),
             gpt.Part(gpt.CLAIMS_NAME, 5 * MiB, 8 * MiB, gpt.BASIC_DATA_TYPE, "11111111-2222-4333-8444-666666666666")]
    gpt.write_table(str(disk), parts, "11111111-2222-4333-8444-777777777777")
    with open(disk, "r+b") as f:
        f.seek(5 * MiB)
        f.write(partition if partition is not None else fat.read_bytes())
    return disk


def test_the_builder_makes_an_empty_fat_labelled_cluster(tmp_path: Path) -> None:
    disk = stick_with_claims(tmp_path)
    label = subprocess.run(["mlabel", "-s", "-i", f"{disk}@@{5 * MiB}", "::"], capture_output=True, text=True,
                           env={"MTOOLS_SKIP_CHECK": "1"})
    assert "CLUSTER" in label.stdout
    where = StickLedger.find(str(disk), tmp_path / "run" / "claims.json")
    assert where.fetch() == ledger_mod.empty() and where.problem is None


def test_a_claim_goes_onto_the_stick_and_comes_back(tmp_path: Path) -> None:
    disk = stick_with_claims(tmp_path)
    where = StickLedger.find(str(disk), tmp_path / "run" / "claims.json")
    book = where.fetch()
    assert book is not None
    ledger_mod.claim(book, "left", load_inventory("nano-itx-desktop"), now=0)
    ledger_mod.save(where.local, book)
    assert where.store() is None
    again = StickLedger.find(str(disk), tmp_path / "other" / "claims.json").fetch()
    assert again is not None and again["claims"]["left"]["serial"] == "JW-NF9-0001"
    assert again["claims"]["left"]["at"] == "1970-01-01T00:00:00Z"


def clusterctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "builder", *args], cwd=ROOT, capture_output=True, text=True)


def test_clusterctl_claims_lists_and_releases(tmp_path: Path) -> None:
    disk = stick_with_claims(tmp_path)
    where = StickLedger.find(str(disk), tmp_path / "claims.json")
    book = where.fetch()
    assert book is not None
    ledger_mod.claim(book, "left", load_inventory("nano-itx-desktop"), now=0)
    ledger_mod.claim(book, "right", load_inventory("mini-pc-two-disks"), now=0)  # another box took right
    ledger_mod.save(where.local, book)
    assert where.store() is None

    listed = clusterctl("claims", str(disk))
    assert listed.returncode == 0, listed.stderr
    assert "left: Jetway NF9HG-2930, serial JW-NF9-0001" in listed.stdout and "right:" in listed.stdout
    released = clusterctl("claims", str(disk), "--release", "left")
    assert released.returncode == 0 and f"released left on {disk}" in released.stdout
    assert set(json.loads(clusterctl("claims", str(disk), "--json").stdout)["claims"]) == {"right"}
    # A host it holds no claim for: exit 2, the claims named, nothing written.
    again = clusterctl("claims", str(disk), "--release", "left")
    assert again.returncode == 2 and "holds no claim for left (claims: right)" in again.stderr
    # inventory --match --ledger reads the stick: right is another box's, so not the storage box's.
    match = clusterctl("inventory", "--from", str(ROOT / "tests/fixtures/inventory/storage-box.json"),
                       "--match", str(ROOT / "profiles/dual-nano-itx.yaml"), "--ledger", str(disk), "--json")
    assert match.returncode == 0, match.stderr
    right = next(c for c in json.loads(match.stdout)["ranked"] if c["host"] == "right")
    assert right["eligible"] is False and "already installed on" in right["excluded"]


def test_a_stick_without_the_partition_says_so(tmp_path: Path) -> None:
    disk = tmp_path / "old.img"
    with open(disk, "wb") as f:
        f.truncate(8 * MiB)
    gpt.write_table(str(disk), [gpt.Part("ESP", MiB, 4 * MiB, gpt.ESP_TYPE, "11111111-2222-4333-8444-555555555555")],
                    "11111111-2222-4333-8444-777777777777")
    where = StickLedger.find(str(disk), tmp_path / "claims.json")
    assert where.fetch() is None and where.problem == "the stick has no CLUSTER partition"
    assert where.store() == "the stick has no CLUSTER partition"
    listed = clusterctl("claims", str(disk))
    assert listed.returncode == 2 and "the stick has no CLUSTER partition" in listed.stderr


def test_a_corrupt_partition_is_said_and_changes_nothing(tmp_path: Path) -> None:
    disk = stick_with_claims(tmp_path, partition=b"\xff" * MiB)
    before = disk.read_bytes()
    where = StickLedger.find(str(disk), tmp_path / "claims.json")
    assert where.fetch() is None
    assert where.problem is not None and where.problem.startswith("the claim ledger on the stick could not be read")
    assert disk.read_bytes() == before


def test_a_full_partition_is_said(tmp_path: Path) -> None:
    disk = stick_with_claims(tmp_path)
    image = f"{disk}@@{5 * MiB}"
    filler = tmp_path / "filler"
    filler.write_bytes(b"\0" * 4096)
    # Fill it to the last cluster: files of 4 KiB until mcopy refuses one.
    for i in range(4096):
        if subprocess.run(["mcopy", "-i", image, str(filler), f"::f{i}"], capture_output=True,
                          env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}).returncode != 0:
            break
    else:
        raise AssertionError("the partition never filled")
    where = StickLedger.find(str(disk), tmp_path / "claims.json")
    book = where.fetch()
    assert book is not None
    ledger_mod.claim(book, "left", load_inventory("nano-itx-desktop"), now=0)
    ledger_mod.save(where.local, book)
    problem = where.store()
    assert problem is not None and "could not be written" in problem


@pytest.mark.parametrize("answer", ["y"])
def test_first_boot_records_the_claim_on_the_stick_before_the_disk(tmp_path: Path, answer: str) -> None:
    """agent.firstboot run, unattended, on a stick image with a CLUSTER partition: the claim is on
    the stick, and a dry run shows it is written before any install step."""
    from builder.profile import load_profile

    disk = stick_with_claims(tmp_path)
    inv = load_inventory("nano-itx-desktop")
    for d in inv["disks"]:
        if d.get("boot_medium"):
            d["path"] = str(disk)
    (tmp_path / "inv.json").write_text(json.dumps(inv))
    (tmp_path / "profile.json").write_text(load_profile(ROOT / "profiles/dual-nano-itx.yaml").model.dumps())
    (tmp_path / "cmdline").write_text("clusterctl.unattended=1 clusterctl.after=none\n")
    proc = subprocess.run(
        [sys.executable, "-m", "agent.firstboot", "run", "--cmdline", str(tmp_path / "cmdline"), "--profile",
         str(tmp_path / "profile.json"), "--facts", str(tmp_path / "none.json"),
         "--inventory", str(tmp_path / "inv.json"), "--work", str(tmp_path / "run"), "--dry-run"],
        cwd=ROOT, capture_output=True, text=True,
        stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert '"event": "claim", "host": "left", "recorded": true' in proc.stdout
    book = StickLedger.find(str(disk), tmp_path / "check.json").fetch()
    assert book is not None and book["claims"]["left"]["serial"] == "JW-NF9-0001"
    # The same stick on the same box again: still left (its own claim); on a twin box, refused.
    twin = json.loads((tmp_path / "inv.json").read_text())
    twin["system"]["serial"] = "JW-NF9-0099"
    for n in twin.get("nics") or []:
        n["mac"] = "00:30:18:c1:09:99"
    (tmp_path / "twin.json").write_text(json.dumps(twin))
    proc = subprocess.run(
        [sys.executable, "-m", "agent.firstboot", "run", "--cmdline", str(tmp_path / "cmdline"), "--profile",
         str(tmp_path / "profile.json"), "--facts", str(tmp_path / "none.json"), "--inventory",
         str(tmp_path / "twin.json"), "--work", str(tmp_path / "run2"), "--dry-run"], cwd=ROOT, capture_output=True,
        text=True, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1
    assert "left is already installed on Jetway NF9HG-2930" in proc.stdout
