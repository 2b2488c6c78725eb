"""Measurement an organisation runs on its own golden sets: retrieval quality, PII leakage, access leaks.

Golden-set files are read strictly: a line that does not have the documented shape is an
:class:`EvaluationInputError` naming the file and line, never a guess. JSONL files (probes,
labels, topics) go through :func:`read_jsonl`, one pydantic ``TypeAdapter`` per line shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from rag.errors import EnclaveError


class EvaluationInputError(EnclaveError):
    """A golden-set file (topics, qrels, labels, probes) cannot be read; the message names the file and line."""


def read_jsonl(path: Path, row: Any, shape: str) -> list[Any]:
    """The non-blank lines of a JSONL file, each validated as ``row`` (a type pydantic can validate).

    ``shape`` shows what a line must look like; it is the error message for a line that does not.
    """
    adapter: TypeAdapter[Any] = TypeAdapter(row)
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(adapter.validate_json(line))
        except ValidationError:
            raise EvaluationInputError(f"{path}:{n}: {shape}") from None
    return rows
