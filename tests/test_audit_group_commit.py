"""Audit appends under the load of several service processes, each with many request threads.

Group commit lets concurrent appends of one process share a transaction; the database lock
(``BEGIN IMMEDIATE`` on SQLite, an advisory lock on PostgreSQL) orders the processes. Together
they must still make one unbroken chain, each caller told the seq its own record got.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import event
from test_audit import make_entry  # tests/ is on sys.path under pytest's default import mode

from rag.audit import AuditLog

ROOT = Path(__file__).resolve().parents[1]

_PROCESS = """
import json, sys, threading, time
from dataclasses import replace
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_audit import make_entry
from rag.audit import AuditLog
name, go = sys.argv[1], Path({go!r})
log = AuditLog({url!r})
(go.parent / f"ready-{{name}}").touch()
while not go.exists():
    time.sleep(0.005)
got, errors = {{}}, []
def worker(t):
    try:
        for i in range({count}):
            rid = f"{{name}}-t{{t}}-{{i}}"
            got[rid] = log.append(replace(make_entry(i), request_id=rid)).seq
    except BaseException as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=worker, args=(t,)) for t in range({threads})]
for th in threads: th.start()
for th in threads: th.join()
print(json.dumps({{"seqs": got, "errors": errors}}))
"""


def _append_from_processes(url: str, tmp_path: Path, processes: int, threads: int, count: int) -> dict[str, int]:
    """Each process appends ``threads x count`` records at once; the seq each caller was told, by request id."""
    go = tmp_path / "go"
    code = _PROCESS.format(tests=str(ROOT / "tests"), go=str(go), url=url, count=count, threads=threads)
    procs = [subprocess.Popen([sys.executable, "-c", code, f"p{p}"], cwd=ROOT,  # noqa: S603  # our own code
                              stdout=subprocess.PIPE, text=True) for p in range(processes)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready-p{p}").exists() for p in range(processes)):
        assert time.monotonic() < deadline, "worker processes did not start"
        assert all(p.poll() is None for p in procs), "a worker process exited early"
        time.sleep(0.01)
    go.touch()
    told: dict[str, int] = {}
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0
        result = json.loads(out.strip().splitlines()[-1])
        assert result["errors"] == []
        told.update(result["seqs"])
    return told


def _assert_one_chain(log: AuditLog, told: dict[str, int], expected: int) -> None:
    report = log.verify()
    assert report.ok, report.problem
    assert report.records == expected
    stored = {r.entry().request_id: r.seq for r in log.records()}
    assert len(stored) == expected  # no record lost, none written twice
    assert stored == told  # each caller was told the seq its own record got


def test_three_processes_of_four_threads_appending_keep_one_sqlite_chain(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    log = AuditLog(url)
    log.migrate()
    told = _append_from_processes(url, tmp_path, processes=3, threads=4, count=15)
    _assert_one_chain(log, told, 3 * 4 * 15)
    log.dispose()


@pytest.mark.postgres
def test_three_processes_of_four_threads_appending_keep_one_postgres_chain(postgres_url: str,
                                                                          tmp_path: Path) -> None:
    log = AuditLog(postgres_url)
    log.migrate()
    before = log.head().seq
    told = _append_from_processes(postgres_url, tmp_path, processes=3, threads=4, count=15)
    # the session database may hold records of other tests: count from where this one began
    report = log.verify()
    assert report.ok, report.problem
    assert report.records == before + 180
    stored = {r.entry().request_id: r.seq for r in log.records() if r.seq > before}
    assert stored == told
    log.dispose()


def test_concurrent_appends_share_commits_and_each_returns_its_own_record(tmp_path: Path) -> None:
    log = AuditLog(f"sqlite:///{tmp_path / 'audit.db'}")
    log.migrate()
    commits = 0

    @event.listens_for(log.engine, "commit")
    def _count(_conn: object) -> None:
        nonlocal commits
        commits += 1

    start = threading.Barrier(16)
    told: dict[str, int] = {}
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            start.wait()
            for i in range(20):
                rid = f"t{t}-{i}"
                told[rid] = log.append(replace(make_entry(i), request_id=rid)).seq
        except BaseException as exc:  # noqa: BLE001  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    _assert_one_chain(log, told, 320)
    assert commits < 320 / 2  # appends waiting on a commit were written together by the next one
    log.dispose()


def test_a_failed_commit_fails_every_caller_in_it_and_the_next_append_works(tmp_path: Path) -> None:
    log = AuditLog(f"sqlite:///{tmp_path / 'audit.db'}")  # never migrated: no table to insert into
    with pytest.raises(Exception, match="audit_records"):
        log.append(make_entry(0))
    log.migrate()
    assert log.append(make_entry(1)).seq == 1
    assert log.verify().ok
    log.dispose()
