"""The service on PostgreSQL as the app role: migrations are `enclave db upgrade`, run by the owner.

A database of its own is created for this module (other tests share ``test``); the sample corpus is
ingested into it as the owner, ``enclave db upgrade --app-role`` grants the app role what the query
side needs, and the HTTP service then runs connected as that role.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from pipelines.run import run_ingest
from rag.audit import AuditLog
from rag.cli import main as cli
from rag.config import Settings
from rag.errors import ConfigurationError
from rag.query import QueryEngine
from rag.service.app import create_app
from rag.service.auth import issue_token

pytestmark = pytest.mark.postgres

ADMIN_URL = os.environ.get("ENCLAVE_TEST_POSTGRES_URL", "")
APP_ROLE = "enclave12_app"  # a role of this module's own: roles are shared by the whole server
JWT_KEY = "test-signing-key-that-is-long-enough-for-hs256"


def _database() -> Iterator[str]:
    if not ADMIN_URL:
        pytest.skip("ENCLAVE_TEST_POSTGRES_URL is not set (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)")
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"enclave_approle_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        if conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": APP_ROLE}).first() is None:
            conn.execute(text(f"CREATE ROLE {APP_ROLE} LOGIN"))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="module")
def owner_url() -> Iterator[str]:
    yield from _database()


def _as_app(url: str) -> str:
    return make_url(url).set(username=APP_ROLE, password=None).render_as_string(hide_password=False)


@pytest.fixture(scope="module")
def upgraded(owner_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """The sample corpus ingested as the owner, then `enclave db upgrade --app-role`; app-role settings."""
    import shutil

    from conftest import SAMPLE_CORPUS

    base = tmp_path_factory.mktemp("approle")
    corpus = base / "corpus"
    shutil.copytree(SAMPLE_CORPUS, corpus)
    mp = pytest.MonkeyPatch()
    mp.setenv("ENCLAVE_HOME", str(base / "home"))
    mp.setenv("ENCLAVE_DATABASE_URL", owner_url)
    mp.delenv("ENCLAVE_AUDIT_DATABASE_URL", raising=False)
    out = run_ingest(str(corpus), source_name="sample")
    assert out.success, out.failure
    result = CliRunner().invoke(cli, ["db", "upgrade", "--app-role", APP_ROLE], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "audit: at" in result.output and "catalog: at" in result.output
    mp.undo()
    yield Settings(home=base / "home", database_url=_as_app(owner_url), jwt_key=JWT_KEY)


def test_the_service_runs_as_the_app_role_and_audits_each_search(upgraded: Settings) -> None:
    app = create_app(upgraded)
    token = issue_token(upgraded, "onc1", ["oncology", "staff"])
    with TestClient(app) as client:
        r = client.post("/v1/search", json={"question": "oxaliplatin neuropathy"},
                        headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    assert r.json()["hits"]
    log = AuditLog(upgraded.audit_database_url)
    try:
        assert make_url(log.url).username == APP_ROLE
        [record] = [rec for rec in log.records() if rec.seq == r.json()["audit_id"]]
        assert record.body["request_id"] == r.json()["request_id"]
        assert log.verify().ok
    finally:
        log.dispose()


@pytest.mark.parametrize("statement", ["UPDATE audit_records SET user_id = 'mallory'",
                                       "DELETE FROM audit_records", "TRUNCATE audit_records",
                                       "UPDATE documents SET access = '{}'",
                                       "DELETE FROM enclave_audit_version"])
def test_the_app_role_can_neither_rewrite_audit_rows_nor_write_the_catalog(upgraded: Settings,
                                                                           statement: str) -> None:
    engine = create_engine(upgraded.database_url)
    try:
        with pytest.raises(DBAPIError) as caught, engine.begin() as conn:
            conn.execute(text(statement))
        assert isinstance(caught.value.orig, psycopg.errors.InsufficientPrivilege)
    finally:
        engine.dispose()


def test_the_query_engine_refuses_a_schema_it_was_not_upgraded_to(tmp_path: Path) -> None:
    database = _database()
    fresh = next(database)  # an empty database: nobody ran `enclave db upgrade`
    engine = create_engine(fresh)
    try:
        settings = Settings(home=tmp_path, database_url=fresh, jwt_key=JWT_KEY)
        with pytest.raises(ConfigurationError, match="enclave db upgrade"):
            QueryEngine(settings)
        with engine.connect() as conn:  # and it did not migrate on its own
            assert conn.execute(text("SELECT to_regclass('audit_records')")).scalar() is None
    finally:
        engine.dispose()
        database.close()
