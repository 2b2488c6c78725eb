"""The sql connector against real databases: SQLite always, PostgreSQL and MariaDB where configured."""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from source_runs import POLICIES, TENANT_KEY, ingest_once, stored
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text, create_engine, delete, insert, update
from sqlalchemy.engine import Engine

from connectors.base import (
    AccessRule,
    ConnectorError,
    DocumentGoneError,
    InvalidAccessRuleError,
    connector_for,
)
from connectors.sql import DatabaseSource, SqlSettings
from rag.catalog.store import CatalogStore
from rag.errors import AccessRuleMissingError, ConfigurationError
from rag.policy import load_policy
from rag.redaction import PresidioRedactor

NAME, MRN = "Margaret Thornbury", "MRN-4471902"
T0 = datetime(2026, 3, 1, 9, 30)
BODIES = {
    1: "Discharge summary. Oxaliplatin was reduced to 75 percent after grade 2 neuropathy; continue FOLFOX.",
    2: "Cardiology review. Ejection fraction stable at 55 percent; continue beta blocker and review in six weeks.",
    3: "Nursing handover. Wound dressing changed daily; no signs of infection; mobilising with a frame.",
}


class Database:
    """A real database with one notes table of a unique name, dropped afterwards."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = create_engine(url)
        self.meta = MetaData()
        suffix = uuid.uuid4().hex[:8]
        self.notes = Table(
            f"notes_{suffix}", self.meta,
            Column("note_id", Integer, primary_key=True, autoincrement=False),
            Column("patient_name", String(100)), Column("mrn", String(20)), Column("body", Text),
            Column("title", String(200)), Column("updated_at", DateTime), Column("acl", String(200)))
        self.comments = Table(
            f"comments_{suffix}", self.meta,
            Column("comment_id", Integer, primary_key=True, autoincrement=False),
            Column("ticket", String(40)), Column("site", String(40)), Column("subject", String(200)),
            Column("body", Text), Column("posted", DateTime), Column("team", String(40)))
        self.meta.create_all(self.engine)

    def run(self, *statements: Any) -> None:
        with self.engine.begin() as conn:
            for stmt in statements:
                conn.execute(stmt)

    def add_notes(self) -> None:
        self.run(insert(self.notes).values([
            {"note_id": 1, "patient_name": NAME, "mrn": MRN, "body": BODIES[1], "title": "Discharge",
             "updated_at": T0, "acl": '{"groups": ["oncology"]}'},
            {"note_id": 2, "patient_name": "Tomasz Wieczorek", "mrn": "MRN-5512007", "body": BODIES[2],
             "title": "Review", "updated_at": T0, "acl": "cardiology, nursing"},
            {"note_id": 3, "patient_name": None, "mrn": None, "body": BODIES[3], "title": None,
             "updated_at": T0, "acl": '{"public": true}'},
        ]))

    def notes_settings(self, **overrides: Any) -> dict[str, Any]:
        t = self.notes.name
        settings: dict[str, Any] = {
            "url": self.url,
            "query": f"SELECT note_id, patient_name, mrn, body, title, updated_at, acl FROM {t}",
            "id_columns": ["note_id"], "template": "Patient: {patient_name} ({mrn})\n\n{body}",
            "title_column": "title", "updated_at_column": "updated_at", "access_column": "acl",
            "pii_columns": {"patient_name": {"action": "pseudonymise", "entity": "PERSON"}, "mrn": "drop"},
        }
        settings.update(overrides)
        return settings

    def drop(self) -> None:
        self.meta.drop_all(self.engine)
        self.engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres),
                        pytest.param("mariadb", marks=pytest.mark.mariadb)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    url = (f"sqlite:///{tmp_path / 'source.db'}" if request.param == "sqlite"
           else request.getfixturevalue(f"{request.param}_url"))
    database = Database(url)
    try:
        yield database
    finally:
        database.drop()


def notes_source(db: Database, tmp_path: Path, cache: bool = True, **overrides: Any) -> DatabaseSource:
    return DatabaseSource(db.notes_settings(**overrides), "ehr-notes", tenant_key=TENANT_KEY,
                          cache_path=tmp_path / "state" / "ehr-notes.sqlite" if cache else None)


def uri(note_id: int) -> str:
    return f"sql://ehr-notes/{note_id}"


def test_rows_ingest_and_reingest_follows_edits_deletions_and_access(db: Database, tmp_path: Path) -> None:
    db.add_notes()
    catalog = CatalogStore(f"sqlite:///{tmp_path / 'catalog.db'}")
    catalog.migrate()

    manifest, stats = ingest_once(notes_source(db, tmp_path), catalog, "sql")
    assert manifest.new == 3 and stats.stored == 3 and stats.quarantined == 0
    held = stored(catalog)
    assert held[uri(1)][0] == {"groups": ["oncology"]}
    assert held[uri(2)][0] == {"groups": ["cardiology", "nursing"]}
    assert held[uri(3)][0] == {"public": True}
    text = held[uri(1)][1]
    assert "reduced to 75 percent after grade 2 neuropathy" in text and "<PERSON:" in text
    assert NAME not in text and "Thornbury" not in text and MRN not in text

    manifest, stats = ingest_once(notes_source(db, tmp_path), catalog, "sql")
    assert manifest.unchanged == 3 and not manifest.to_process and stats.processed == 0

    edited = "Discharge summary, amended. Oxaliplatin stopped after grade 3 neuropathy."
    db.run(update(db.notes).where(db.notes.c.note_id == 1).values(body=edited, updated_at=T0 + timedelta(hours=1)),
           update(db.notes).where(db.notes.c.note_id == 2).values(acl="oncology"),
           delete(db.notes).where(db.notes.c.note_id == 3))
    manifest, stats = ingest_once(notes_source(db, tmp_path), catalog, "sql")
    assert (manifest.changed, manifest.unchanged, manifest.deleted) == (1, 1, (uri(3),))
    assert len(manifest.access_changed) == 1 and stats.stored == 1
    held = stored(catalog)
    assert set(held) == {uri(1), uri(2)}
    assert "stopped after grade 3 neuropathy" in held[uri(1)][1] and held[uri(2)][0] == {"groups": ["oncology"]}


def test_scan_reports_the_hash_of_what_read_returns(db: Database, tmp_path: Path) -> None:
    db.add_notes()
    source = notes_source(db, tmp_path, cache=False)
    docs = {d.uri: d for d in source.scan()}
    assert set(docs) == {uri(1), uri(2), uri(3)}
    for d in docs.values():
        data = source.read(d.uri)
        assert hashlib.sha256(data).hexdigest() == d.sha256 and d.size == len(data) and d.name.endswith(".txt")
    pseudonym = source._protect({"patient_name": NAME})["patient_name"]
    assert source.read(uri(1)).decode() == f"Discharge\n\nPatient: {pseudonym} ()\n\n{BODIES[1]}\n"


def test_cursor_skips_rows_whose_updated_at_did_not_move(db: Database, tmp_path: Path) -> None:
    db.add_notes()
    cached = notes_source(db, tmp_path)
    before = {d.uri: d.sha256 for d in cached.scan()}
    # an edit that leaves updated_at alone is invisible to the cursor, by design ...
    db.run(update(db.notes).where(db.notes.c.note_id == 2).values(body="Silently edited."))
    assert {d.uri: d.sha256 for d in notes_source(db, tmp_path).scan()} == before
    # ... while a scan without the cursor reads every row and sees it
    uncached = {d.uri: d.sha256 for d in notes_source(db, tmp_path, cache=False).scan()}
    assert uncached[uri(2)] != before[uri(2)] and uncached[uri(1)] == before[uri(1)]
    # reading the row (as ingestion does for any change) corrects the cache for the next scan
    cached.read(uri(2))
    assert {d.uri: d.sha256 for d in notes_source(db, tmp_path).scan()} == uncached
    # a moved updated_at is fetched again
    db.run(update(db.notes).where(db.notes.c.note_id == 1).values(body="New text.", updated_at=T0 + timedelta(days=1)))
    assert {d.uri: d.sha256 for d in notes_source(db, tmp_path).scan()}[uri(1)] != before[uri(1)]


def test_rows_sharing_an_id_form_one_document_in_declared_order(db: Database, tmp_path: Path) -> None:
    c = db.comments
    db.run(insert(c).values([
        {"comment_id": 1, "ticket": "T-1", "site": "north", "subject": "Printer", "body": "Second reply",
         "posted": T0 + timedelta(minutes=5), "team": "it"},
        {"comment_id": 2, "ticket": "T-1", "site": "north", "subject": "Printer", "body": "First report",
         "posted": T0, "team": "it"},
        {"comment_id": 3, "ticket": "T-1", "site": "south/annex", "subject": "Badge", "body": "Lost badge",
         "posted": T0, "team": "security"},
    ]))
    source = DatabaseSource({
        "url": db.url, "query": f"SELECT ticket, site, subject, body, posted FROM {c.name}",
        "id_columns": ["ticket", "site"], "text_columns": ["body"], "title_column": "subject",
        "group_order_columns": ["posted"], "document_format": "md",
        "access_query": f"SELECT ticket, site, team FROM {c.name}",
    }, "helpdesk")
    docs = {d.uri: d for d in source.scan()}
    assert set(docs) == {"sql://helpdesk/T-1/north", "sql://helpdesk/T-1/south%2Fannex"}
    assert source.read("sql://helpdesk/T-1/north") == b"# Printer\n\nFirst report\n\nSecond reply\n"
    annex = docs["sql://helpdesk/T-1/south%2Fannex"]
    assert annex.access == AccessRule(groups=frozenset({"security"})) and annex.name.endswith(".md")
    assert hashlib.sha256(source.read(annex.uri)).hexdigest() == annex.sha256


def test_document_without_a_rule_refuses_the_source_unless_a_default_applies(db: Database, tmp_path: Path) -> None:
    db.add_notes()
    db.run(update(db.notes).where(db.notes.c.note_id == 3).values(acl=None))
    catalog = CatalogStore(f"sqlite:///{tmp_path / 'catalog.db'}")
    catalog.migrate()
    with pytest.raises(AccessRuleMissingError, match="1 document"):
        ingest_once(notes_source(db, tmp_path), catalog, "sql")
    assert stored(catalog) == {}
    source = DatabaseSource(db.notes_settings(), "ehr-notes", AccessRule(groups=frozenset({"staff"})),
                            tenant_key=TENANT_KEY)
    docs = {d.uri: d.access for d in source.scan()}
    assert docs[uri(3)] == AccessRule(groups=frozenset({"staff"}))
    assert docs[uri(1)] == AccessRule(groups=frozenset({"oncology"}))  # the column wins over the default


@pytest.mark.parametrize("value", ['[1, 2]', '{"groups": []}', "{not json", '{"groups": "oncology"}'])
def test_unreadable_access_value_is_a_typed_error(db: Database, tmp_path: Path, value: str) -> None:
    db.add_notes()
    db.run(update(db.notes).where(db.notes.c.note_id == 2).values(acl=value))
    with pytest.raises(InvalidAccessRuleError, match="sql://ehr-notes/2"):
        list(notes_source(db, tmp_path).scan())


def test_pseudonym_equals_the_policy_keyed_hash_of_the_same_value(db: Database, tmp_path: Path) -> None:
    db.add_notes()
    data = notes_source(db, tmp_path).read(uri(1)).decode()
    token = PresidioRedactor(load_policy("default", POLICIES), tenant_key=TENANT_KEY).keyed_token(NAME)
    assert f"Patient: <PERSON:{token}> ()" in data and MRN not in data


def test_row_gone_between_scan_and_read_is_an_os_error_for_quarantine(db: Database, tmp_path: Path) -> None:
    db.add_notes()
    source = notes_source(db, tmp_path)
    list(source.scan())
    db.run(delete(db.notes).where(db.notes.c.note_id == 2))
    with pytest.raises(DocumentGoneError) as info:
        source.read(uri(2))
    assert isinstance(info.value, OSError)  # rag.ingest quarantines OSError as read_error and goes on
    with pytest.raises(DocumentGoneError):
        source.read("sql://other-source/1")


def test_database_errors_name_a_code_not_row_values(db: Database, tmp_path: Path) -> None:
    db.add_notes()
    with pytest.raises(ConnectorError, match="listing documents") as info:
        list(notes_source(db, tmp_path, query=f"SELECT note_id FROM {db.notes.name}").scan())
    assert info.value.__suppress_context__
    if db.engine.dialect.name == "postgresql":
        # the driver's own message would quote the value
        bad = f"SELECT CAST(patient_name AS INTEGER) AS note_id, body, updated_at, acl FROM {db.notes.name}"
        with pytest.raises(ConnectorError) as info:
            list(notes_source(db, tmp_path, query=bad, template="{body}", title_column=None,
                              pii_columns={}).scan())
        assert "22P02" in str(info.value) and NAME not in str(info.value) and "Thornbury" not in str(info.value)


def test_credentials_never_appear_in_errors_logs_or_repr(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = "pw-" + uuid.uuid4().hex
    settings = {"url": f"postgresql+psycopg://enclave:{secret}@127.0.0.1:1/ehr", "query": "SELECT 1 AS id, 'x' AS t",
                "id_columns": ["id"], "text_columns": ["t"]}
    source = DatabaseSource(settings, "ehr")
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConnectorError) as info:
        list(source.scan())
    shown = [str(info.value), repr(info.value), repr(source), repr(source.settings), str(source.settings.model_dump()),
             source.location, caplog.text]
    assert all(secret not in s for s in shown)
    assert source.location == "postgresql://127.0.0.1:1/ehr"
    with pytest.raises(ConfigurationError) as bad:
        list(DatabaseSource({**settings, "url": f"not a url {secret}"}, "ehr").scan())
    assert secret not in str(bad.value)


@pytest.mark.parametrize("template", ["{patient_name.__class__}", "{0}", "{}", "{body!r}", "{body:>400}",
                                      "{body[0]}", "{unclosed"])
def test_templates_are_plain_column_names_only(template: str) -> None:
    with pytest.raises(ValidationError):
        SqlSettings(url="sqlite://", query="SELECT 1", id_columns=["id"], template=template)  # type: ignore[arg-type]


def test_settings_refuse_pii_in_ids_and_ambiguous_text() -> None:
    base: dict[str, Any] = {"url": "sqlite://", "query": "SELECT 1", "id_columns": ["mrn"]}
    with pytest.raises(ValidationError, match="surrogate key"):
        SqlSettings.model_validate({**base, "text_columns": ["body"], "pii_columns": {"mrn": "drop"}})
    with pytest.raises(ValidationError, match="one of them"):
        SqlSettings.model_validate({**base, "text_columns": ["body"], "template": "{body}"})
    with pytest.raises(ValidationError, match="not both"):
        SqlSettings.model_validate({**base, "text_columns": ["b"], "access_column": "a", "access_query": "SELECT 1"})
    assert SqlSettings.model_validate({**base, "text_columns": ["b"], "query": "SELECT 1;  "}).query == "SELECT 1"


def test_pseudonymising_without_a_tenant_key_is_refused(tmp_path: Path) -> None:
    settings = {"url": "sqlite://", "query": "SELECT 1", "id_columns": ["id"], "text_columns": ["name"],
                "pii_columns": {"name": "pseudonymise"}}
    with pytest.raises(ConfigurationError, match="tenant key"):
        DatabaseSource(settings, "x")
    assert isinstance(DatabaseSource({**settings, "pii_columns": {"name": "drop"}}, "x"), DatabaseSource)


def test_sql_is_a_registered_kind(tmp_path: Path) -> None:
    source = connector_for("sql", settings={"url": "sqlite://", "query": "SELECT 1 AS id, 'x' AS t",
                                            "id_columns": ["id"], "text_columns": ["t"]},
                           name="inline", default_access=AccessRule(public=True))
    assert isinstance(source, DatabaseSource)
    (doc,) = source.scan()
    assert doc.uri == "sql://inline/1" and source.read(doc.uri) == b"x\n"
