"""``clusterctl plan`` shows images, hosts, OSes and the stages with their keys, before any build."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builder.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _plan(capsys: pytest.CaptureFixture[str], profile: str, tmp_path: Path) -> dict:
    assert main(["plan", str(ROOT / "profiles" / profile), "--json", "--cache-dir", str(tmp_path / "cache")]) == 0
    return json.loads(capsys.readouterr().out)


def test_plan_json_lists_images_hosts_oses_and_stages(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    plan = _plan(capsys, "dual-nano-itx.yaml", tmp_path)
    assert plan["cluster"] == "dualnano"
    (stick,) = plan["images"]
    assert stick["image"] == "stick" and stick["path"] == "images/dualnano/stick.img"
    assert {h["host"]: h["os"] for h in stick["hosts"]} == {"left": ["stable", "next", "rescue"],
                                                           "right": ["stable", "rescue"]}
    names = [s["name"] for s in plan["stages"]]
    # one root file system per distinct OS, shared by both hosts of the stick
    assert sorted(n for n in names if n.startswith("rootfs:")) == ["rootfs:next", "rootfs:stable"]
    assert all(not s["cached"] for s in plan["stages"])  # an empty cache holds nothing
    assert len({s["key"] for s in plan["stages"]}) == len(plan["stages"])


def test_plan_keys_are_stable_and_follow_inputs(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    first = {s["name"]: s["key"] for s in _plan(capsys, "dual-nano-itx.yaml", tmp_path)["stages"]}
    again = {s["name"]: s["key"] for s in _plan(capsys, "dual-nano-itx.yaml", tmp_path)["stages"]}
    assert first == again
    changed = (ROOT / "profiles" / "dual-nano-itx.yaml").read_text().replace("timezone: Europe/Berlin",
                                                                           "timezone: Europe/Paris")
    (tmp_path / "p.yaml").write_text(changed)
    other = {s["name"]: s["key"] for s in _plan(capsys, str(tmp_path / "p.yaml"), tmp_path)["stages"]}
    # a time-zone change touches overlays and what depends on them, never the mmdebstrap roots
    assert other["rootfs:stable"] == first["rootfs:stable"] and other["rootfs:next"] == first["rootfs:next"]
    assert other["overlay:stick/stable"] != first["overlay:stick/stable"]
    assert other["image:stick"] != first["image:stick"]


def test_plan_of_an_invalid_profile_exits_2(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("cluster: {}\n")
    assert main(["plan", str(tmp_path / "p.yaml")]) == 2


def test_plan_table_renders(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["plan", str(ROOT / "profiles" / "hybrid-cloud.yaml"), "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "edge-1" in out and "cloud" in out and "rootfs:stable" in out
