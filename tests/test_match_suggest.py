"""`clusterctl inventory --suggest` and `--match`: a captured inventory becomes a host that recognises its box."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from builder.profile import load_profile
from hardware.match import rank
from hardware.selectors import choose_disk
from hardware.suggest import host_name, suggest
from tests.hwfixtures import INVENTORIES, ROOT, load_inventory

SHAPES = ["nano-itx-desktop", "storage-box", "laptop", "mini-pc-two-disks", "cloud-vm"]

PROFILE = """\
cluster: {{name: suggested}}
oses:
  stable: {{suite: bookworm}}
roles:
  any: {{os: [stable]}}
hosts:
{hosts}
images:
  stick: {{type: usb-installer, hosts: [{names}]}}
"""


def clusterctl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "builder", *args], cwd=ROOT, capture_output=True, text=True,
                          input=stdin, timeout=60, check=False)


@pytest.fixture(scope="module")
def suggested(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One profile made of the suggestions for every fixture machine; it must validate as is."""
    stanzas = [suggest(load_inventory(s), s.replace("nano-itx-", ""), "any", "nano-itx") for s in SHAPES]
    text = PROFILE.format(hosts="".join("  " + line + "\n" for st in stanzas for line in st.splitlines()),
                          names=", ".join(s.replace("nano-itx-", "") for s in SHAPES))
    path = tmp_path_factory.mktemp("suggest") / "p.yaml"
    path.write_text(text)
    return load_profile(path).data


@pytest.mark.parametrize("shape", SHAPES)
def test_suggestion_recognises_its_box_and_only_it(suggested: dict[str, Any], shape: str) -> None:
    host = shape.replace("nano-itx-", "")
    inv = load_inventory(shape)
    r = rank(suggested, inv)
    assert r.outcome == "certain" and r.best is not None and r.best.host == host and r.best.pinned
    disk = choose_disk(suggested["hosts"][host]["install"]["disk"], inv)
    if shape == "cloud-vm":  # its only disk is the one it runs from: nothing to install to
        assert disk.disk is None and "booted from" in (disk.error or "")
    else:
        assert disk.disk is not None and disk.error is None and not disk.disk["boot_medium"]
    # Selectors alone (no pins) still accept the box they were taken from.
    unpinned = {**suggested, "hosts": {h: {**v, "pin": {}} for h, v in suggested["hosts"].items()}}
    assert any(c.host == host for c in rank(unpinned, inv).candidates)


def test_suggestion_text() -> None:
    text = suggest(load_inventory("laptop"), None, "desktop", "laptop")
    stanza = yaml.safe_load(text)
    assert list(stanza) == ["host-20xw0026ge"] == [host_name(load_inventory("laptop"))]  # names start with a letter
    host = stanza["host-20xw0026ge"]
    assert host["match"] == {"chassis": "laptop", "vendor": "LENOVO", "product": "20XW0026GE", "display": True,
                             "battery": True, "cpus": ">=8", "memory": ">=16GiB", "disks": {"count": 1, "type": "nvme"}}
    assert host["pin"] == {"serial": "PF2ABCDE", "mac": ["84:1b:77:c1:03:01"]}
    assert host["install"] == {"disk": {"serial": "S4ELNX0R300001"}}
    assert "# it holds gpt: vfat SYSTEM, Microsoft reserved partition, ntfs Windows: add wipe: true" in text


def test_cli_suggest_and_json_roundtrip(tmp_path: Path) -> None:
    done = clusterctl("inventory", "--from", str(INVENTORIES / "storage-box.json"), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == load_inventory("storage-box")
    sug = clusterctl("inventory", "--from", "-", "--suggest", "--host", "nas", stdin=done.stdout)
    assert sug.returncode == 0 and yaml.safe_load(sug.stdout)["nas"]["pin"]["serial"] == "JW-NF9-0002"


def test_cli_match_ranks_a_profile(tmp_path: Path) -> None:
    profile = str(ROOT / "profiles" / "dual-nano-itx.yaml")
    done = clusterctl("inventory", "--from", str(INVENTORIES / "mini-pc-two-disks.json"), "--match", profile,
                      "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["outcome"] == "ambiguous" and [c["host"] for c in out["ranked"]] == ["left", "right"]
    ledger = tmp_path / "claims.json"
    ledger.write_text(json.dumps({"claims": {"left": {"serial": "X", "macs": [], "product": "other box"}}}))
    done = clusterctl("inventory", "--from", str(INVENTORIES / "mini-pc-two-disks.json"), "--match", profile,
                      "--ledger", str(ledger), "--json")
    assert json.loads(done.stdout)["outcome"] == "certain"
    table = clusterctl("inventory", "--from", str(INVENTORIES / "storage-box.json"), "--match", profile)
    assert table.returncode == 0 and "match: certain" in table.stdout and "3 disks" in table.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "/nonexistent.json"], "/nonexistent.json: cannot read"),
        (["--from", "pyproject.toml"], "pyproject.toml: not JSON"),
        (["--from", "-"], "-: not an inventory (missing system"),
        (["--from", "tests/fixtures/inventory/laptop.json", "--match", "profiles/dual-nano-itx.yaml",
          "--hosts", "left,nobody"], "--hosts: no host nobody"),
    ],
)
def test_cli_bad_input_exit_2(args: list[str], message: str) -> None:
    done = clusterctl("inventory", *args, stdin='{"a": 1}')
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
