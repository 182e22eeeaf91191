"""core.model: the resolved profile as one typed model, and host code reading profile.json through it."""

from __future__ import annotations

import copy
import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import pytest

from builder.profile import load_profile
from core import model as m
from core.model import ModelError, Profile
from tests.hwfixtures import load_inventory

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "profiles").glob("*.yaml"))


@pytest.fixture(scope="module")
def dual() -> dict[str, Any]:
    return load_profile(ROOT / "profiles" / "dual-nano-itx.yaml").data


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_round_trip_is_exact(path: Path) -> None:
    data = load_profile(path).data
    model = Profile.from_json(data)
    assert model.to_json() == data
    # profile.json's bytes, as the builder wrote them before the model existed.
    assert model.dumps() == json.dumps(data, indent=1, sort_keys=True)
    assert Profile.from_json(model.dumps()) == model
    assert Profile.from_json(model.dumps().encode()) == model


def test_model_is_frozen_and_typed(dual: dict[str, Any]) -> None:
    model = Profile.from_json(dual)
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.cluster.name = "other"  # type: ignore[misc]
    assert isinstance(model.cluster.fusion, m.Fusion) and model.cluster.fusion.port == 564
    assert model.cluster.fusion.namespace == "/n"
    assert isinstance(model.hosts["left"], m.Host) and isinstance(model.cluster.users[0], m.User)
    assert model.roles["desktop"].os == ("stable", "next", "rescue")
    assert model.oses["stable"].suite == "bookworm" and model.oses["next"].suite == "trixie"


def test_no_default_restates_the_field_table() -> None:
    """Defaults live in builder/profile/fields.py only: a model field either is required or is
    absent (None) when the table leaves it out."""
    for cls in (m.User, m.Network, m.Fusion, m.Cluster, m.OsDef, m.Volume, m.Role, m.Install, m.Host, m.Image,
                m.Profile):
        for f in dataclasses.fields(cls):
            assert f.default is dataclasses.MISSING or f.default is None, (cls.__name__, f.name)
            assert f.default_factory is dataclasses.MISSING, (cls.__name__, f.name)


def test_a_field_the_table_always_fills_is_required(dual: dict[str, Any]) -> None:
    for where, key in [("cluster", "locale"), ("cluster.fusion", "port"), ("oses.stable", "suite"),
                       ("oses.stable", "mirror"), ("hosts.left.install", "disk"), ("images.stick", "format")]:
        doc = copy.deepcopy(dual)
        node = doc
        for step in where.split("."):
            node = node[step]
        del node[key]
        with pytest.raises(ModelError, match=rf"^{where}: missing '{key}'$"):
            Profile.from_json(doc)


def test_image_hosts_is_always_a_list() -> None:
    model = load_profile(ROOT / "profiles" / "hybrid-cloud.yaml").model
    assert model.images["edge"].hosts == ("edge-1",) and not model.images["edge"].installer
    assert model.images["stick"].hosts == ("den", "closet") and model.images["stick"].installer
    assert model.images["edge"].to_json()["host"] == "edge-1" and "hosts" not in model.images["edge"].to_json()
    assert model.image_hosts() == ["closet", "den", "edge-1"]
    assert model.oses_of_image("stick") == ["stable", "next", "rescue"]
    assert model.hosts["den"].install_disk == {"type": "nvme", "wipe": False}


def test_builder_profile_gives_the_model_once(dual: dict[str, Any]) -> None:
    loaded = load_profile(ROOT / "profiles" / "dual-nano-itx.yaml")
    assert loaded.model is loaded.model
    assert loaded.model.to_json() == loaded.data == dual


@pytest.mark.parametrize(("damage", "message"), [
    (lambda d: d.pop("hosts"), r"^profile: missing 'hosts'$"),
    (lambda d: d.update(extra=1), r"^profile: unknown key 'extra'$"),
    (lambda d: d["cluster"].update(name=3), r"^cluster\.name: expected a string, got a number$"),
    (lambda d: d["cluster"]["fusion"].update(port="564"), r"^cluster\.fusion\.port: expected a whole number"),
    (lambda d: d["cluster"].update(unattended="yes"), r"^cluster\.unattended: expected true or false"),
    (lambda d: d["hosts"]["left"].update(role="nope"), r"^hosts\.left\.role: no role 'nope'$"),
    (lambda d: d["hosts"]["left"].update(match=["x"]), r"^hosts\.left\.match: expected an object, got a list$"),
    (lambda d: d["roles"]["desktop"].update(os="stable"), r"^roles\.desktop\.os: expected a list of strings"),
    (lambda d: d["roles"]["desktop"]["exports"].update(x=1), r"^roles\.desktop\.exports\.x: expected a string"),
    (lambda d: d["oses"]["stable"].update(kind="windows"), r"^oses\.stable\.kind: expected system, rescue or iso"),
    (lambda d: d["oses"]["stable"].update(path="/x.iso"), r"^oses\.stable\.path: applies only when kind is iso$"),
    (lambda d: d["images"]["stick"].update(host="left"), r"^images\.stick\.host: applies only to disk and cloud"),
    (lambda d: d["images"]["stick"].update(hosts=["left", "ghost"]), r"^images\.stick: no host 'ghost'$"),
    (lambda d: d["cluster"]["users"][0].pop("shell"), r"^cluster\.users\[0\]: missing 'shell'$"),
])
def test_from_json_rejects_a_malformed_document(dual: dict[str, Any], damage: Any, message: str) -> None:
    doc = copy.deepcopy(dual)
    damage(doc)
    with pytest.raises(ModelError, match=message):
        Profile.from_json(doc)


def test_from_json_rejects_what_is_not_a_profile() -> None:
    with pytest.raises(ModelError, match="not JSON"):
        Profile.from_json("{not json")
    with pytest.raises(ModelError, match=r"^profile: expected an object, got a list$"):
        Profile.from_json("[]")


def test_iso_os_round_trips_without_the_debian_keys(dual: dict[str, Any], tmp_path: Path) -> None:
    doc = copy.deepcopy(dual)
    doc["oses"]["live"] = {"kind": "iso", "path": str(tmp_path / "live.iso"), "label": "Live"}
    model = Profile.from_json(doc)
    assert model.to_json() == doc
    live = model.oses["live"]
    assert not live.is_debian and live.suite is None and live.packages is None and live.title("live") == "Live"
    assert model.oses["rescue"].title("rescue") == "rescue (Debian bookworm, runs from RAM)"


# --- host code reads profile.json through the model ------------------------------------------


@pytest.fixture
def profile_json(tmp_path: Path, dual: dict[str, Any]) -> Path:
    path = tmp_path / "profile.json"
    path.write_text(Profile.from_json(dual).dumps())
    return path


def test_wizard_reads_profile_json_as_the_model(profile_json: Path, dual: dict[str, Any]) -> None:
    from hardware.wizard import Wizard

    model = Profile.read(str(profile_json))
    assert isinstance(model, Profile) and model.to_json() == dual
    inv = load_inventory("nano-itx-desktop")
    wiz = Wizard(model, inv, console=_quiet_console(), events=io.StringIO())
    assert wiz.unattended is False and wiz.oses_of("desktop") == ["stable", "next", "rescue"]
    assert wiz.describe_oses(["stable", "rescue"]) == "stable (debian bookworm, default), rescue (rescue)"
    assert wiz.disk_for("left").disk is not None
    # A dict (the JSON) is read into the model too.
    assert Wizard(dual, inv, console=_quiet_console(), events=io.StringIO()).profile == model


def test_a_malformed_profile_json_stops_the_wizard(tmp_path: Path, dual: dict[str, Any],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    doc = copy.deepcopy(dual)
    del doc["hosts"]["left"]["install"]
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ModelError, match=r"profile\.json: hosts\.left: missing 'install'"):
        Profile.read(str(path))
    # The wizard's command says so in a line and exits 2, no traceback.
    from agent.firstboot.__main__ import main as firstboot_main
    from core import exitcodes

    assert firstboot_main(["wizard", "--profile", str(path), "--inventory",
                           str(ROOT / "tests/fixtures/inventory/storage-box.json")]) == exitcodes.USAGE
    err = capsys.readouterr().err
    assert "hosts.left: missing 'install'" in err and "Traceback" not in err


def test_firstboot_reads_profile_json_as_the_model(tmp_path: Path, dual: dict[str, Any],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from agent.firstboot.__main__ import main as firstboot_main
    from agent.firstboot.flow import forced_decision
    from core import exitcodes
    from core.events import parse_line

    model = Profile.from_json(dual)
    out = io.StringIO()
    decision = forced_decision(model, load_inventory("storage-box"), "right", out)
    assert decision is not None and decision.host == "right" and decision.role == "storage"
    assert decision.oses == ["stable", "rescue"]
    with pytest.raises(LookupError, match="hosts: left, right"):
        forced_decision(model, load_inventory("storage-box"), "ghost", out)
    # A profile.json that is not a resolved profile is a usage error naming the key.
    doc = copy.deepcopy(dual)
    doc["cluster"]["fusion"]["port"] = "x"
    (tmp_path / "profile.json").write_text(json.dumps(doc))
    (tmp_path / "cmdline").write_text("quiet\n")
    rc = firstboot_main(["run", "--cmdline", str(tmp_path / "cmdline"), "--profile", str(tmp_path / "profile.json"),
                     "--facts", str(tmp_path / "none.json"), "--work", str(tmp_path / "work"), "--dry-run"])
    events = [e for e in map(parse_line, capsys.readouterr().out.splitlines()) if e]
    assert rc == exitcodes.USAGE
    assert events[-1]["event"] == "error" and "cluster.fusion.port: expected a whole number" in events[-1]["message"]


def test_match_judges_the_model_as_the_json(dual: dict[str, Any]) -> None:
    from hardware.match import indistinguishable_hosts, rank

    model = Profile.from_json(dual)
    for shape in ("nano-itx-desktop", "storage-box", "laptop", "mini-pc-two-disks", "cloud-vm"):
        inv = load_inventory(shape)
        assert rank(model, inv).as_dict() == rank(dual, inv).as_dict()
    assert indistinguishable_hosts(model, ["left", "right"]) == indistinguishable_hosts(dual, ["left", "right"]) == []


def test_agent_config_reads_fusion_from_the_model(tmp_path: Path) -> None:
    from agent.mesh import config
    from testdriver.mesh_etc import make_cluster

    etcs = make_cluster(tmp_path, "lab", {"a": "store"}, {"store": {"exports": {"d": "/srv/d"}}},
                        fusion={"port": 5640})
    cfg = config.load(etcs["a"])
    assert (cfg.port, cfg.namespace, cfg.seeds, cfg.exports) == (5640, Path("/n"), [], {"d": "/srv/d"})
    (etcs["a"] / "profile.json").write_text(json.dumps({"roles": {}}))
    with pytest.raises(config.ConfigError, match=r"profile\.json: profile: missing 'cluster'"):
        config.load(etcs["a"])


def test_overlay_writes_profile_json_through_the_model(dual: dict[str, Any], tmp_path: Path) -> None:
    import tarfile

    from builder.stages.overlay import build_overlay

    params = {"os_name": "stable", "image_name": "stick", "single_host": None, "hosts": ["left", "right"],
              "installer": True, "root_layers": [], "host_layers": {}}
    accounts = {"etc/passwd": "root:x:0:0:root:/root:/bin/bash\n", "etc/group": "root:x:0:\nsudo:x:27:\n"}
    for profile in (dual, Profile.from_json(dual)):
        out = tmp_path / "overlay.tar"
        build_overlay(profile, params, accounts, {}, "0", out)
        with tarfile.open(out) as tar:
            member = tar.extractfile("./etc/clusterctl/profile.json")
            assert member is not None
            written = member.read()
        assert written == json.dumps(dual, indent=1, sort_keys=True).encode()
        assert Profile.from_json(written) == Profile.from_json(dual)
    broken = copy.deepcopy(dual)
    del broken["cluster"]["keymap"]
    with pytest.raises(ModelError, match="cluster: missing 'keymap'"):
        build_overlay(broken, params, accounts, {}, "0", tmp_path / "broken.tar")


def _quiet_console() -> Any:
    from rich.console import Console

    return Console(file=io.StringIO(), highlight=False)
