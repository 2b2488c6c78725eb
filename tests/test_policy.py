"""Policy files: the shipped policies load, and the schema rejects bad files with a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rag.errors import PolicyInvalidError
from rag.policy import load_policy, policy_json_schema

POLICIES = Path(__file__).resolve().parents[1] / "policies"

VALID = """\
name: tiny
entities: [PERSON, EMAIL_ADDRESS]
operators:
  PERSON: {type: hash}
thresholds: {default: 0.5, PERSON: 0.7}
allow_list: [Enclave]
recognizers:
  - name: staff_id
    entity: PERSON
    patterns: [{name: id, regex: 'EMP-\\d{5}', score: 0.8}]
    context: [employee]
"""


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["default", "hipaa", "pci"])
def test_shipped_policies_load_and_hash_their_bytes(name: str) -> None:
    policy = load_policy(name, POLICIES)
    assert policy.name == name
    assert len(policy.content_hash) == 64
    assert {"PERSON", "CREDIT_CARD", "US_SSN", "EMAIL_ADDRESS"} <= set(policy.entities)


def test_content_hash_is_sha256_of_file_bytes(tmp_path: Path) -> None:
    import hashlib

    path = write(tmp_path, VALID)
    policy = load_policy(str(path), tmp_path)
    assert policy.content_hash == hashlib.sha256(path.read_bytes()).hexdigest()
    assert policy.operator_for("PERSON").kind == "hash"
    assert policy.operator_for("EMAIL_ADDRESS").kind == "replace"
    assert policy.threshold_for("PERSON") == 0.7
    assert policy.threshold_for("EMAIL_ADDRESS") == 0.5


def test_editing_a_base_policy_changes_the_hash_of_the_policy_extending_it(tmp_path: Path) -> None:
    write(tmp_path, VALID, "base.yaml")
    write(tmp_path, "name: child\nextends: base\nentities: [US_SSN]\n", "child.yaml")
    before = load_policy("child", tmp_path)
    assert set(before.entities) == {"PERSON", "EMAIL_ADDRESS", "US_SSN"}
    assert before.operator_for("PERSON").kind == "hash"
    write(tmp_path, VALID.replace("0.7", "0.8"), "base.yaml")
    assert load_policy("child", tmp_path).content_hash != before.content_hash


@pytest.mark.parametrize(("text", "fragment"), [
    ("name: x\nentities: []\n", "entities"),
    ("name: x\nentities: [person]\n", "UPPER_SNAKE_CASE"),
    ("name: x\nentities: [PERSON]\noperators: {PERSON: {type: shred}}\n", "operators.PERSON.type"),
    ("name: x\nentities: [PERSON]\noperators: {US_SSN: {type: mask}}\n", "not in entities"),
    ("name: x\nentities: [PERSON]\nthresholds: {PERSON: 1.5}\n", "within [0, 1]"),
    ("name: x\nentities: [PERSON]\nunknown_key: 1\n", "unknown_key"),
    ("name: x\nentities: [PERSON]\nrecognizers: [{name: r, entity: PERSON, patterns: "
     "[{name: p, regex: '([a-z', score: 0.5}]}]\n", "does not compile"),
    ("name: x\nentities: [PERSON]\nrecognizers: [{name: r, entity: MRN, patterns: "
     "[{name: p, regex: 'x', score: 0.5}]}]\n", "not in entities"),
    ("- just\n- a list\n", "mapping"),
    ("name: [unclosed\n", "not valid YAML"),
])
def test_schema_violation_raises_policy_invalid_naming_the_problem(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PolicyInvalidError) as info:
        load_policy(str(path), tmp_path)
    assert fragment in str(info.value)


def test_missing_policy_raises_policy_invalid_listing_known_ones() -> None:
    with pytest.raises(PolicyInvalidError, match="default"):
        load_policy("no-such-policy", POLICIES)


def test_policy_name_cannot_escape_the_policies_directory() -> None:
    with pytest.raises(PolicyInvalidError, match="not a plain name"):
        load_policy("../no-such-dir/x", POLICIES)


def test_schema_json_matches_the_pydantic_model() -> None:
    on_disk = json.loads((POLICIES / "schema.json").read_text(encoding="utf-8"))
    assert on_disk == json.loads(json.dumps(policy_json_schema())), "regenerate with: python -m rag.policy"
