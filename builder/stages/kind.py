"""What a stage kind is: one declaration per kind, in that kind's module under builder/stages/.

Each module (rootfs.py, overlay.py, ...) holds ``KIND = StageKind(...)``: its name, the version
of its executor (part of every key of its stages: bump it when the executor starts making
different output from equal inputs), the tools whose versions join its stages' inputs, and
``run``, its executor. Every executor has the one shape

    run(ctx, stage, work, log) -> (record, output file or None)

``ctx`` (a :class:`StageContext`) is what the Builder lends: the results of the stages built
so far, the profile's data, where images and secrets go, RAM scratch space, the on-host
version, and a sink for the stage's output lines. ``work`` is an empty folder the stage may
fill (removed after), ``log`` the stage's log file. The output file is moved into the cache;
the record (JSON) is kept beside it. builder/stages/registry.py finds the kinds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from agent.stickseal import StickKey
from builder.tools import LineSink

if TYPE_CHECKING:
    from builder.plan import Stage

Record = dict[str, Any]


def file_sha256(path: Path) -> str:
    """A stage output's sha256 (hex), for its record and the manifest."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class StageOutput(Protocol):
    """A built (or reused) stage, as later stages see it (builder.build.Result has these)."""

    stage: Stage
    record: dict[str, Any]
    path: Path | None


@dataclass
class StageContext:
    """What the Builder gives every executor (one per build)."""

    results: Mapping[str, StageOutput]  # stage name -> its result (dependencies first)
    data: dict[str, Any]  # the resolved profile
    profile_name: str
    out_dir: Path  # images/ (secrets and identities live under it, per cluster)
    cluster_dir: Path  # images/<cluster>/
    version: str  # the on-host code's version (builder.plan.onhost_version)
    onhost: dict[str, Path]  # the on-host packages copied into every root, by name (builder.plan)
    ram_scratch: Callable[[], Path | None] = lambda: None  # an empty folder in RAM, when there is room
    sink: Callable[[str], LineSink | None] = lambda name: None  # a stage's output lines, by stage name
    stick_key: StickKey | None = None  # seals the hosts' secrets on usb-installer sticks (passphrase)

    def dep(self, stage: Stage, kind: str) -> StageOutput:
        """The result of the stage's dependency of ``kind``."""
        return next(self.results[d] for d in stage.deps if self.results[d].stage.kind == kind)

    def on_line(self, stage: Stage) -> LineSink | None:
        return self.sink(stage.name)


Executor = Callable[[StageContext, "Stage", Path, Path], tuple[Record, Path | None]]


@dataclass(frozen=True)
class StageKind:
    name: str
    version: int  # the executor's version, part of the key of every stage of this kind
    tools: tuple[str, ...]  # tools whose versions are inputs of every stage of this kind
    run: Executor
    # Optional hooks: tools a given stage needs besides ``tools``, and more inputs (content
    # digests of files on the build machine the output is made from).
    extra_tools: Callable[[Stage], list[str]] | None = None
    extra_inputs: Callable[[Stage], dict[str, Any]] | None = None
    # Whether a stage's result is there to reuse; by default, when the cache holds its key.
    is_current: Callable[[Any, Stage], bool] | None = None

    def tools_for(self, stage: Stage) -> list[str]:
        return [*self.tools, *(self.extra_tools(stage) if self.extra_tools else [])]

    def inputs_for(self, stage: Stage) -> dict[str, Any]:
        return self.extra_inputs(stage) if self.extra_inputs else {}

    def current(self, cache: Any, stage: Stage) -> bool:
        return self.is_current(cache, stage) if self.is_current else bool(cache.has(stage.key))
