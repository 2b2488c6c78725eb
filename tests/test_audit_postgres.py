"""The audit log on PostgreSQL: privileges, append-only triggers, concurrent appends, tamper detection.

Each test module run gets databases of its own, created from ENCLAVE_TEST_POSTGRES_URL and dropped after.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from test_audit import make_entry  # tests/ is on sys.path under pytest's default import mode

from rag.audit import AuditLog

pytestmark = pytest.mark.postgres

APP_ROLE = "enclave_app"
ADMIN_URL = os.environ.get("ENCLAVE_TEST_POSTGRES_URL", "")


@pytest.fixture(scope="module")
def database_factory() -> Iterator[Callable[[], str]]:
    """Makes fresh databases (URLs as the admin user) and drops them all at the end."""
    if not ADMIN_URL:
        pytest.skip("ENCLAVE_TEST_POSTGRES_URL is not set (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)")
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    created: list[str] = []
    with admin.connect() as conn:
        if conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": APP_ROLE}).first() is None:
            conn.execute(text(f"CREATE ROLE {APP_ROLE} LOGIN"))

    def make() -> str:
        name = f"enclave_audit_test_{uuid.uuid4().hex[:10]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        return make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)

    yield make
    with admin.connect() as conn:
        for name in created:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _as_app(url: str) -> str:
    return make_url(url).set(username=APP_ROLE, password=None).render_as_string(hide_password=False)


@pytest.fixture(scope="module")
def owner_log(database_factory: Callable[[], str]) -> Iterator[AuditLog]:
    log = AuditLog(database_factory())
    log.migrate(app_role=APP_ROLE)
    for i in range(3):
        log.append(make_entry(i))
    yield log
    log.dispose()


@pytest.fixture(scope="module")
def app_log(owner_log: AuditLog) -> Iterator[AuditLog]:
    log = AuditLog(_as_app(owner_log.url))
    yield log
    log.dispose()


def test_migrate_is_idempotent_and_uses_its_own_version_table(owner_log: AuditLog) -> None:
    owner_log.migrate(app_role=APP_ROLE)
    with owner_log.engine.connect() as conn:
        version = conn.execute(text("SELECT version_num FROM enclave_audit_version")).scalar_one()
        has_default = conn.execute(text("SELECT to_regclass('alembic_version')")).scalar()
    assert version == "a0001" and has_default is None


def test_app_role_appends_and_verifies(app_log: AuditLog) -> None:
    record = app_log.append(make_entry(7))
    assert record.seq >= 4
    assert app_log.verify().ok


@pytest.mark.parametrize("statement", ["UPDATE audit_records SET user_id = 'mallory'",
                                       "DELETE FROM audit_records", "TRUNCATE audit_records"])
def test_app_role_is_denied_update_delete_and_truncate(app_log: AuditLog, statement: str) -> None:
    with pytest.raises(DBAPIError) as caught, app_log.engine.begin() as conn:
        conn.execute(text(statement))
    assert isinstance(caught.value.orig, psycopg.errors.InsufficientPrivilege)


@pytest.mark.parametrize("statement", ["UPDATE audit_records SET user_id = 'mallory'",
                                       "DELETE FROM audit_records WHERE seq = 1", "TRUNCATE audit_records"])
def test_triggers_refuse_changes_even_from_the_owner(owner_log: AuditLog, statement: str) -> None:
    with pytest.raises(DBAPIError, match="append-only") as caught, owner_log.engine.begin() as conn:
        conn.execute(text(statement))
    assert isinstance(caught.value.orig, psycopg.errors.RaiseException)
    assert owner_log.verify().ok


def test_concurrent_appends_from_threads_keep_one_chain(owner_log: AuditLog, app_log: AuditLog) -> None:
    before = owner_log.verify().records
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def worker(t: int) -> None:
        log = app_log if t % 2 else owner_log
        try:
            start.wait()
            for i in range(25):
                log.append(replace(make_entry(i), request_id=f"t{t}-{i}"))
        except BaseException as exc:  # noqa: BLE001  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    report = owner_log.verify()
    assert report.ok and report.records == before + 200
    assert [r.seq for r in owner_log.records()] == list(range(1, before + 201))


def test_verify_finds_tampering_done_by_a_superuser_with_triggers_disabled(
        database_factory: Callable[[], str]) -> None:
    log = AuditLog(database_factory())
    log.migrate(app_role=APP_ROLE)
    for i in range(6):
        log.append(make_entry(i))
    anchor = log.head()
    with log.engine.begin() as conn:
        conn.execute(text("ALTER TABLE audit_records DISABLE TRIGGER USER"))
        conn.execute(text("UPDATE audit_records SET content = replace(content, 'req-2', 'req-X') WHERE seq = 3"))
        conn.execute(text("ALTER TABLE audit_records ENABLE TRIGGER USER"))
    report = log.verify()
    assert not report.ok and report.first_bad_seq == 3
    with log.engine.begin() as conn:
        conn.execute(text("ALTER TABLE audit_records DISABLE TRIGGER USER"))
        conn.execute(text("DELETE FROM audit_records WHERE seq >= 2"))
        conn.execute(text("ALTER TABLE audit_records ENABLE TRIGGER USER"))
    assert log.verify().ok  # what is left is a valid chain of one record ...
    report = log.verify(anchor=anchor)  # ... but not the chain that was anchored
    assert not report.ok and report.first_bad_seq == 2
    log.dispose()
