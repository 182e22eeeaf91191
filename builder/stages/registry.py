"""Every stage kind: ``KINDS[name]`` is its :class:`~builder.stages.kind.StageKind`.

Each kind is declared in its own module (``KIND = StageKind(...)``), as osbuild's stages are
each their own program; this is the list of those modules (tests/test_stage_registry.py checks
that no module declaring a kind is missing from it). builder.plan reads versions and tools from
here, and builder.build runs ``KINDS[stage.kind].run``.
"""

from __future__ import annotations

from builder.stages import bootchain, claims, esp, image, isos, overlay, rescue, rootfs, rootpart
from builder.stages.kind import StageKind

MODULES = (rootfs, overlay, rootpart, rescue, bootchain, esp, isos, claims, image)


def _collect() -> dict[str, StageKind]:
    kinds: dict[str, StageKind] = {}
    for module in MODULES:
        kind = module.KIND
        if kind.name in kinds:
            raise ValueError(f"stage kind {kind.name!r} is declared twice ({module.__name__})")
        kinds[kind.name] = kind
    return kinds


KINDS: dict[str, StageKind] = _collect()
