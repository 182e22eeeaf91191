"""Every kind of mistake is reported, located, all at once, with exit status 2 and no traceback."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from builder.cli import main
from builder.profile import ProfileInvalid, load_profile

ROOT = Path(__file__).resolve().parents[1]

GOOD = """\
cluster:
  name: demo
  network: {lan: 10.42.0.0/24}
oses:
  stable: {suite: bookworm}
  rescue: {kind: rescue}
roles:
  desktop:
    os: [stable, rescue]
    match: {chassis: desktop, display: true}
  storage:
    os: [stable]
    match: {disks: {count: ">=2"}, display: false}
hosts:
  left: {role: desktop, board: nano-itx}
  right: {role: storage, board: nano-itx-storage}
images:
  stick: {type: usb-installer, hosts: [left, right], size: 4GiB}
"""


def errors_of(tmp_path: Path, text: str, extra: dict[str, str] | None = None) -> list[str]:
    for name, body in (extra or {}).items():
        (tmp_path / name).write_text(textwrap.dedent(body))
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent(text))
    try:
        load_profile(path)
    except ProfileInvalid as e:
        return [str(d).replace(str(tmp_path) + "/", "") for d in e.diagnostics]
    return []


def test_good_profile_has_no_errors(tmp_path: Path) -> None:
    assert errors_of(tmp_path, GOOD) == []


def test_unknown_key_with_did_you_mean(tmp_path: Path) -> None:
    errs = errors_of(tmp_path, GOOD.replace("  network:", "  netwrk:"))
    assert errs == ['p.yaml:3:3: cluster: unknown key "netwrk" (did you mean "network"?)']


def test_wrong_types_and_values(tmp_path: Path) -> None:
    text = GOOD.replace("suite: bookworm", "suite: 12").replace("size: 4GiB", "size: four")
    text = text.replace("display: true", "display: maybe")
    errs = errors_of(tmp_path, text)
    assert any(e.startswith("p.yaml:5:12: oses.stable.suite: expected one of") for e in errs), errs
    assert any(e.startswith("p.yaml:10:31: roles.desktop.match.display: expected true or false") for e in errs)
    assert any(e.startswith("p.yaml:18:54: images.stick.size: 'four' is not a size") for e in errs), errs
    assert len(errs) == 3


def test_bad_references_all_reported(tmp_path: Path) -> None:
    text = GOOD.replace("role: desktop,", "role: dekstop,").replace("board: nano-itx-storage", "board: nano-itz")
    text = text.replace("os: [stable, rescue]", "os: [stabel, rescue]").replace("[left, right]", "[left, rigth]")
    errs = errors_of(tmp_path, text)
    assert 'p.yaml:9:10: roles.desktop.os[0]: no OS "stabel" (did you mean "stable"?)' in errs
    assert 'p.yaml:15:10: hosts.left.role: no role "dekstop" (did you mean "desktop"?)' in errs
    assert any(e.startswith('p.yaml:16:26: hosts.right.board: no board "nano-itz" in testdriver/boards/') for e in errs)
    assert 'p.yaml:18:46: images.stick.hosts[1]: no host "rigth" (did you mean "right"?)' in errs


def test_duplicate_keys_are_caught(tmp_path: Path) -> None:
    text = GOOD.replace("  right: {role: storage", "  left: {role: storage")
    errs = errors_of(tmp_path, text)
    assert errs[0] == 'p.yaml:16:3: duplicate key "left" (first at line 15); YAML would silently keep only the last one'


def test_missing_required(tmp_path: Path) -> None:
    errs = errors_of(tmp_path, GOOD.replace("  name: demo\n", ""))
    assert errs == ['p.yaml:2:3: cluster: missing "name": the cluster\'s name; images land in images/<name>/']


def test_include_merges_in_order_and_null_resets(tmp_path: Path) -> None:
    base = """\
    cluster:
      name: base
      timezone: Europe/Berlin
      users: [{name: alice}]
    oses:
      stable: {suite: bookworm, packages: [vim]}
    """
    own = "  name: demo\n  timezone: null\n  users: [{name: bob}]\n"
    text = "include: [base.yaml]\n" + GOOD.replace("  name: demo\n", own)
    text = text.replace("stable: {suite: bookworm}", "stable: {packages: [htop]}")
    (tmp_path / "base.yaml").write_text(textwrap.dedent(base))
    (tmp_path / "p.yaml").write_text(text)
    data = load_profile(tmp_path / "p.yaml").data
    assert data["cluster"]["name"] == "demo"
    assert data["cluster"]["timezone"] == "Etc/UTC"  # null reset it to the default
    assert [u["name"] for u in data["cluster"]["users"]] == ["alice", "bob"]  # lists append
    assert data["oses"]["stable"]["packages"] == ["vim", "htop"]
    assert data["oses"]["stable"]["suite"] == "bookworm"  # maps merge


def test_error_in_included_file_points_into_it(tmp_path: Path) -> None:
    errs = errors_of(tmp_path, "include: [inc.yaml]\n" + GOOD, {"inc.yaml": "oses:\n  next: {suite: trixy}\n"})
    assert errs == ['inc.yaml:2:10: oses.next.suite: "trixy" is not allowed (did you mean "trixie"?)']


def test_include_cycle(tmp_path: Path) -> None:
    files = {"a.yaml": "include: [b.yaml]\n", "b.yaml": "include: [a.yaml]\n"}
    errs = errors_of(tmp_path, "include: [a.yaml]\n" + GOOD, files)
    assert errs == ["b.yaml:1:11: include cycle: p.yaml → a.yaml → b.yaml → a.yaml"]


def test_extends_merges_and_detects_cycles(tmp_path: Path) -> None:
    text = GOOD.replace("  right: {role: storage, board: nano-itx-storage}",
                        "  right: {role: storage, board: nano-itx-storage}\n"
                        "  third: {extends: right, pin: {serial: S3}}\n"
                        "  fourth: {extends: fifth}\n  fifth: {extends: fourth}")
    errs = errors_of(tmp_path, text)
    assert "p.yaml:19:11: hosts.fifth.extends: cycle fourth → fifth → fourth" in errs, errs


def test_extends_inherits(tmp_path: Path) -> None:
    text = GOOD.replace("  right: {role: storage, board: nano-itx-storage}",
                        "  right: {role: storage, board: nano-itx-storage, packages: [aa]}\n"
                        "  third: {extends: right, packages: [bb], pin: {serial: S3}}")
    path = tmp_path / "p.yaml"
    path.write_text(text)
    third = load_profile(path).data["hosts"]["third"]
    assert third["role"] == "storage" and third["packages"] == ["aa", "bb"] and third["pin"] == {"serial": "S3"}


def test_indistinguishable_hosts_on_a_stick(tmp_path: Path) -> None:
    text = GOOD.replace("role: storage, board: nano-itx-storage", "role: desktop, board: nano-itx")
    errs = errors_of(tmp_path, text)
    assert len(errs) == 1
    assert errs[0].startswith('p.yaml:18:3: images.stick.hosts: hosts "left" and "right" could never')


def test_image_needs_its_hosts(tmp_path: Path) -> None:
    errs = errors_of(tmp_path, GOOD + "  disk1: {type: disk, hosts: [left]}\n")
    assert 'p.yaml:19:3: images.disk1: missing "host": the host of this disk image' in errs
    assert any("images.disk1.hosts: applies only when type is usb-installer" in e for e in errs)


def test_addresses_assigned_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(GOOD)
    hosts = load_profile(path).data["hosts"]
    assert hosts["left"]["address"] == "10.42.0.11" and hosts["right"]["address"] == "10.42.0.12"
    errs = errors_of(tmp_path, GOOD.replace("board: nano-itx}", "board: nano-itx, address: 10.9.0.1}"))
    assert any("10.9.0.1 is outside cluster.network.lan 10.42.0.0/24" in e for e in errs)


# --- hostile input ------------------------------------------------------------------------

BOMB_LINES = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
for _i, _n in enumerate("bcdefghi"):
    BOMB_LINES.append(f"{_n}: &{_n} [" + ",".join([f"*{'abcdefghi'[_i]}"] * 9) + "]")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\n".join(BOMB_LINES) + "\n", "an alias bomb"),
        ("x: " + "[" * 5000 + "]" * 5000 + "\n", "nesting deeper than 64 levels"),
        ("cluster: !!python/object/apply:os.system [echo hi]\n", "YAML tag"),
        ("a: 1\n---\nb: 2\n", "a profile is one YAML document"),
        ("cluster: {name: x\n", "YAML syntax"),
        ("base: &b {name: x}\ncluster:\n  <<: *b\n", "merge keys (<<) are not supported"),
        ("- just\n- a list\n", "a profile must be a mapping"),
    ],
    ids=["alias-bomb", "deep-nesting", "object-tag", "two-documents", "syntax", "merge-key", "not-a-mapping"],
)
def test_hostile_yaml_fails_fast_and_located(tmp_path: Path, text: str, expected: str) -> None:
    errs = errors_of(tmp_path, text)
    assert errs and expected in errs[0], errs
    assert errs[0].startswith("p.yaml:")


def test_binary_garbage(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ProfileInvalid, match="binary data"):
        load_profile(path)
    path.write_bytes(b"cluster:\n  name: \xff\xfe\n")
    with pytest.raises(ProfileInvalid, match=r"p.yaml:2:9: not UTF-8"):
        load_profile(path)


def test_huge_file_refused_without_reading_it_all(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    with open(path, "wb") as f:
        f.truncate(65 * 1024 * 1024)  # sparse: costs no disk
    with pytest.raises(ProfileInvalid, match="larger than 64 MiB"):
        load_profile(path)


def test_cli_exit_2_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(GOOD.replace("suite: bookworm", "suit: bookworm"))
    proc = subprocess.run([sys.executable, "-m", "builder", "validate", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f'{path}:5:12: oses.stable: unknown key "suit" (did you mean "suite"?)' in proc.stderr


def test_cli_validate_examples_ok(capsys: pytest.CaptureFixture[str]) -> None:
    profiles = sorted(str(p) for p in (ROOT / "profiles").glob("*.yaml"))
    assert main(["validate", "--quiet", *profiles]) == 0


def test_cli_missing_file() -> None:
    assert main(["validate", "/nonexistent/p.yaml"]) == 2
