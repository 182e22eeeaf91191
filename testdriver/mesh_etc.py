"""Lay out /etc/clusterctl for a few hosts of one cluster (tests, and trying the agent by hand):
host.json, profile.json and identity/ (with hosts.json) per host, as a build would."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from agent.identity import REGISTER, init_ca, issue_host, write_host_identity
from builder.profile import load_profile


def make_cluster(base: Path, cluster: str, hosts: dict[str, str], roles: dict[str, dict[str, Any]],
                 fusion: dict[str, Any] | None = None, lan: dict[str, str] | None = None) -> dict[str, Path]:
    """``hosts``: name -> role; ``roles``: role -> {"exports": {name: path}}. Returns each host's
    etc folder (base/<host>/etc). The CA lives in base/ca; the profile, as written, in base/profile.yaml."""
    base = Path(base)
    ca, _ = init_ca(base / "ca", cluster)
    idents = {h: issue_host(ca, h) for h in hosts}
    register = json.loads((base / "ca" / REGISTER).read_text())["hosts"]
    # The resolved profile exactly as a build writes it: the field table fills every default.
    raw = {"cluster": {"name": cluster, "fusion": dict(fusion or {})}, "oses": {"stable": {}},
           "roles": {r: {"os": ["stable"], **spec} for r, spec in roles.items()},
           "hosts": {h: {"role": r, "board": "cloud-vm", **({"address": lan[h]} if lan and h in lan else {})}
                     for h, r in hosts.items()}}
    (base / "profile.yaml").write_text(yaml.safe_dump(raw))
    profile_json = load_profile(base / "profile.yaml").model.dumps()
    out = {}
    for h, role in hosts.items():
        etc = base / h / "etc"
        etc.mkdir(parents=True)
        (etc / "host.json").write_text(json.dumps({"host": h, "role": role, "cluster": cluster,
                                                   "address": (lan or {}).get(h)}))
        (etc / "profile.json").write_text(profile_json)
        os.chmod(etc / "profile.json", 0o640)
        write_host_identity(idents[h], etc / "identity")
        (etc / "identity" / "hosts.json").write_text(json.dumps(register, indent=1))
        out[h] = etc
    return out
