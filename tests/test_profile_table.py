"""The field table drives the docs and the JSON Schema: both must match it exactly."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from builder.profile.docs import _records, render_docs
from builder.profile.fields import BOARD, PROFILE
from builder.profile.schema import board_schema, profile_schema

ROOT = Path(__file__).resolve().parents[1]


def test_committed_docs_are_the_rendered_table() -> None:
    committed = (ROOT / "docs" / "profile.md").read_text()
    assert committed == render_docs(), "docs/profile.md is stale: run 'clusterctl docs -o docs/profile.md'"


@pytest.mark.parametrize("root", [PROFILE, BOARD], ids=["profile", "board"])
def test_every_field_is_documented_and_in_the_schema(root) -> None:  # type: ignore[no-untyped-def]
    docs = render_docs()
    for _path, rec in _records(root):
        assert f"### {rec.title}" in docs
        for f in rec.fields:
            assert f"| `{f.name}` |" in docs, f"{rec.title}.{f.name} missing from docs"
    schema_text = str(profile_schema() if root is PROFILE else board_schema())
    for _path, rec in _records(root):
        for f in rec.fields:
            assert f"'{f.name}'" in schema_text


def test_schema_is_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(profile_schema())
    jsonschema.Draft202012Validator.check_schema(board_schema())


@pytest.mark.parametrize("path", sorted((ROOT / "profiles").glob("*.yaml")), ids=lambda p: p.stem)
def test_schema_accepts_examples(path: Path) -> None:
    jsonschema.validate(yaml.safe_load(path.read_text()), profile_schema())


@pytest.mark.parametrize("path", sorted((ROOT / "testdriver" / "boards").glob("*.yaml")), ids=lambda p: p.stem)
def test_schema_accepts_boards(path: Path) -> None:
    jsonschema.validate(yaml.safe_load(path.read_text()), board_schema())


def test_schema_rejects_what_the_validator_rejects() -> None:
    data = yaml.safe_load((ROOT / "profiles" / "dual-nano-itx.yaml").read_text())
    data["cluster"]["netwrk"] = {}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, profile_schema())
    data = yaml.safe_load((ROOT / "profiles" / "dual-nano-itx.yaml").read_text())
    data["oses"]["stable"]["suite"] = "bookwrm"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, profile_schema())
