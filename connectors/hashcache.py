"""ContentHashCache: what a remote document hashed to, keyed by a change marker the source reports cheaply.

``scan()`` must report the sha256 of the bytes ``read()`` will return, and for a database row or
an object in a bucket that means fetching (and rendering) the document. A source can name a
version of a document without fetching it (a row's ``updated_at``, an object's ETag), so this
cache maps ``uri → (marker, sha256, size)``: an unchanged marker gives the stored hash and the
document is not fetched. It is a cache, never the state of record: a missing or stale file only
costs a re-fetch, because the pipeline still compares every hash with the catalog.

The file holds uris, markers, hashes and sizes, never document text. It lives under
``ENCLAVE_HOME/sources/`` (the caller chooses), one SQLite file per source, readable only by its owner.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entry (
    uri TEXT PRIMARY KEY,
    marker TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    seen INTEGER NOT NULL DEFAULT 0
);
"""


class ContentHashCache:
    """``uri → (marker, sha256, size)`` for one source, valid while its ``fingerprint`` is unchanged.

    The fingerprint covers whatever shapes the bytes besides the document itself (a SQL source's
    query, template and PII rules; a bucket's endpoint): when it changes, every entry is dropped.
    """

    def __init__(self, path: Path, fingerprint: str) -> None:
        self.path = Path(path)
        self.fingerprint = fingerprint
        self._lock = threading.Lock()
        self._scan = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(_SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE key = 'fingerprint'").fetchone()
            if row is None or row[0] != fingerprint:
                db.execute("DELETE FROM entry")
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('fingerprint', ?)", (fingerprint,))
        os.chmod(self.path, 0o600)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            db = sqlite3.connect(self.path, timeout=30.0)
            try:
                with db:  # one transaction: committed on success, rolled back on error
                    yield db
            finally:
                db.close()

    def get(self, uri: str, marker: str) -> tuple[str, int] | None:
        """The (sha256, size) stored for ``uri`` at ``marker``; None when absent or the marker moved."""
        with self._connect() as db:
            row = db.execute("SELECT sha256, size FROM entry WHERE uri = ? AND marker = ?", (uri, marker)).fetchone()
        return (str(row[0]), int(row[1])) if row else None

    def put(self, uri: str, marker: str, sha256: str, size: int) -> None:
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO entry (uri, marker, sha256, size, seen) VALUES (?, ?, ?, ?, ?)",
                       (uri, marker, sha256, size, self._scan))

    def lookup_many(self, keys: list[tuple[str, str]]) -> dict[str, tuple[str, int]]:
        """``{uri: (sha256, size)}`` for those of ``(uri, marker)`` whose marker is unchanged."""
        found: dict[str, tuple[str, int]] = {}
        with self._connect() as db:
            for i in range(0, len(keys), 500):
                batch = dict(keys[i:i + 500])
                marks = ",".join("?" * len(batch))
                for uri, marker, sha, size in db.execute(
                        f"SELECT uri, marker, sha256, size FROM entry WHERE uri IN ({marks})",  # noqa: S608  # placeholders only
                        list(batch)):
                    if batch.get(uri) == marker:
                        found[uri] = (str(sha), int(size))
        return found

    def record_scan(self, entries: list[tuple[str, str, str, int]]) -> None:
        """Store what a full scan saw, ``(uri, marker, sha256, size)``, and forget every other uri.

        Called once a scan has listed the whole source, so entries of documents that left the
        source do not accumulate.
        """
        with self._connect() as db:
            scan = int(db.execute("SELECT COALESCE(MAX(seen), 0) + 1 FROM entry").fetchone()[0])
            db.executemany("INSERT OR REPLACE INTO entry (uri, marker, sha256, size, seen) VALUES (?, ?, ?, ?, ?)",
                           [(u, m, s, n, scan) for u, m, s, n in entries])
            db.execute("DELETE FROM entry WHERE seen < ?", (scan,))
            self._scan = scan

    def __len__(self) -> int:
        with self._connect() as db:
            return int(db.execute("SELECT COUNT(*) FROM entry").fetchone()[0])
