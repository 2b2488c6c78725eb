"""Shared fixtures: a temporary ENCLAVE_HOME, the sample corpus, the shared corpora, a PostgreSQL URL.

Outbound network is blocked for the whole run, in this process and every Python subprocess
(tests/netguard/sitecustomize.py through PYTHONPATH): the suite proves Enclave runs offline.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
SHARED = ROOT.parent / "shared"
SAMPLE_CORPUS = TESTS / "fixtures" / "sample-corpus"

_guard_dir = str(TESTS / "netguard")
os.environ["ENCLAVE_BLOCK_EGRESS"] = "1"
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_guard_dir, str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("SCARF_NO_ANALYTICS", "true")
# The query service's ONNX question encoder (rag/onnx_query.py) depends only on the model's weights:
# one export serves every temporary home of the run, instead of one per ingested home.
_QUERY_MODELS = tempfile.mkdtemp(prefix="enclave-test-models-")
atexit.register(shutil.rmtree, _QUERY_MODELS, True)
os.environ.setdefault("ENCLAVE_QUERY_MODELS_DIR", _QUERY_MODELS)
sys.path.insert(0, _guard_dir)
import sitecustomize as _netguard  # noqa: E402

_netguard.install()

pytest_plugins = ["floor"]  # a skipped floor test fails where ../shared is present (tests/floor.py)


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test saying why (a failure under ENCLAVE_REQUIRE_SHARED=1)."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared corpora sit beside the checkout in ../shared)")
    return path


@pytest.fixture
def enclave_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "enclave-home"
    monkeypatch.setenv("ENCLAVE_HOME", str(home))
    monkeypatch.delenv("ENCLAVE_DATABASE_URL", raising=False)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    return home


@pytest.fixture
def sample_corpus(tmp_path: Path) -> Path:
    """A private copy of the bundled sample corpus that a test may change."""
    dest = tmp_path / "corpus"
    shutil.copytree(SAMPLE_CORPUS, dest)
    return dest


@contextmanager
def ingested_sample(base: Path) -> Iterator[Path]:
    """The sample corpus ingested through the real pipeline into ``base/home``; yields that home."""
    corpus = base / "corpus"
    shutil.copytree(SAMPLE_CORPUS, corpus)
    mp = pytest.MonkeyPatch()
    mp.setenv("ENCLAVE_HOME", str(base / "home"))
    mp.delenv("ENCLAVE_DATABASE_URL", raising=False)
    from pipelines.run import run_ingest

    out = run_ingest(str(corpus), source_name="sample")
    assert out.success, out.failure
    try:
        yield base / "home"
    finally:
        mp.undo()


def _scratch_database(variable: str, create: str, drop: str) -> Iterator[str]:
    """A database of a unique name on the server that ``$variable`` points at, dropped afterwards;
    yields its URL, or skips where the variable is not set. ``create`` and ``drop`` are SQL with
    ``{name}`` for the database name."""
    url = os.environ.get(variable)
    if not url:
        pytest.skip(f"{variable} is not set (CI sets it; see .ci/run)")
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"enclave_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(create.format(name=name)))
    try:
        yield make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(drop.format(name=name)))
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this session (ENCLAVE_TEST_POSTGRES_URL)."""
    yield from _scratch_database("ENCLAVE_TEST_POSTGRES_URL", 'CREATE DATABASE "{name}"',
                                 'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def own_postgres_url() -> Iterator[str]:
    """A PostgreSQL database of this test's own, for a test that counts everything a catalog holds
    (the session's ``postgres_url`` is shared by every test module that ingests into it)."""
    yield from _scratch_database("ENCLAVE_TEST_POSTGRES_URL", 'CREATE DATABASE "{name}"',
                                 'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def mariadb_url() -> Iterator[str]:
    """A fresh MariaDB/MySQL database for this session (ENCLAVE_TEST_MARIADB_URL, mysql+pymysql://...)."""
    yield from _scratch_database("ENCLAVE_TEST_MARIADB_URL", "CREATE DATABASE `{name}` CHARACTER SET utf8mb4",
                                 "DROP DATABASE IF EXISTS `{name}`")
