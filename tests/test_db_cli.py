"""`enclave db upgrade` and `db status` on an embedded home: schemas as a step of their own."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from rag.cli import main as cli
from rag.config import Settings
from rag.schema import ensure_schema, schema_states


def test_status_reports_a_fresh_home_behind_and_upgrade_brings_both_stores_to_head(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENCLAVE_HOME", str(tmp_path))
    monkeypatch.delenv("ENCLAVE_DATABASE_URL", raising=False)
    monkeypatch.delenv("ENCLAVE_AUDIT_DATABASE_URL", raising=False)
    runner = CliRunner()
    status = runner.invoke(cli, ["db", "status"])
    assert status.exit_code == 1 and "no schema" in status.output and "enclave db upgrade" in status.output
    upgrade = runner.invoke(cli, ["db", "upgrade"], catch_exceptions=False)
    assert upgrade.exit_code == 0, upgrade.output
    assert all(s.up_to_date for s in schema_states(Settings(home=tmp_path)))
    assert runner.invoke(cli, ["db", "status"]).exit_code == 0


def test_an_embedded_home_is_upgraded_in_place_for_the_query_side(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    assert not any(s.up_to_date for s in schema_states(settings))
    ensure_schema(settings)  # SQLite files: no roles to keep apart, so no separate step is needed
    assert all(s.up_to_date for s in schema_states(settings))
