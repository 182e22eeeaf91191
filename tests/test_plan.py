"""The build plan: which stages exist, how they are shared, and what changes their keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from builder.plan import PlanError, make_plan
from builder.profile import load_profile

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def _profile(n_hosts: int = 1, image_type: str = "disk", extra_overlay: str | None = None) -> dict:
    hosts = {f"h{i}": {"role": "node", "board": "vesa-mini-pc"} for i in range(n_hosts)}
    role: dict = {"os": ["stable", "rescue"]}
    stable: dict = {"suite": "bookworm"}
    if extra_overlay:
        stable["overlays"] = [extra_overlay]
    images = ({f"img-{h}": {"type": image_type, "host": h, "size": "4GiB"} for h in hosts}
              if image_type != "usb-installer" else {"stick": {"type": "usb-installer", "hosts": list(hosts)}})
    return {"cluster": {"name": "plantest", "network": {"lan": "10.9.0.0/24"}},
            "oses": {"stable": stable, "rescue": {"kind": "rescue"}},
            "roles": {"node": role}, "hosts": hosts, "images": images}


def test_example_plan_shares_roots_and_orders_dependencies() -> None:
    plan = make_plan(load_profile(ROOT / "profiles" / "dual-nano-itx.yaml"))
    names = list(plan.stages)
    rootfs = [n for n in names if n.startswith("rootfs:")]
    # bookworm (stable, which the rescue system reuses) and trixie: two mmdebstrap runs, not three.
    assert rootfs == ["rootfs:stable", "rootfs:next"]
    assert plan.stages["rescue:stick/rescue"].deps[0] == "rootfs:stable"
    for i, n in enumerate(names):
        assert all(names.index(d) < i for d in plan.stages[n].deps), n
    assert plan.images["stick"]["oses"] == ["stable", "next", "rescue"]
    assert plan.images["stick"]["output"].endswith("images/dualnano/stick.img")
    assert len({s.key for s in plan.ordered()}) == len(names)


def test_keys_are_stable_across_loads() -> None:
    p = ROOT / "profiles" / "vesa-wall.yaml"
    a, b = make_plan(load_profile(p)), make_plan(load_profile(p))
    assert {n: s.key for n, s in a.stages.items()} == {n: s.key for n, s in b.stages.items()}


@pytest.mark.parametrize("n", [1, 4, 16])
def test_hosts_sharing_an_os_share_one_root(tmp_path: Path, n: int) -> None:
    plan = make_plan(load_profile(_write(tmp_path, _profile(n))))
    assert [s.name for s in plan.ordered() if s.kind == "rootfs"] == ["rootfs:stable"]
    # One partition file too: each host's differences are written into its image's copy.
    assert [s.name for s in plan.ordered() if s.kind == "rootpart"] == ["rootpart:stable"]
    assert len([s for s in plan.ordered() if s.kind == "image"]) == n


def test_overlay_change_keeps_the_root_and_rebuilds_what_depends_on_it(tmp_path: Path) -> None:
    ov = tmp_path / "ov"
    (ov / "etc").mkdir(parents=True)
    (ov / "etc" / "motd").write_text("one\n")
    before = make_plan(load_profile(_write(tmp_path, _profile(1, extra_overlay=str(ov)))))
    (ov / "etc" / "motd").write_text("two\n")
    after = make_plan(load_profile(_write(tmp_path, _profile(1, extra_overlay=str(ov)))))
    changed = {n for n in before.stages if before.stages[n].key != after.stages[n].key}
    # Only the stable OS's overlay and the image it is written into: root, partition, ESP and
    # rescue system stay.
    assert changed == {"overlay:img-h0/stable", "image:img-h0"}
    assert before.stages["rootfs:stable"].key == after.stages["rootfs:stable"].key


def test_host_change_never_touches_the_root(tmp_path: Path) -> None:
    data = _profile(2)
    before = make_plan(load_profile(_write(tmp_path, data)))
    data["hosts"]["h1"]["address"] = "10.9.0.99"
    after = make_plan(load_profile(_write(tmp_path, data)))
    assert before.stages["rootfs:stable"].key == after.stages["rootfs:stable"].key
    assert before.stages["overlay:img-h1/stable"].key != after.stages["overlay:img-h1/stable"].key


def test_package_change_makes_a_new_root(tmp_path: Path) -> None:
    data = _profile(1)
    before = make_plan(load_profile(_write(tmp_path, data)))
    data["oses"]["stable"]["packages"] = ["openssh-server"]
    after = make_plan(load_profile(_write(tmp_path, data)))
    assert before.stages["rootfs:stable"].key != after.stages["rootfs:stable"].key
    assert "openssh-server" in after.stages["rootfs:stable"].inputs["packages"]


def test_unknown_image_is_a_plan_error() -> None:
    with pytest.raises(PlanError, match="no image named 'nope'"):
        make_plan(load_profile(ROOT / "profiles" / "vesa-wall.yaml"), only=["nope"])


def test_cloud_image_defaults_to_qcow2() -> None:
    plan = make_plan(load_profile(ROOT / "profiles" / "hybrid-cloud.yaml"))
    assert plan.images["edge"]["format"] == "qcow2"
    assert plan.images["edge"]["output"].endswith("edge.qcow2")
    # The cloud host's OS is the same bookworm definition as the stick's: one root for both.
    assert [s.name for s in plan.ordered() if s.kind == "rootfs"] == ["rootfs:stable", "rootfs:next"]
