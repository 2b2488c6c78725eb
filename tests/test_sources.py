"""sources.yaml: schema, ${ENV} indirection, typed errors, and the connectors it builds."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from connectors.base import AccessRule
from connectors.filesystem import FileShareSource
from connectors.s3 import ObjectStoreSource
from connectors.sql import DatabaseSource
from rag.config import Settings
from rag.errors import ConfigurationError, SourcesInvalidError
from rag.sources import (
    SCHEMA_PATH,
    SourceContext,
    load_sources,
    open_connector,
    parse_sources,
    sources_json_schema,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "infra" / "sources.example.yaml"
POLICIES = ROOT / "policies"
ENV = {"EHR_DATABASE_URL": "postgresql+psycopg://reader:ehr-pw-1@ehr.internal/ehr",
       "HELPDESK_DATABASE_URL": "mysql+pymysql://reader:hd-pw-2@helpdesk.internal/helpdesk",
       "LETTERS_ACCESS_KEY": "letters-key", "LETTERS_SECRET_KEY": "letters-secret-3"}


def parse(text: str, environ: dict[str, str] | None = None, **kw: Any) -> Any:
    return parse_sources(textwrap.dedent(text).encode(), "test.yaml", environ=environ, **kw)


def test_example_file_is_valid_and_builds_each_kind(tmp_path: Path) -> None:
    jsonschema.validate(yaml.safe_load(EXAMPLE.read_text()), json.loads(SCHEMA_PATH.read_text()))
    declared = load_sources(EXAMPLE, environ=ENV, policies_dir=POLICIES)
    assert declared.names == ["records", "discharge-notes", "helpdesk", "letters"]
    context = SourceContext(tenant_key=b"k", state_dir=tmp_path / "sources")
    built = {s.name: open_connector(s, context) for s in declared.sources}
    assert isinstance(built["records"], FileShareSource) and isinstance(built["letters"], ObjectStoreSource)
    notes = built["discharge-notes"]
    assert isinstance(notes, DatabaseSource)
    assert notes.settings.url.get_secret_value() == ENV["EHR_DATABASE_URL"]
    assert (tmp_path / "sources" / "discharge-notes.hashes.sqlite").is_file()
    assert declared.get("records").default_rule() == AccessRule(groups=frozenset({"clinicians"}))
    # what the catalog would record as the location holds no password
    assert declared.get("discharge-notes").location == "postgresql://ehr.internal/ehr"


def test_schema_file_is_generated_from_the_model() -> None:
    assert json.loads(SCHEMA_PATH.read_text()) == sources_json_schema(), "run: python -m rag.sources"


def test_schema_admits_an_unknown_kind_only_as_a_plugin_not_a_broken_built_in() -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    broken_sql = {"sources": [{"name": "x", "kind": "sql", "settings": {"query": "SELECT 1"}}]}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken_sql, schema)
    jsonschema.validate({"sources": [{"name": "x", "kind": "sharepoint", "settings": {"site": "s"}}]}, schema)


def test_missing_environment_variable_is_named_and_no_value_is_shown() -> None:
    text = """
        sources:
          - name: letters
            kind: s3
            settings: {bucket: letters, access_key_id: "${KEY_ID}", secret_access_key: "${SECRET}"}
    """
    with pytest.raises(SourcesInvalidError, match=r"sources\[0\]\(letters\)\.settings\.secret_access_key.*SECRET"):
        parse(text, {"KEY_ID": "visible-key-id"})
    try:
        parse(text.replace("bucket: letters", "bucket: 'bad bucket!'"), {"KEY_ID": "key-value-9", "SECRET": "sec-8"})
    except SourcesInvalidError as exc:
        assert "sources[0](letters).settings.bucket" in str(exc)
        assert "sec-8" not in str(exc) and "key-value-9" not in str(exc) and "bad bucket" not in str(exc)
    else:
        pytest.fail("an invalid bucket name was accepted")


def test_only_secret_and_endpoint_fields_are_expanded() -> None:
    declared = parse("""
        sources:
          - name: invoices
            kind: sql
            default_access: {public: true}
            settings:
              url: "${DB}"
              query: SELECT id, amount FROM invoices
              id_columns: [id]
              template: "Amount: ${amount}"
    """, {"DB": "sqlite:///x.db"})
    settings = declared.get("invoices").settings
    assert settings.url.get_secret_value() == "sqlite:///x.db" and settings.template == "Amount: ${amount}"


@pytest.mark.parametrize(("text", "message"), [
    ("sources: []", "at least 1"),
    ("sources:\n  - {name: a, kind: filesystem, settings: {root: /x}}\n  - {name: a, kind: filesystem, "
     "settings: {root: /y}}", "repeated: a"),
    ("sources:\n  - {name: a, kind: sharepoint, settings: {}}", "no connector of kind 'sharepoint'"),
    ("sources:\n  - {name: a, kind: filesystem, settings: {root: /x, extra: 1}}", "settings.extra"),
    ("sources:\n  - {name: a, kind: filesystem, settings: {root: /x}, default_access: {groups: []}}",
     "default_access"),
    ("sources:\n  - {name: 'a b', kind: filesystem, settings: {root: /x}}", "name"),
    ("sources:\n  - {name: a, kind: filesystem, policy: no-such-policy, settings: {root: /x}}", "no-such-policy"),
    ("sources: [unclosed", "not valid YAML at line 1"),
    ("- just a list", "must be a mapping"),
])
def test_invalid_declarations_are_typed_errors_naming_the_problem(text: str, message: str) -> None:
    with pytest.raises(SourcesInvalidError, match=message):
        parse(text, policies_dir=POLICIES)


def test_unknown_source_name_lists_the_declared_ones() -> None:
    declared = parse("sources:\n  - {name: records, kind: filesystem, settings: {root: /x}}")
    with pytest.raises(SourcesInvalidError, match="declared: records"):
        declared.get("letters")


def test_unreadable_file_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(SourcesInvalidError, match="cannot be read"):
        load_sources(tmp_path / "absent.yaml")


def test_context_from_settings_passes_the_tenant_key_and_a_state_directory(tmp_path: Path) -> None:
    context = SourceContext.from_settings(Settings(home=tmp_path, tenant_key="tenant-1"))  # type: ignore[arg-type]
    assert context.tenant_key == b"tenant-1" and context.cache_path("notes") == tmp_path / "sources" / \
        "notes.hashes.sqlite"


def test_plugin_kinds_come_from_entry_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dist = tmp_path / "enclave_sharepoint-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: enclave-sharepoint\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[enclave.connectors]\nsharepoint = enclave_sharepoint:SharePointSource\n")
    (tmp_path / "enclave_sharepoint.py").write_text(textwrap.dedent("""
        class SharePointSource:
            def __init__(self, name, default_access, site):
                self.name, self.default_access, self.site = name, default_access, site
            def scan(self):
                return []
            def read(self, uri):
                raise FileNotFoundError(uri)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    declared = parse("""
        sources:
          - name: intranet
            kind: sharepoint
            default_access: {groups: [staff]}
            settings: {site: https://intranet.internal/sites/policies}
    """)
    # an installed plugin loads only when ENCLAVE_PLUGINS lists it
    with pytest.raises(ConfigurationError, match="ENCLAVE_PLUGINS"):
        open_connector(declared.get("intranet"), SourceContext())
    connector = open_connector(declared.get("intranet"), SourceContext(allowed_plugins=frozenset({"sharepoint"})))
    assert connector.name == "intranet" and connector.site == "https://intranet.internal/sites/policies"  # type: ignore[attr-defined]
    assert connector.default_access == AccessRule(groups=frozenset({"staff"}))  # type: ignore[attr-defined]
