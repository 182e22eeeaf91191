"""Pieces of the build that need no image: cache, explain, overlays, users, partition layout."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from builder.build import diff_inputs
from builder.cache import StageCache
from builder.profile import load_profile
from builder.report import JsonReporter
from builder.stages.ext4edit import Put, place
from builder.stages.image import ImageTooSmall, layout, sfdisk_script
from builder.stages.overlay import Entry, OverlayError, render_layer, template_context, write_tar
from builder.stages.users import add_users

ROOT = Path(__file__).resolve().parents[1]

PASSWD = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
GROUP = "root:x:0:\nsudo:x:27:\nshadow:x:42:\nnogroup:x:65534:\n"


def test_cache_commits_whole_entries_by_rename(tmp_path: Path) -> None:
    c = StageCache(tmp_path / "c")
    try:
        work = c.workdir("rootfs:x")
        out = work / "out.bin"
        out.write_bytes(b"payload")
        assert not c.has("k1")
        c.commit("k1", {"kind": "rootfs", "n": 1}, out)
        assert not out.exists()  # moved, not copied
        assert c.has("k1") and c.path("k1").read_bytes() == b"payload"  # type: ignore[union-attr]
        assert c.record("k1")["n"] == 1  # type: ignore[index]
        c.commit("k2", {"kind": "image"}, None)
        assert c.has("k2") and c.path("k2") is None
        (c.work_root / "stale").mkdir()
        ram = c.ram_scratch()  # a killed build's tree in /dev/shm is this cache's to remove
        c.clean_stale_work()
        assert not list(c.work_root.iterdir())
        assert ram is None or not ram.exists()
    finally:
        c.close()


def test_entry_whose_file_vanished_is_not_cached(tmp_path: Path) -> None:
    c = StageCache(tmp_path / "c")
    try:
        f = c.workdir("s") / "f"
        f.write_bytes(b"x")
        c.commit("k", {"kind": "rootfs"}, f)
        c.path("k").unlink()  # type: ignore[union-attr]
        assert not c.has("k")
    finally:
        c.close()


def test_explain_names_what_changed() -> None:
    old = {"layers": [["base", "aa"], ["os/stable", "bb"]], "cluster": {"name": "x", "timezone": "UTC"}}
    new = {"layers": [["base", "aa"], ["os/stable", "cc"]], "cluster": {"name": "x", "timezone": "Europe/Berlin"}}
    assert diff_inputs(old, new) == ["cluster.timezone", "layers.os/stable"]
    assert diff_inputs(old, old) == []


def test_overlay_templates_modes_and_links(tmp_path: Path) -> None:
    layer = tmp_path / "layer"
    (layer / "etc").mkdir(parents=True)
    (layer / "etc" / "hostname.j2").write_text("{{ hostname }}\n")
    (layer / "etc" / "secret").write_text("s\n")
    (layer / "overlay.yaml").write_text(
        'modes: {etc/secret: {mode: "0600", owner: 0, group: 42}}\n'
        'links: {etc/localtime: "/usr/share/zoneinfo/{{ tz }}"}\n')
    entries: dict[str, Entry] = {}
    render_layer(layer, {"hostname": "left", "tz": "Europe/Berlin"}, entries)
    assert entries["etc/hostname"].data == b"left\n" and "etc/hostname.j2" not in entries
    assert (entries["etc/secret"].mode, entries["etc/secret"].gid) == (0o600, 42)
    assert entries["etc/localtime"].target == "/usr/share/zoneinfo/Europe/Berlin"
    assert "overlay.yaml" not in entries
    out = tmp_path / "o.tar"
    write_tar(entries, out)
    with tarfile.open(out) as tar:
        m = tar.getmember("./etc/secret")
        assert (m.mode, m.uid, m.gid) == (0o600, 0, 42)


def test_a_template_that_calls_skip_file_is_left_out(tmp_path: Path) -> None:
    for name in ("early", "late"):
        (tmp_path / name / "etc").mkdir(parents=True)
    (tmp_path / "early" / "etc" / "bond.conf").write_text("from an earlier layer\n")
    (tmp_path / "late" / "etc" / "bond.conf.j2").write_text("{% if not bonded %}{{ skip_file() }}{% endif %}bond\n")
    for bonded, want in ((True, b"bond\n"), (False, None)):
        entries: dict[str, Entry] = {}
        for name in ("early", "late"):
            render_layer(tmp_path / name, {"bonded": bonded}, entries)
        assert (entries["etc/bond.conf"].data if "etc/bond.conf" in entries else None) == want


def test_overlay_undefined_variable_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "l").mkdir()
    (tmp_path / "l" / "f.j2").write_text("{{ nope }}")
    with pytest.raises(OverlayError, match="nope"):
        render_layer(tmp_path / "l", {}, {})


def test_users_get_ids_groups_and_no_password_by_default() -> None:
    files, accounts = add_users({"etc/passwd": PASSWD, "etc/group": GROUP, "etc/shadow": "", "etc/gshadow": ""},
                                [{"name": "admin", "groups": ["sudo", "wheel"], "ssh_keys": ["ssh-ed25519 A x"]},
                                 {"name": "bob", "password_hash": "$y$j9T$abc", "groups": []}])
    assert "admin:x:1000:1000:admin:/home/admin:/bin/bash" in files["etc/passwd"]
    assert "bob:x:1001:1001:" in files["etc/passwd"]
    assert "sudo:x:27:admin" in files["etc/group"]
    assert "wheel:x:1002:admin" in files["etc/group"]
    assert "admin:!:" in files["etc/shadow"] and "bob:$y$j9T$abc:" in files["etc/shadow"]
    assert [a.uid for a in accounts] == [1000, 1001]


def test_layout_refuses_an_image_too_small(tmp_path: Path) -> None:
    f = tmp_path / "p"
    with open(f, "wb") as fh:
        fh.truncate(100 * 1024 * 1024)
    parts = [{"name": "ESP", "stage": "esp", "type": "T", "uuid": "u", "legacy_boot": True}]
    placed = layout(parts, {"esp": f}, 200 * 1024 * 1024)
    assert placed[0].start == 1024 * 1024
    assert 'attrs="LegacyBIOSBootable"' in sfdisk_script(placed, "d")
    with pytest.raises(ImageTooSmall, match="at least 102 MiB"):
        layout(parts, {"esp": f}, 100 * 1024 * 1024)


def test_debugfs_places_files_links_and_modes(tmp_path: Path) -> None:
    img = tmp_path / "img"
    with open(img, "wb") as f:
        f.truncate(64 * 1024 * 1024)
    fs = tmp_path / "fs"
    with open(fs, "wb") as f:
        f.truncate(32 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(fs)], check=True)
    with open(fs, "rb") as src, open(img, "r+b") as dst:
        dst.seek(1024 * 1024)
        dst.write(src.read())
    secret = tmp_path / "key"
    secret.write_text("PRIVATE\n")
    place(img, 1024 * 1024, [Put("/var/lib/x", "dir", 0o700, 5, 6), Put("/var/lib/x/key", "file", 0o600, src=secret),
                             Put("/etc/localtime", "link", target="/usr/share/zoneinfo/UTC")], tmp_path / "log")
    target = f"{img}?offset={1024 * 1024}"
    stat = subprocess.run(["debugfs", "-R", "stat /var/lib/x/key", target], capture_output=True, text=True).stdout
    assert "Mode:  0600" in stat and "User:     0" in stat
    d = subprocess.run(["debugfs", "-R", "stat /var/lib/x", target], capture_output=True, text=True).stdout
    assert "Mode:  0700" in d and "User:     5" in d
    assert subprocess.run(["debugfs", "-R", "cat /var/lib/x/key", target], capture_output=True,
                          text=True).stdout == "PRIVATE\n"
    # Placing again replaces (a rebuilt overlay over the same partition copy).
    secret.write_text("NEW\n")
    place(img, 1024 * 1024, [Put("/var/lib/x/key", "file", 0o600, src=secret)], tmp_path / "log")
    assert subprocess.run(["debugfs", "-R", "cat /var/lib/x/key", target], capture_output=True,
                          text=True).stdout == "NEW\n"


def test_build_of_a_bad_profile_exits_2_without_traceback(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("cluster: {name: x}\noses: {}\nroles: {}\nhosts: {}\nimages: {i: {type: disk}}\n")
    r = subprocess.run([sys.executable, "-m", "builder", "build", str(p), "--out", str(tmp_path / "o"),
                        "--cache-dir", str(tmp_path / "c")], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr


def test_json_reporter_writes_one_object_per_line() -> None:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        JsonReporter().done("rootfs:x", 1.5, False, "not built before", "k" * 64)
    ev = json.loads(buf.getvalue())
    assert ev["state"] == "built" and ev["stage"] == "rootfs:x"


def test_the_lan_file_matches_a_hosts_pinned_nic_else_every_port() -> None:
    data = load_profile(ROOT / "profiles" / "vesa-wall.yaml").data
    net = "etc/systemd/network/"
    rendered: dict[str | None, dict[str, str]] = {}
    for host in ("wall-2", "vault", None):
        entries: dict[str, Entry] = {}
        render_layer(ROOT / "overlays" / "base", template_context(data, "stable", "stick", host, [], "0"), entries)
        rendered[host] = {k.removeprefix(net): e.data.decode() for k, e in entries.items()
                          if k.startswith(net) and e.kind == "file"}
    wall2, vault, stick = rendered["wall-2"], rendered["vault"], rendered[None]
    assert "MACAddress=52:54:00:a1:00:02\n" in wall2["50-clusterctl-lan.network"]
    # The bond has the MAC of its active port: only Type=ether keeps it from matching the pin.
    assert all("Type=ether\n" in host["50-clusterctl-lan.network"] for host in rendered.values())
    assert "Name=" not in wall2["50-clusterctl-lan.network"]
    assert "MACAddress" not in vault["50-clusterctl-lan.network"]
    assert "Name=en* eth*" in vault["50-clusterctl-lan.network"]
    # A fixed address: the ports are members of the bond lan0, which alone holds the address.
    for host, address in ((wall2, "10.44.0.12/24"), (vault, "10.44.0.14/24")):
        ports, bond, netdev = (host[f] for f in ("50-clusterctl-lan.network", "50-clusterctl-lan0.network",
                                                  "50-clusterctl-lan0.netdev"))
        assert "Bond=lan0\n" in ports and "\nAddress=" not in ports and f"Address={address}\n" in bond
        assert "Kind=bond" in netdev and "Mode=active-backup" in netdev
    # The stick's own system asks DHCP on every port and has no bond.
    assert set(stick) == {"50-clusterctl-lan.network"}
    assert "DHCP=yes" in stick["50-clusterctl-lan.network"] and "Name=en* eth*" in stick["50-clusterctl-lan.network"]


def test_the_screens_keyboard_is_the_profiles_keymap() -> None:
    data = load_profile(ROOT / "profiles" / "vesa-wall.yaml").data
    data["cluster"]["keymap"] = "de"
    entries: dict[str, Entry] = {}
    render_layer(ROOT / "overlays" / "base", template_context(data, "stable", "stick", None, [], "0"), entries)
    unit = entries["etc/systemd/system/clusterctl-keymap.service"].data.decode()
    assert "ExecStart=/usr/bin/loadkeys de\n" in unit
    assert "Before=clusterctl-firstboot.service getty@tty1.service" in unit
    assert entries["etc/systemd/system/multi-user.target.wants/clusterctl-keymap.service"].kind == "link"


def test_a_kiosk_role_gets_the_manager_on_its_first_terminal_and_others_a_login() -> None:
    """roles.<role>.kiosk: manage: getty@tty1 runs ``clusterctl manage --viewer`` as the unprivileged
    clusterctl-kiosk user; every other host (and the stick's own system) keeps agetty there."""
    data = load_profile(ROOT / "profiles" / "laptop-display.yaml").data
    dropin = "etc/systemd/system/getty@tty1.service.d/clusterctl-kiosk.conf"
    kiosks = [h for h, d in data["hosts"].items() if data["roles"][d["role"]].get("kiosk") == "manage"]
    others = [h for h in data["hosts"] if h not in kiosks]
    assert kiosks and others
    for host in [*kiosks, *others, None]:
        entries: dict[str, Entry] = {}
        os_name = data["roles"][data["hosts"][host]["role"]]["os"][0] if host else next(iter(data["oses"]))
        render_layer(ROOT / "overlays" / "base", template_context(data, os_name, "stick", host, [], "0"), entries)
        text = entries[dropin].data.decode()
        lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
        if host in kiosks:
            assert "ExecStart=\n" in text and "ExecStart=/usr/bin/clusterctl manage --viewer\n" in text
            assert "User=clusterctl-kiosk\n" in text and "root" not in "".join(lines)
        else:
            assert lines == [], (host, lines)  # only comments: agetty as Debian ships it
        users = entries["usr/lib/sysusers.d/clusterctl-kiosk.conf"].data.decode()
        assert users.splitlines()[-1].split()[:2] == ["u", "clusterctl-kiosk"]
