"""Readers for evaluation inputs: topics in TREC, CACM, TSV or JSONL layout; TREC qrels."""

from __future__ import annotations

import json
import re
from pathlib import Path

_TOP = re.compile(r"<top>(.*?)</top>", re.S | re.I)
_NUM = re.compile(r"<num>\s*(?:Number:)?\s*(\S+)", re.I)
_TITLE = re.compile(r"<title>\s*(?:Topic:)?\s*(.*?)\s*(?=<desc>|<narr>|</top>|$)", re.S | re.I)
_DOC = re.compile(r"<DOC>(.*?)</DOC>", re.S)
_DOCNO = re.compile(r"<DOCNO>\s*(.*?)\s*</DOCNO>", re.S)


def read_topics(path: Path) -> dict[str, str]:
    """Topic id → query text. Recognises TREC ``<top>``, ``<DOC><DOCNO>``, ``id<TAB>query`` and JSONL."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    stripped = text.lstrip()
    if "<top>" in text.lower():
        topics = {}
        for block in _TOP.findall(text):
            num, title = _NUM.search(block), _TITLE.search(block)
            if num and title:
                topics[num.group(1)] = " ".join(title.group(1).split())
        return topics
    if "<DOC>" in text:
        topics = {}
        for block in _DOC.findall(text):
            m = _DOCNO.search(block)
            if m:
                topics[m.group(1).strip()] = " ".join(_DOCNO.sub(" ", block).split())
        return topics
    if stripped.startswith("{"):
        topics = {}
        for line in text.splitlines():
            if line.strip():
                row = json.loads(line)
                topics[str(row.get("id", row.get("query_id", row.get("qid"))))] = str(row.get("query", row.get("text")))
        return topics
    topics = {}
    for line in text.splitlines():
        if "\t" in line:
            qid, query = line.split("\t", 1)
            topics[qid.strip()] = query.strip()
    if not topics:
        raise ValueError(f"{path}: no topics found (TREC <top>, <DOC><DOCNO>, id<TAB>query or JSONL)")
    return topics


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """TREC qrels: ``qid iter docid relevance`` per line."""
    qrels: dict[str, dict[str, int]] = {}
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if len(parts) >= 4:
            qrels.setdefault(parts[0], {})[parts[2]] = int(parts[3])
    return qrels
