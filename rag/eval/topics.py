"""Readers for evaluation inputs: topics in TREC, CACM, TSV or JSONL layout; TREC qrels."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from rag.eval import EvaluationInputError, read_jsonl

_TOP = re.compile(r"<top>(.*?)</top>", re.S | re.I)
_NUM = re.compile(r"<num>\s*(?:Number:)?\s*(\S+)", re.I)
_TITLE = re.compile(r"<title>\s*(?:Topic:)?\s*(.*?)\s*(?=<desc>|<narr>|</top>|$)", re.S | re.I)
_DOC = re.compile(r"<DOC>(.*?)</DOC>", re.S)
_DOCNO = re.compile(r"<DOCNO>\s*(.*?)\s*</DOCNO>", re.S)
_ID_KEYS = ("id", "query_id", "qid", "_id")
_QUERY_KEYS = ("query", "text", "title")


def read_topics(path: Path) -> dict[str, str]:
    """Topic id → query text. Recognises TREC ``<top>``, ``<DOC><DOCNO>``, ``id<TAB>query`` and JSONL."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    if "<top>" in text.lower():
        topics = _trec_topics(text)
    elif "<DOC>" in text:
        topics = _docno_topics(text)
    elif text.lstrip().startswith("{"):
        topics = _jsonl_topics(path)
    else:
        topics = {}
        for line in text.splitlines():
            if "\t" in line:
                qid, query = line.split("\t", 1)
                if qid.strip() and query.strip():
                    topics[qid.strip()] = query.strip()
    if not topics:
        raise EvaluationInputError(f"{path}: no topics found (TREC <top>, <DOC><DOCNO>, id<TAB>query or JSONL)")
    return topics


def _trec_topics(text: str) -> dict[str, str]:
    topics = {}
    for block in _TOP.findall(text):
        num, title = _NUM.search(block), _TITLE.search(block)
        if num and title:
            topics[num.group(1)] = " ".join(title.group(1).split())
    return topics


def _docno_topics(text: str) -> dict[str, str]:
    topics = {}
    for block in _DOC.findall(text):
        m = _DOCNO.search(block)
        if m:
            topics[m.group(1).strip()] = " ".join(_DOCNO.sub(" ", block).split())
    return topics


def _jsonl_topics(path: Path) -> dict[str, str]:
    topics = {}
    for n, row in enumerate(read_jsonl(path, dict[str, Any], "not a JSON object"), 1):
        qid = next((row[k] for k in _ID_KEYS if k in row), None)
        query = next((row[k] for k in _QUERY_KEYS if k in row), None)
        if qid is None or not isinstance(query, str):
            raise EvaluationInputError(f"{path}: topic {n} needs an id ({', '.join(_ID_KEYS)}) "
                                       f"and a query ({', '.join(_QUERY_KEYS)})")
        topics[str(qid)] = query
    return topics


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """TREC qrels: ``qid iter docid relevance`` per line."""
    qrels: dict[str, dict[str, int]] = {}
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            qrels.setdefault(parts[0], {})[parts[2]] = int(float(parts[3]))
        except (IndexError, ValueError):
            raise EvaluationInputError(f"{path}:{n}: a qrels line is 'topic iteration document relevance'") from None
    if not qrels:
        raise EvaluationInputError(f"{path}: no relevance judgements found")
    return qrels
