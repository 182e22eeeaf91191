"""The membership table: every host of the cluster's register, whether it is online here, and
where it is mounted. The agent keeps it in /run/clusterctl/members.json (written atomically on
every change) for ``clusterctl status``, and lays it out as <namespace>/cluster: a symlink to
/run/clusterctl/cluster, which holds one JSON file per online member (this host included).
/run is a tmpfs, so nothing of it outlives a reboot; a stopped agent leaves its pid behind, so
status can tell a stale table from a live one.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from agent.mesh.config import AgentConfig

RUN = Path("/run/clusterctl")
TABLE = "members.json"
CLUSTER_DIR = "cluster"


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        os.fchmod(f.fileno(), mode)
    os.replace(tmp, path)


class Membership:
    def __init__(self, cfg: AgentConfig, run_dir: Path = RUN) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.started = time.time()
        self.entries: dict[str, dict[str, Any]] = {}
        for name, m in sorted(cfg.members.items()):
            me = name == cfg.host
            self.entries[name] = {
                "host": name, "role": m.role, "mesh": str(m.mesh), "lan": m.lan,
                "exports": dict(m.exports), "board": m.board, "oses": list(m.oses), "self": me, "online": me,
                "state": "self" if me else "unknown",
                "path": None if me else str(cfg.namespace / name), "endpoint": None, "since": self.started,
                "reason": None,
            }

    def update(self, name: str, **fields: Any) -> None:
        entry = self.entries.get(name)
        if entry is None:
            return
        if "state" in fields and fields["state"] != entry["state"]:
            entry["since"] = time.time()
        entry.update(fields)
        self.write()

    def snapshot(self) -> dict[str, Any]:
        return {"cluster": self.cfg.cluster, "host": self.cfg.host, "pid": os.getpid(), "started": self.started,
                "updated": time.time(), "namespace": str(self.cfg.namespace),
                "members": [dict(e) for e in self.entries.values()]}

    def write(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.run_dir / TABLE, (json.dumps(self.snapshot(), indent=1) + "\n").encode())
        cdir = self.run_dir / CLUSTER_DIR
        cdir.mkdir(exist_ok=True)
        online = {n: e for n, e in self.entries.items() if e["online"]}
        for name, entry in online.items():
            write_atomic(cdir / name, (json.dumps(entry, indent=1) + "\n").encode())
        for old in cdir.iterdir():
            if old.name not in online and not old.name.startswith("."):
                with contextlib.suppress(FileNotFoundError):
                    old.unlink()

    def link_namespace(self) -> None:
        """<namespace>/cluster -> /run/clusterctl/cluster (an empty folder there is replaced)."""
        link = self.cfg.namespace / CLUSTER_DIR
        target = self.run_dir / CLUSTER_DIR
        self.cfg.namespace.mkdir(parents=True, exist_ok=True)
        if link.is_symlink():
            if os.readlink(link) == str(target):
                return
            link.unlink()
        elif link.is_dir():
            link.rmdir()  # OSError if it holds something: not ours to remove
        os.symlink(target, link)


def read_table(run_dir: Path = RUN) -> dict[str, Any]:
    with open(Path(run_dir) / TABLE, encoding="utf-8") as f:
        return dict(json.load(f))


def agent_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
