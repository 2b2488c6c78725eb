"""Ingestion of declared sources (sources.yaml): the CLI, the schedule and the sensor, one run per source.

A file share, a MariaDB table (a real server) and a source whose database cannot be reached: the
broken one is reported with its typed reason, in its own failed run, and the others complete.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import Column, Integer, MetaData, String, Table, Text, create_engine, delete, insert, select
from sqlalchemy.engine import Engine

from pipelines.resources import EnclaveResource
from pipelines.schedules import nightly_ingest
from pipelines.sensors import SOURCE_TAG, watched_source_sensor
from rag.catalog.models import Document, IngestionRun, Source
from rag.catalog.store import CatalogStore
from rag.cli import main
from rag.config import Settings

BODIES = {
    1: "Discharge summary. Oxaliplatin was reduced after grade 2 neuropathy; continue FOLFOX for two cycles.",
    2: "Cardiology review. Ejection fraction stable at 55 percent; continue the beta blocker, review in six weeks.",
}
# Nothing listens on port 9 of loopback: connecting is refused at once.
UNREACHABLE = "mysql+pymysql://root@127.0.0.1:9/none"


@pytest.fixture
def notes_table(mariadb_url: str) -> Iterator[tuple[Engine, Table]]:
    engine = create_engine(mariadb_url)
    table = Table(f"t15b_notes_{uuid.uuid4().hex[:8]}", MetaData(),
                  Column("note_id", Integer, primary_key=True, autoincrement=False), Column("body", Text),
                  Column("title", String(100)))
    table.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(table).values([{"note_id": i, "body": b, "title": f"note {i}"} for i, b in BODIES.items()]))
    yield engine, table
    table.metadata.drop_all(engine)
    engine.dispose()


@pytest.fixture
def sources_file(tmp_path: Path, enclave_home: Path, sample_corpus: Path, mariadb_url: str,
                 notes_table: tuple[Engine, Table], monkeypatch: pytest.MonkeyPatch) -> Path:
    _, table = notes_table
    query = f"SELECT note_id, body, title FROM {table.name}"
    declared = {"version": 1, "sources": [
        {"name": "files", "kind": "filesystem", "policy": "default", "settings": {"root": str(sample_corpus)}},
        {"name": "notes", "kind": "sql", "policy": "default", "default_access": {"groups": ["clinicians"]},
         "settings": {"url": mariadb_url, "query": query, "id_columns": ["note_id"], "text_columns": ["body"],
                      "title_column": "title"}},
        {"name": "broken", "kind": "sql", "default_access": {"groups": ["clinicians"]},
         "settings": {"url": UNREACHABLE, "query": "SELECT id, body FROM notes", "id_columns": ["id"],
                      "text_columns": ["body"]}},
    ]}
    path = tmp_path / "sources.yaml"
    path.write_text(yaml.safe_dump(declared), encoding="utf-8")
    monkeypatch.setenv("ENCLAVE_SOURCES_FILE", str(path))
    return path


def _runs(home: Path) -> dict[str, IngestionRun]:
    """The latest catalog run of each source, by source name."""
    catalog = CatalogStore(Settings(home=home).database_url)
    with catalog.session() as s:
        rows = s.execute(select(Source.name, IngestionRun).join(IngestionRun, IngestionRun.source_id == Source.id)
                         .order_by(IngestionRun.id)).all()
    catalog.dispose()
    return {name: run for name, run in rows}


def _uris(home: Path, source: str) -> set[str]:
    catalog = CatalogStore(Settings(home=home).database_url)
    with catalog.session() as s:
        uris = set(s.scalars(select(Document.uri).join(Source, Document.source_id == Source.id)
                             .where(Source.name == source)))
    catalog.dispose()
    return uris


def test_all_sources_ingest_and_a_broken_one_fails_alone_with_its_typed_reason(
        enclave_home: Path, sources_file: Path) -> None:
    result = CliRunner().invoke(main, ["ingest", "--all-sources", "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "2 of 3 sources completed; failed: broken" in result.output
    runs = _runs(enclave_home)
    assert (runs["files"].status, runs["notes"].status) == ("completed", "completed")
    assert runs["broken"].status == "failed"
    assert runs["broken"].failure is not None and "ConnectorError" in runs["broken"].failure
    assert "root@" not in runs["broken"].failure  # the URL (it may hold a password) is never shown
    assert len(_uris(enclave_home, "notes")) == 2
    assert len(_uris(enclave_home, "files")) == 6


def test_one_declared_source_reingests_incrementally_and_reflects_deletions(
        enclave_home: Path, sources_file: Path, notes_table: tuple[Engine, Table]) -> None:
    runner = CliRunner()
    first = runner.invoke(main, ["ingest", "--source", "notes", "--no-progress"])
    assert first.exit_code == 0, first.output
    engine, table = notes_table
    with engine.begin() as conn:
        conn.execute(delete(table).where(table.c.note_id == 2))
    second = runner.invoke(main, ["ingest", "--source", "notes", "--no-progress"])
    assert second.exit_code == 0, second.output
    counts = _runs(enclave_home)["notes"].counts
    assert (counts["new"], counts["unchanged"], counts["deleted"]) == (0, 1, 1)
    assert len(_uris(enclave_home, "notes")) == 1
    assert "files" not in _runs(enclave_home)  # only the named source ran


def test_an_undeclared_source_name_is_refused_naming_the_declared_ones(sources_file: Path) -> None:
    result = CliRunner().invoke(main, ["ingest", "--source", "nope", "--no-progress"])
    assert result.exit_code != 0
    assert "no source named 'nope'" in result.output and "files, notes, broken" in result.output


def test_the_schedule_requests_one_tagged_run_per_declared_source(sources_file: Path) -> None:
    with dg.build_schedule_context(resources={"enclave": EnclaveResource()}) as context:
        requests = nightly_ingest(context)
    assert isinstance(requests, list)
    assert [r.tags[SOURCE_TAG] for r in requests] == ["files", "notes", "broken"]
    assert requests[1].run_config["ops"]["source_manifest"]["config"]["declared"] == "notes"


def test_the_sensor_requests_runs_for_changed_sources_and_skips_the_unlistable_one(
        sources_file: Path, notes_table: tuple[Engine, Table]) -> None:
    enclave = EnclaveResource()
    with dg.build_sensor_context(resources={"enclave": enclave}) as context:
        first = watched_source_sensor(context)
    assert isinstance(first, dg.SensorResult)
    assert [r.tags[SOURCE_TAG] for r in first.run_requests or []] == ["files", "notes"]
    cursor = first.cursor
    assert cursor is not None and set(json.loads(cursor)) == {"files", "notes"}

    with dg.build_sensor_context(cursor=cursor, resources={"enclave": enclave}) as context:
        again = watched_source_sensor(context)
    assert isinstance(again, dg.SensorResult) and not again.run_requests
    assert again.skip_reason is not None and "not listable: broken" in again.skip_reason.skip_message

    engine, table = notes_table
    with engine.begin() as conn:
        conn.execute(insert(table).values(note_id=3, body="Nursing handover. Dressing changed daily.", title="n3"))
    with dg.build_sensor_context(cursor=cursor, resources={"enclave": enclave}) as context:
        changed = watched_source_sensor(context)
    assert isinstance(changed, dg.SensorResult)
    assert [r.tags[SOURCE_TAG] for r in changed.run_requests or []] == ["notes"]
