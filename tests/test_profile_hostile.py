"""Hostile or mistaken profiles the table alone let through: overlay folders that would copy the
build machine's own files into images, sizes beyond any real disk, empty files, NUL bytes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.profile import ProfileInvalid, load_board, load_profile
from tests.test_profile_errors import GOOD, ROOT


def with_overlay(folder: str) -> str:
    return GOOD.replace("  stable: {suite: bookworm}", f'  stable: {{suite: bookworm, overlays: ["{folder}"]}}')


def errors(path: Path, **options: object) -> list[str]:
    try:
        load_profile(path, **options)  # type: ignore[arg-type]
    except ProfileInvalid as e:
        return [str(d) for d in e.diagnostics]
    return []


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A home folder of our own, so the checks of ~ and its private folders are tested in isolation."""
    h = tmp_path / "home"
    (h / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(h))
    yield h


@pytest.mark.parametrize(("folder", "reason"), [
    ("/", "/ is a system folder"),
    ("/usr", "/usr is a system folder"),
    ("/etc/ssh", "is inside /etc, the build machine's own live system or secrets"),
    ("~", "is your home folder"),
    ("~/.ssh", "which holds the build's output, cache or keys"),
])
def test_system_folders_and_home_are_refused(tmp_path: Path, home: Path, folder: str, reason: str) -> None:
    profile = tmp_path / "p.yaml"
    profile.write_text(with_overlay(folder))
    found = errors(profile)
    assert len(found) == 1 and reason in found[0], found
    assert found[0].startswith(f"{profile}:5:") and "oses.stable.overlays[0]" in found[0]


def test_a_link_to_the_root_is_refused_as_the_root(tmp_path: Path, home: Path) -> None:
    (tmp_path / "innocent").symlink_to("/")
    profile = tmp_path / "p.yaml"
    profile.write_text(with_overlay("innocent"))
    assert any("(the link leads to /) is a system folder" in e for e in errors(profile))


def test_the_builds_own_output_and_cache_are_refused(tmp_path: Path, home: Path) -> None:
    project = tmp_path / "project"
    (project / "images").mkdir(parents=True)
    (project / "cache" / "x").mkdir(parents=True)
    profile = project / "p.yaml"
    profile.write_text(with_overlay("."))  # the project folder, output inside it
    found = errors(profile, guarded=[project / "images"])
    assert any(f"holds {project}/images (the build's output, cache or keys)" in e for e in found), found
    profile.write_text(with_overlay("cache/x"))
    found = errors(profile, guarded=[project / "cache"])
    assert any(f"is inside {project}/cache" in e for e in found), found
    # The default stage cache, under the home folder, without being named.
    (home / ".cache" / "clusterctl").mkdir(parents=True)
    profile.write_text(with_overlay(str(home / ".cache" / "clusterctl")))
    assert any("is inside" in e and ".cache/clusterctl" in e for e in errors(profile))


def test_the_cli_guards_its_out_folder(tmp_path: Path, home: Path) -> None:
    (tmp_path / "out").mkdir()
    profile = tmp_path / "p.yaml"
    profile.write_text(with_overlay("."))
    proc = subprocess.run([sys.executable, "-m", "builder", "plan", str(profile), "--out", str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(home)})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"holds {tmp_path}/out" in proc.stderr, proc.stderr


def test_device_files_sockets_and_fifos_are_refused(tmp_path: Path, home: Path) -> None:
    tree = tmp_path / "ovl"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "motd").write_text("hello\n")
    os.mkfifo(tree / "etc" / "pipe")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tree / "agent.sock"))
    try:
        (tree / "null").symlink_to("/dev/null")  # a link is copied as a link: fine
        profile = tmp_path / "p.yaml"
        profile.write_text(with_overlay("ovl"))
        found = errors(profile)
        assert len(found) == 1, found
        assert "etc/pipe (a FIFO)" in found[0] and "agent.sock (a socket)" in found[0]
        assert "an overlay holds only files, folders and links" in found[0] and "null" not in found[0]
        if os.geteuid() == 0:
            os.mknod(tree / "sda", 0o600 | 0o060000, os.makedev(8, 0))
            assert "sda (a device)" in errors(profile)[0]
    finally:
        sock.close()
    (tree / "etc" / "pipe").unlink()
    (tree / "agent.sock").unlink()
    for special in ("sda",):
        (tree / special).unlink(missing_ok=True)
    assert errors(profile) == []  # the same tree with files only


@pytest.mark.parametrize(("where", "text", "reason"), [
    ("size: 4GiB}", "size: 10000000000000000000000TiB}", "far beyond any real disk; at most 256 TiB"),
    ("size: 4GiB}", "size: 1000000000000000000000000000000}", "far beyond any real disk"),
    ("size: 4GiB}", "size: 300TiB}", "at most 256 TiB"),
])
def test_sizes_beyond_any_real_disk_are_refused(tmp_path: Path, where: str, text: str, reason: str) -> None:
    profile = tmp_path / "p.yaml"
    profile.write_text(GOOD.replace(where, text))
    found = errors(profile)
    assert len(found) == 1 and reason in found[0] and found[0].startswith(f"{profile}:18:"), found


def test_a_large_but_real_size_still_validates(tmp_path: Path) -> None:
    profile = tmp_path / "p.yaml"
    profile.write_text(GOOD.replace("size: 4GiB}", "size: 30TB}"))
    assert errors(profile) == []


def test_board_sizes_and_memory_are_bounded(tmp_path: Path) -> None:
    board = (ROOT / "testdriver" / "boards" / "nano-itx.yaml").read_text()
    path = tmp_path / "b.yaml"
    path.write_text(board.replace("memory: ", "memory: 1000000TiB #", 1))
    with pytest.raises(ProfileInvalid, match="far beyond any real machine's memory; at most 16 TiB"):
        load_board(path)


@pytest.mark.parametrize("text", ["", "   \n\n\t\n", "# just a comment\n", "---\n"])
def test_an_empty_file_names_itself_and_what_a_profile_needs(tmp_path: Path, text: str) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "builder", "validate", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    first = proc.stderr.splitlines()[0]
    assert first.startswith(f"{path}:1:1: the file is empty")
    assert "needs at least cluster, oses, roles and hosts" in first
    assert proc.stderr.splitlines()[-1] == "clusterctl: 1 error; nothing was built"


def test_an_empty_board_file_says_what_a_board_needs(tmp_path: Path) -> None:
    path = tmp_path / "b.yaml"
    path.write_text("\n")
    with pytest.raises(ProfileInvalid) as err:
        load_board(path)
    assert "a board is a mapping that needs at least description, firmware and dmi" in str(err.value.diagnostics[0])


def test_a_nul_in_a_file_name_is_a_located_error(tmp_path: Path) -> None:
    # Found by tests/test_profile_shapes.py: os.path raised ValueError (a traceback) on it.
    profile = tmp_path / "p.yaml"
    profile.write_text('include: ["a\\0b"]\n' + GOOD)
    assert any("include[0]: expected a file name" in e for e in errors(profile))
    profile.write_text(with_overlay("a\\0b"))
    assert any("oses.stable.overlays[0]: expected a folder" in e for e in errors(profile))


USERS = """\
  users:
    - {name: alice, uid: 1500}
    - {name: bob, uid: 1500}
    - {name: alice}
"""


def test_two_users_with_one_uid_or_name_are_located_errors(tmp_path: Path) -> None:
    profile = tmp_path / "p.yaml"
    profile.write_text(GOOD.replace("  network: {lan: 10.42.0.0/24}\n", "  network: {lan: 10.42.0.0/24}\n" + USERS))
    found = errors(profile)
    assert any(e.startswith(f"{profile}:6:") and "cluster.users[1].uid: 1500 is also cluster.users[0]'s uid" in e
               for e in found), found
    assert any(e.startswith(f"{profile}:7:") and "cluster.users[2].name: alice is also" in e for e in found), found
