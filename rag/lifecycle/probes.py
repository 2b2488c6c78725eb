"""Probes that prove an erasure: the erased content's bytes are nowhere on disk, and search cannot find it.

- :func:`scan_bytes` reads every file under the roots (ENCLAVE_HOME, a SQLite database kept
  elsewhere) and counts occurrences of each needle: distinctive windows of the erased chunk text,
  the first bytes of each erased embedding, a subject's value and keyed tokens.
- :func:`scan_postgres` asks a PostgreSQL catalog the same of every row of its tables (row-to-text).
- :func:`distinctive_windows` picks the needles from erased text that no remaining chunk contains,
  so a hit means a leak, not shared boilerplate.

Needles live only in memory; results name files and counts, never the needle.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import text

from rag.catalog.store import CatalogStore
from rag.redaction import PLACEHOLDER

WINDOW = 32
_PER_CHUNK = 3
_MAX_WINDOWS = 400


@dataclass(frozen=True)
class ByteScan:
    files: int
    bytes: int
    needles: int
    hits: dict[str, int] = field(default_factory=dict)  # path relative to its root -> needles found

    @property
    def clean(self) -> bool:
        return not self.hits

    def to_json(self) -> dict[str, object]:
        return {"files": self.files, "bytes": self.bytes, "needles": self.needles, "hits": dict(self.hits)}


def _files(roots: Iterable[Path]) -> Iterable[tuple[Path, Path]]:
    seen: set[Path] = set()
    for root in roots:
        root = Path(root)
        if root.is_file():
            candidates: Iterable[Path] = [root, *root.parent.glob(root.name + "-*")]  # SQLite -wal, -shm
            base = root.parent
        elif root.is_dir():
            candidates, base = root.rglob("*"), root
        else:
            continue
        for path in candidates:
            resolved = path.resolve()
            if path.is_file() and not path.is_symlink() and resolved not in seen:
                seen.add(resolved)
                yield path, base


def scan_bytes(roots: Sequence[Path], needles: Sequence[bytes]) -> ByteScan:
    """Count, per file under ``roots``, how many of ``needles`` occur anywhere in its bytes."""
    needles = [n for n in dict.fromkeys(needles) if n]
    files = total = 0
    hits: dict[str, int] = {}
    for path, base in _files(roots):
        size = path.stat().st_size
        files += 1
        total += size
        if size == 0 or not needles:
            continue
        with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            found = sum(1 for n in needles if data.find(n) >= 0)
        if found:
            hits[str(path.relative_to(base))] = found
    return ByteScan(files, total, len(needles), hits)


def scan_postgres(catalog: CatalogStore, needles: Sequence[str]) -> ByteScan:
    """On a PostgreSQL catalog: rows of its tables whose text form holds a needle (counted per table)."""
    if catalog.engine.dialect.name != "postgresql" or not needles:
        return ByteScan(0, 0, len(needles))
    tables = ("chunks", "documents", "quarantine", "ingestion_runs", "lifecycle_subjects", "lifecycle_vault")
    hits: dict[str, int] = {}
    rows = 0
    with catalog.engine.connect() as conn:
        for table in tables:
            rows += int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())  # noqa: S608  # fixed names
            found = sum(1 for n in needles if conn.execute(
                text(f"SELECT 1 FROM {table} t WHERE strpos(t::text, :n) > 0 LIMIT 1"),  # noqa: S608  # fixed names
                {"n": n}).first() is not None)
            if found:
                hits[f"postgresql:{table}"] = found
    return ByteScan(len(tables), rows, len(needles), hits)


def distinctive_windows(texts: Sequence[str], remaining_contains: Callable[[str], bool] | None = None) -> list[str]:
    """Windows of ``texts`` outside placeholders, at most a few per text, that no remaining chunk holds."""
    out: list[str] = []
    for value in texts:
        taken = 0
        for segment in PLACEHOLDER.split(value):
            segment = segment.strip()
            if len(segment) < WINDOW:
                continue
            for start in (0, (len(segment) - WINDOW) // 2, len(segment) - WINDOW):
                window = segment[start:start + WINDOW]
                if window in out or (remaining_contains is not None and remaining_contains(window)):
                    continue
                out.append(window)
                taken += 1
                if taken >= _PER_CHUNK:
                    break
            if taken >= _PER_CHUNK:
                break
        if len(out) >= _MAX_WINDOWS:
            break
    return out
