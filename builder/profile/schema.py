"""JSON Schema for profiles and boards, derived from the field table (for editors and CI)."""

from __future__ import annotations

import json
from typing import Any

from builder.profile.fields import BOARD, PROFILE

DRAFT = "https://json-schema.org/draft/2020-12/schema"


def profile_schema() -> dict[str, Any]:
    return {"$schema": DRAFT, "$id": "https://clusterctl.invalid/schema/profile.json", **PROFILE.schema()}


def board_schema() -> dict[str, Any]:
    return {"$schema": DRAFT, "$id": "https://clusterctl.invalid/schema/board.json", **BOARD.schema()}


def schema_text(which: str = "profile") -> str:
    schema = profile_schema() if which == "profile" else board_schema()
    return json.dumps(schema, indent=2, sort_keys=False) + "\n"
