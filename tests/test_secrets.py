"""In production every entry point refuses an empty, placeholder or short secret before reading anything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from pipelines.run import run_ingest
from rag.config import MIN_SECRET_LENGTH, Settings
from rag.errors import ConfigurationError
from rag.ingest import IngestionComponents
from rag.query import QueryEngine
from rag.service.app import create_app

GOOD = "k" * MIN_SECRET_LENGTH


@pytest.mark.parametrize("tenant_key", ["", "changethis", "Change-Me", "k" * (MIN_SECRET_LENGTH - 1)])
def test_production_settings_refuse_a_guessable_tenant_key(tenant_key: str, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, environment="production", tenant_key=tenant_key, jwt_key=GOOD)
    with pytest.raises(ConfigurationError, match="ENCLAVE_TENANT_KEY"):
        settings.require_secrets()
    Settings(home=tmp_path, environment="development", tenant_key=tenant_key).require_secrets()
    Settings(home=tmp_path, environment="production", tenant_key=GOOD).require_secrets()


def _production_env(home: Path) -> dict[str, str]:
    env = {**os.environ, "ENCLAVE_ENVIRONMENT": "production", "ENCLAVE_TENANT_KEY": "", "ENCLAVE_HOME": str(home)}
    env.pop("ENCLAVE_DATABASE_URL", None)
    return env


def test_the_cli_refuses_to_ingest_and_search_in_production_without_a_tenant_key(tmp_path: Path,
                                                                                   sample_corpus: Path) -> None:
    home = tmp_path / "home"
    for args in (["ingest", str(sample_corpus), "--no-progress"], ["search", "x", "--user", "u"]):
        proc = subprocess.run([sys.executable, "-m", "rag.cli", *args], cwd=ROOT, env=_production_env(home),  # noqa: S603
                              capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 2, proc.stderr
        assert "ENCLAVE_TENANT_KEY must be set" in proc.stderr
    assert not home.exists()  # refused before any catalog, index or audit log was opened


def test_the_dagster_code_location_refuses_to_load_in_production_without_a_tenant_key(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", "import pipelines.definitions"], cwd=ROOT,  # noqa: S603
                          env=_production_env(tmp_path / "home"), capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode != 0 and "ENCLAVE_TENANT_KEY must be set" in proc.stderr


def test_a_dagster_run_in_production_without_a_tenant_key_fails_before_reading_a_document(
        tmp_path: Path, sample_corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in _production_env(tmp_path / "home").items():
        monkeypatch.setenv(key, value)
    out = run_ingest(str(sample_corpus), source_name="sample")
    assert not out.success and "ENCLAVE_TENANT_KEY must be set" in (out.failure or "")
    assert not (tmp_path / "home" / "catalog.db").exists()


def test_the_library_query_side_and_service_refuse_in_production(tmp_path: Path) -> None:
    no_key = Settings(home=tmp_path, environment="production", jwt_key=GOOD)
    with pytest.raises(ConfigurationError, match="ENCLAVE_TENANT_KEY"):
        IngestionComponents(no_key)
    with pytest.raises(ConfigurationError, match="ENCLAVE_TENANT_KEY"):
        QueryEngine(no_key)
    with pytest.raises(ConfigurationError, match="ENCLAVE_JWT_KEY"):
        create_app(Settings(home=tmp_path, environment="production", tenant_key=GOOD, jwt_key="short"))
    assert not (tmp_path / "catalog.db").exists() and not (tmp_path / "audit.db").exists()
