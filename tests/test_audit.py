"""The audit log on SQLite: chaining, tamper detection, exports and concurrent appends."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from rag.audit import (
    FIELDS_BY_VERSION,
    GENESIS_HASH,
    RECORD_FIELDS,
    RECORD_FORMAT_VERSION,
    AuditEntry,
    AuditLog,
    ChainHead,
    RetrievedChunkRecord,
    canonical_json,
    verify_export,
)
from rag.audit.records import record_problem
from rag.errors import AuditIntegrityError

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
USERS = ("alice", "bob", "carol")


def make_entry(i: int, *, user: str | None = None, ts: datetime | None = None) -> AuditEntry:
    kind = ("search", "ask", "chat")[i % 3]
    answer = None if kind == "search" else f"Answer {i} cites [1]."
    return AuditEntry(
        request_id=f"req-{i}",
        kind=kind,  # type: ignore[arg-type]  # one of the three kinds
        user=user or USERS[i % len(USERS)],
        groups=("clinicians", f"ward-{i % 2}"),
        purpose="treatment" if i % 2 else None,
        question_redacted=f"What dose for <PERSON> case {i}?",
        question_hash=hashlib.sha256(f"q{i}".encode()).hexdigest(),
        outcome=("ok", "no_results", "ok", "invalid_answer")[i % 4],  # type: ignore[arg-type]  # each one an Outcome
        latency_ms=12.5 + i,
        chunks=(RetrievedChunkRecord(10 * i + 1, i, 1, "a" * 64, 0.91, True),
                RetrievedChunkRecord(10 * i + 2, i + 1, 3, "b" * 64, 0.42, False)),
        policy_name="default", policy_hash="c" * 64, index_version="idx-7",
        embedding_model="all-MiniLM-L6-v2", embedding_model_hash="d" * 64,
        llm_backend=None if kind == "search" else "llamacpp",
        llm_model=None if kind == "search" else "qwen2.5-0.5b-instruct-q4",
        llm_weights_hash=None if kind == "search" else "e" * 64,
        sampling={} if kind == "search" else {"temperature": 0.0, "max_tokens": 384, "seed": 7},
        prompt_template_version=None if kind == "search" else "answer-v2",
        answer=answer,
        prompt_tokens=None if kind == "search" else 900 + i,
        completion_tokens=None if kind == "search" else 40 + i,
        ts=ts or T0 + timedelta(minutes=i),
    )


def new_log(path: Path) -> AuditLog:
    log = AuditLog(f"sqlite:///{path}")
    log.migrate()
    return log


@pytest.fixture
def log(tmp_path: Path) -> Iterator[AuditLog]:
    audit = new_log(tmp_path / "audit.db")
    yield audit
    audit.dispose()


def test_appended_records_chain_from_genesis_and_verify(log: AuditLog) -> None:
    records = [log.append(make_entry(i)) for i in range(5)]
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    stored = list(log.records())
    assert stored[0].prev_hash == GENESIS_HASH
    for prev, cur in zip(stored, stored[1:], strict=False):
        assert cur.prev_hash == prev.record_hash
    for rec in stored:
        assert rec.record_hash == hashlib.sha256(rec.content.encode()).hexdigest()
        assert rec.content == canonical_json(json.loads(rec.content))
    report = log.verify()
    assert report.ok and report.records == 5 and report.head_seq == 5
    assert report.head_hash == records[-1].record_hash == log.head().hash


def test_empty_log_verifies_with_genesis_head(log: AuditLog) -> None:
    report = log.verify()
    assert report.ok and report.records == 0 and report.head_hash == GENESIS_HASH


def test_appended_record_is_visible_to_a_fresh_connection_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    writer = new_log(path)
    entry = make_entry(1)
    writer.append(entry)
    reader = AuditLog(f"sqlite:///{path}")
    (stored,) = list(reader.records())
    assert stored.entry() == entry
    assert stored.user == entry.user and stored.kind == entry.kind and stored.ts == entry.ts
    writer.dispose()
    reader.dispose()


def test_entry_fills_answer_hash_and_rejects_a_wrong_one() -> None:
    entry = make_entry(1)
    assert entry.answer is not None
    assert entry.answer_hash == hashlib.sha256(entry.answer.encode()).hexdigest()
    with pytest.raises(ValueError, match="answer_hash"):
        replace(entry, answer_hash="0" * 64)


def test_entry_rejects_naive_time_unknown_outcome_and_non_finite_numbers() -> None:
    with pytest.raises(ValueError, match="timezone"):
        replace(make_entry(0), ts=datetime(2026, 1, 1))  # noqa: DTZ001  # the naive time is the point
    with pytest.raises(ValueError, match="outcome"):
        replace(make_entry(0), outcome="fine")
    with pytest.raises(ValueError, match="score"):
        RetrievedChunkRecord(1, 1, 1, "a", float("nan"), True)
    with pytest.raises(ValueError, match="latency"):
        replace(make_entry(0), latency_ms=float("inf"))


def test_triggers_refuse_update_and_delete_of_audit_rows(log: AuditLog) -> None:
    log.append(make_entry(0))
    for statement in ("UPDATE audit_records SET user_id = 'mallory'", "DELETE FROM audit_records"):
        with pytest.raises(DBAPIError, match="append-only"), log.engine.begin() as conn:
            conn.execute(text(statement))
    assert log.verify().ok


def test_verify_report_raises_audit_integrity_error_naming_the_seq(log: AuditLog) -> None:
    for i in range(3):
        log.append(make_entry(i))
    _tamper(log, "UPDATE audit_records SET content = replace(content, 'req-1', 'req-X') WHERE seq = 2")
    report = log.verify()
    assert not report.ok and report.first_bad_seq == 2 and report.records == 1
    with pytest.raises(AuditIntegrityError, match="seq 2"):
        report.raise_for_problem()


def test_audit_schema_shares_a_database_with_the_catalog(tmp_path: Path) -> None:
    from rag.catalog.store import CatalogStore

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    CatalogStore(url).migrate()
    audit = AuditLog(url)
    audit.migrate()
    audit.append(make_entry(0))
    with sqlite3.connect(tmp_path / "shared.db") as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"alembic_version", "enclave_audit_version", "audit_records", "documents"} <= tables
    assert audit.verify().ok


# --- tampering: one change of any kind is found at the right record ------------------------------

N_RECORDS = 6


def _tamper(log: AuditLog, *statements: str) -> None:
    """Change the database as an attacker with file access would: drop the triggers first."""
    path = log.engine.url.database
    assert path is not None
    log.dispose()
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TRIGGER IF EXISTS audit_records_no_update")
        conn.execute("DROP TRIGGER IF EXISTS audit_records_no_delete")
        for statement in statements:
            conn.execute(statement)


@pytest.fixture(scope="module")
def base_chain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ChainHead]:
    path = tmp_path_factory.mktemp("chain") / "audit.db"
    audit = new_log(path)
    for i in range(N_RECORDS):
        audit.append(make_entry(i))
    head = audit.head()
    audit.dispose()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path, head


def _rows(conn: sqlite3.Connection) -> dict[int, dict[str, Any]]:
    conn.row_factory = sqlite3.Row
    return {r["seq"]: dict(r) for r in conn.execute("SELECT * FROM audit_records ORDER BY seq")}


def _json_values() -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6), st.text(max_size=12),
                     st.floats(-1e15, 1e15, allow_nan=False), st.lists(st.integers(0, 9), max_size=2))


# Content fields that verify compares with a column or with the row: an edit there is caught at the
# record itself even when the attacker recomputes its hash.
_BOUND_FIELDS = {"seq", "prev_hash", "ts", "user", "kind"}


@st.composite
def tampering(draw: st.DrawFn) -> tuple[str, list[tuple[str, tuple[Any, ...]]], int | None, int]:
    """(description, SQL with parameters, first bad seq unanchored, first bad seq anchored)."""
    n = N_RECORDS
    action = draw(st.sampled_from(["edit", "edit_rehash", "edit_column", "delete", "insert_forged",
                                   "insert_naive", "reorder"]))
    k = draw(st.integers(1, n))
    if action in ("edit", "edit_rehash"):
        path = draw(st.one_of(st.sampled_from(RECORD_FIELDS).map(lambda f: (f,)),
                              st.tuples(st.just("chunks"), st.integers(0, 1),
                                        st.sampled_from(["chunk_id", "document_id", "document_version",
                                                         "content_hash", "score", "shown_to_model"]))))
        return (action, [("edit", (k, path, draw(_json_values()), action == "edit_rehash"))],
                *_edit_expectation(action, path, k, n))
    if action == "edit_column":
        column = draw(st.sampled_from(["seq", "ts", "user_id", "kind", "prev_hash", "record_hash"]))
        value: Any
        if column == "seq":
            value = draw(st.integers(n + 1, 10**6))
        elif column == "ts":
            value = (T0 + timedelta(seconds=draw(st.integers(-10**6, 10**6)))).strftime("%Y-%m-%d %H:%M:%S.%f")
        elif column in ("prev_hash", "record_hash"):
            value = draw(st.text("0123456789abcdef", min_size=64, max_size=64))
        else:
            value = draw(st.text(max_size=12))
        return action, [("column", (k, column, value))], k, k
    if action == "delete":
        return action, [("delete", (k,))], (k if k < n else None), k
    if action == "insert_forged":
        # A forged record, correctly linked to its predecessor and correctly hashed: only the record
        # after it can show the insertion (a forged record at the very end is a legitimate append).
        return action, [("insert", (k, True))], k + 1, (k + 1 if k < n else k)
    if action == "insert_naive":
        k = draw(st.integers(1, n + 1))
        return action, [("insert", (k, False))], k, k
    m = draw(st.integers(1, n).filter(lambda x: x != k))
    return action, [("swap", (min(k, m), max(k, m)))], min(k, m), min(k, m)


def _edit_expectation(action: str, path: tuple[Any, ...], k: int, n: int) -> tuple[int | None, int]:
    if action == "edit" or path[0] in _BOUND_FIELDS:
        return k, k
    # Rehashed edit: the next record's prev_hash no longer matches; at the end only the anchor shows it.
    return (k + 1 if k < n else None), (k + 1 if k < n else k)


def _apply(path: Path, steps: list[tuple[str, tuple[Any, ...]]]) -> bool:
    """Apply the tampering; False when the drawn edit changes nothing."""
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TRIGGER audit_records_no_update")
        conn.execute("DROP TRIGGER audit_records_no_delete")
        rows = _rows(conn)
        for op, args in steps:
            if op == "edit":
                k, field_path, value, rehash = args
                body = json.loads(rows[k]["content"])
                target = body
                for key in field_path[:-1]:
                    target = target[key]
                target[field_path[-1]] = value
                content = canonical_json(body)
                if content == rows[k]["content"]:
                    return False
                new_hash = hashlib.sha256(content.encode()).hexdigest() if rehash else rows[k]["record_hash"]
                conn.execute("UPDATE audit_records SET content = ?, record_hash = ? WHERE seq = ?",
                             (content, new_hash, k))
            elif op == "column":
                k, column, value = args
                if str(rows[k][column]) == str(value):
                    return False
                conn.execute(f"UPDATE audit_records SET {column} = ? WHERE seq = ?", (value, k))  # noqa: S608
            elif op == "delete":
                conn.execute("DELETE FROM audit_records WHERE seq = ?", args)
            elif op == "insert":
                k, forged = args
                conn.execute("UPDATE audit_records SET seq = seq + 1000 WHERE seq >= ?", (k,))
                conn.execute("UPDATE audit_records SET seq = seq - 999 WHERE seq >= 1000")
                template = json.loads(rows[min(k, N_RECORDS)]["content"])
                prev = rows[k - 1]["record_hash"] if k > 1 else GENESIS_HASH
                template.update(seq=k, prev_hash=prev, request_id="forged", answer="forged")
                content = canonical_json(template)
                record_hash = hashlib.sha256(content.encode()).hexdigest() if forged else "f" * 64
                conn.execute("INSERT INTO audit_records (seq, ts, user_id, kind, prev_hash, record_hash, content) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (k, rows[min(k, N_RECORDS)]["ts"], template["user"], template["kind"], prev,
                              record_hash, content))
            elif op == "swap":
                a, b = args
                conn.execute("UPDATE audit_records SET seq = -1 WHERE seq = ?", (a,))
                conn.execute("UPDATE audit_records SET seq = ? WHERE seq = ?", (a, b))
                conn.execute("UPDATE audit_records SET seq = ? WHERE seq = -1", (b,))
    return True


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(change=tampering())
def test_any_single_edit_deletion_insertion_or_reorder_is_found_at_the_first_bad_seq(
        base_chain: tuple[Path, ChainHead], change: tuple[str, list[tuple[str, tuple[Any, ...]]], int | None, int],
) -> None:
    base, head = base_chain
    action, steps, unanchored_bad, anchored_bad = change
    with tempfile.TemporaryDirectory(dir=base.parent) as work:
        path = Path(work) / "audit.db"
        shutil.copy(base, path)
        assume(_apply(path, steps))
        audit = AuditLog(f"sqlite:///{path}")
        plain, anchored = audit.verify(), audit.verify(anchor=head)
        audit.dispose()
    if unanchored_bad is None:
        assert plain.ok, action
    else:
        assert not plain.ok and plain.first_bad_seq == unanchored_bad, (action, plain)
        assert plain.problem
    assert not anchored.ok and anchored.first_bad_seq == anchored_bad, (action, anchored)


def test_rewriting_the_whole_chain_passes_alone_but_fails_against_the_anchor(log: AuditLog) -> None:
    for i in range(3):
        log.append(make_entry(i))
    anchor = log.head()
    path = log.engine.url.database
    assert path is not None
    log.dispose()
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TRIGGER audit_records_no_update")
        rows = _rows(conn)
        prev = GENESIS_HASH
        for seq in sorted(rows):
            body = json.loads(rows[seq]["content"])
            body.update(prev_hash=prev, answer=None if body["answer"] is None else "rewritten")
            body["answer_hash"] = None if body["answer"] is None else hashlib.sha256(b"rewritten").hexdigest()
            content = canonical_json(body)
            prev_hash, prev = prev, hashlib.sha256(content.encode()).hexdigest()
            conn.execute("UPDATE audit_records SET content = ?, prev_hash = ?, record_hash = ? WHERE seq = ?",
                         (content, prev_hash, prev, seq))
    assert log.verify().ok
    report = log.verify(anchor=anchor)
    assert not report.ok and report.first_bad_seq == 3


# --- exports -------------------------------------------------------------------------------------


@pytest.fixture
def filled_log(log: AuditLog) -> AuditLog:
    for i in range(9):
        log.append(make_entry(i))
    return log


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_unfiltered_export_verifies_and_names_the_chain_head(filled_log: AuditLog, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"audit.{fmt}"
    assert filled_log.export(out, fmt=fmt) == 9  # type: ignore[arg-type]  # parametrised literal
    report = verify_export(out)
    assert report.ok and report.records == 9
    assert (report.head_seq, report.head_hash) == (9, filled_log.head().hash)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_export_filtered_by_user_and_time_holds_only_those_records_and_verifies(
        filled_log: AuditLog, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"bob.{fmt}"
    since, until = T0 + timedelta(minutes=1), T0 + timedelta(minutes=7)
    count = filled_log.export(out, since=since, until=until, user="bob", fmt=fmt)  # type: ignore[arg-type]  # parametrized with jsonl and csv
    expected = [r.seq for r in filled_log.records() if r.user == "bob" and r.ts is not None and since <= r.ts < until]
    assert count == len(expected) == 2
    seqs = _export_seqs(out)
    assert seqs == expected
    report = verify_export(out)
    assert report.ok and report.records == 2 and report.head_seq == 9


def test_csv_export_has_a_column_per_field_and_defuses_spreadsheet_formulas(log: AuditLog, tmp_path: Path) -> None:
    log.append(replace(make_entry(1), answer="=HYPERLINK(\"x\")", answer_hash=None))
    out = tmp_path / "audit.csv"
    log.export(out, fmt="csv")
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert set(RECORD_FIELDS) <= set(rows[0]) and "canonical_json" in rows[0]
    assert rows[0]["answer"] == "'=HYPERLINK(\"x\")"
    assert json.loads(rows[0]["canonical_json"])["answer"] == "=HYPERLINK(\"x\")"
    assert rows[-1]["seq"] == "trailer"
    assert verify_export(out).ok


def _write_v1_records(log: AuditLog, count: int) -> None:
    """Records as the first record format wrote them (no authenticated_via, no llm_distribution)."""
    prev = GENESIS_HASH
    with log.engine.begin() as conn:
        for i in range(count):
            entry = make_entry(i)
            body = {k: v for k, v in entry.to_json().items() if k in FIELDS_BY_VERSION[1]}
            content = canonical_json({**body, "v": 1, "seq": i + 1, "prev_hash": prev})
            record_hash = hashlib.sha256(content.encode()).hexdigest()
            conn.execute(text("INSERT INTO audit_records (seq, ts, user_id, kind, prev_hash, record_hash, content) "
                              "VALUES (:seq, :ts, :user, :kind, :prev, :hash, :content)"),
                         {"seq": i + 1, "ts": entry.ts, "user": entry.user, "kind": entry.kind, "prev": prev,
                          "hash": record_hash, "content": content})
            prev = record_hash


def test_records_of_the_first_format_still_verify_live_and_in_exports_of_either_header(
        log: AuditLog, tmp_path: Path) -> None:
    _write_v1_records(log, 3)
    log.append(replace(make_entry(3), authenticated_via="jwt", llm_distribution="enclave-rag 0.1.0"))
    assert log.verify().ok and log.verify().records == 4
    versions = [(r.body["v"], r.body.get("authenticated_via")) for r in log.records()]
    assert versions == [(1, None), (1, None), (1, None), (RECORD_FORMAT_VERSION, "jwt")]
    assert [r.entry().llm_distribution for r in log.records()][-1] == "enclave-rag 0.1.0"
    jsonl, current_csv, old_csv = tmp_path / "a.jsonl", tmp_path / "a.csv", tmp_path / "old.csv"
    log.export(jsonl)
    log.export(current_csv, fmt="csv")
    assert verify_export(jsonl).ok and verify_export(current_csv).ok
    # a CSV written before the format change lacks the new columns and still verifies
    with current_csv.open(newline="") as fh:
        rows = list(csv.reader(fh))
    added_since_v1 = set(FIELDS_BY_VERSION[RECORD_FORMAT_VERSION]) - set(FIELDS_BY_VERSION[1])
    keep = [i for i, column in enumerate(rows[0]) if column not in added_since_v1]
    with old_csv.open("w", newline="") as fh:
        csv.writer(fh).writerows([[row[i] for i in keep] for row in rows])
    assert verify_export(old_csv).ok
    # ...but a record of the new format without a field of that format is incomplete
    stripped = json.loads(list(log.records())[-1].content)
    del stripped["llm_distribution"]
    content = canonical_json(stripped)
    problem = record_problem(4, stripped["prev_hash"], hashlib.sha256(content.encode()).hexdigest(), content)
    assert problem == "content lacks fields ['llm_distribution']"


def _export_seqs(path: Path) -> list[int]:
    if path.suffix == ".csv":
        with path.open(newline="") as fh:
            return [int(r["seq"]) for r in csv.DictReader(fh) if r["seq"] != "trailer"]
    return [json.loads(line)["seq"] for line in path.read_text().splitlines() if '"type":"trailer"' not in line]


def test_edited_jsonl_export_is_detected_at_the_edited_record(filled_log: AuditLog, tmp_path: Path) -> None:
    out = tmp_path / "audit.jsonl"
    filled_log.export(out)
    lines = out.read_text().splitlines()
    item = json.loads(lines[3])
    item["record"]["latency_ms"] = 1.0
    lines[3] = json.dumps(item)
    out.write_text("\n".join(lines) + "\n")
    report = verify_export(out)
    assert not report.ok and report.first_bad_seq == 4


def test_line_removed_from_an_export_is_detected(filled_log: AuditLog, tmp_path: Path) -> None:
    out = tmp_path / "audit.jsonl"
    filled_log.export(out)
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:4] + lines[5:]) + "\n")
    report = verify_export(out)
    assert not report.ok and report.first_bad_seq == 5


def test_filtered_export_with_a_removed_line_fails_the_trailer_digest(filled_log: AuditLog, tmp_path: Path) -> None:
    out = tmp_path / "alice.jsonl"
    filled_log.export(out, user="alice")
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:1] + lines[2:]) + "\n")
    report = verify_export(out)
    assert not report.ok and "digest" in (report.problem or "")


def test_truncated_export_without_trailer_is_rejected(filled_log: AuditLog, tmp_path: Path) -> None:
    out = tmp_path / "audit.jsonl"
    filled_log.export(out)
    out.write_text("\n".join(out.read_text().splitlines()[:-1]) + "\n")
    report = verify_export(out)
    assert not report.ok and "trailer" in (report.problem or "")


@pytest.mark.parametrize("column", ["user", "canonical_json"])
def test_edited_csv_export_cell_is_detected(filled_log: AuditLog, tmp_path: Path, column: str) -> None:
    out = tmp_path / "audit.csv"
    filled_log.export(out, fmt="csv")
    with out.open(newline="") as fh:
        rows = list(csv.reader(fh))
    index = rows[0].index(column)
    rows[2][index] = rows[2][index].replace("bob", "mallory")
    with out.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    report = verify_export(out)
    assert not report.ok and report.first_bad_seq == 2


def test_export_from_a_tampered_log_does_not_verify(filled_log: AuditLog, tmp_path: Path) -> None:
    _tamper(filled_log, "UPDATE audit_records SET content = replace(content, 'req-6', 'req-X') WHERE seq = 7")
    out = tmp_path / "audit.jsonl"
    AuditLog(str(filled_log.engine.url)).export(out)
    report = verify_export(out)
    assert not report.ok and report.first_bad_seq == 7


# --- concurrency ---------------------------------------------------------------------------------


def test_eight_threads_appending_25_each_form_one_unbroken_chain_of_200(log: AuditLog) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def worker(t: int) -> None:
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
    report = log.verify()
    assert report.ok and report.records == 200
    records = list(log.records())
    assert [r.seq for r in records] == list(range(1, 201))
    assert len({r.entry().request_id for r in records}) == 200


_PROCESS_WORKER = """
import sys, time
from dataclasses import replace
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_audit import make_entry
from rag.audit import AuditLog
go = Path({go!r})
(go.parent / f"ready-{{sys.argv[1]}}").touch()
while not go.exists():
    time.sleep(0.01)
log = AuditLog({url!r})
for i in range({count}):
    log.append(replace(make_entry(i), request_id=f"p{{sys.argv[1]}}-{{i}}"))
    time.sleep(0.003)  # requests arrive spaced out, so the writers take turns
"""


def test_two_processes_appending_at_once_keep_one_chain(log: AuditLog, tmp_path: Path) -> None:
    go = tmp_path / "go"
    code = _PROCESS_WORKER.format(tests=str(ROOT / "tests"), go=str(go), url=str(log.engine.url), count=40)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(p)], cwd=ROOT) for p in range(2)]  # noqa: S603
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready-{p}").exists() for p in range(2)) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    for i in range(20):  # this process appends at the same time
        log.append(replace(make_entry(i), request_id=f"main-{i}"))
        time.sleep(0.003)
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    report = log.verify()
    assert report.ok and report.records == 100
    request_ids = [r.entry().request_id for r in log.records()]
    assert len(set(request_ids)) == 100
    # The processes really interleaved: their records are not two contiguous blocks.
    owners = [rid.split("-")[0] for rid in request_ids]
    assert sum(1 for a, b in zip(owners, owners[1:], strict=False) if a != b) > 2
