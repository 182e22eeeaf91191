"""Lay out /etc/clusterctl for a few hosts of one cluster (tests, and trying the agent by hand):
host.json, profile.json and identity/ (with hosts.json) per host, as a build would."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from agent.identity import REGISTER, init_ca, issue_host, write_host_identity


def make_cluster(base: Path, cluster: str, hosts: dict[str, str], roles: dict[str, dict[str, Any]],
                 fusion: dict[str, Any] | None = None, lan: dict[str, str] | None = None) -> dict[str, Path]:
    """``hosts``: name -> role; ``roles``: role -> {"exports": {name: path}}. Returns each host's
    etc folder (base/<host>/etc). The CA lives in base/ca."""
    base = Path(base)
    ca, _ = init_ca(base / "ca", cluster)
    idents = {h: issue_host(ca, h) for h in hosts}
    register = json.loads((base / "ca" / REGISTER).read_text())["hosts"]
    profile = {"cluster": {"name": cluster, "fusion": {"namespace": "/n", "port": 564, "seeds": [],
                                                       **(fusion or {})}},
               "roles": roles,
               "hosts": {h: {"role": r, **({"address": lan[h]} if lan and h in lan else {})}
                         for h, r in hosts.items()}}
    out = {}
    for h, role in hosts.items():
        etc = base / h / "etc"
        etc.mkdir(parents=True)
        (etc / "host.json").write_text(json.dumps({"host": h, "role": role, "cluster": cluster,
                                                   "address": (lan or {}).get(h)}))
        (etc / "profile.json").write_text(json.dumps(profile))
        os.chmod(etc / "profile.json", 0o640)
        write_host_identity(idents[h], etc / "identity")
        (etc / "identity" / "hosts.json").write_text(json.dumps(register, indent=1))
        out[h] = etc
    return out
