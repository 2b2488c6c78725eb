"""The service's work: turn API requests into QueryEngine calls and API responses.

Chat completions are answered in full, audited, and only then sent, as one message or as a
stream of chunks: streaming never lets a token out before its audit record is committed.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

from rag.query import AuditedAnswer, QueryEngine
from rag.service.auth import Principal
from rag.service.protocol import (
    AskRequest,
    AskResponse,
    ChatCompletionRequest,
    Citation,
    RevealRequest,
    RevealResponse,
    SearchHit,
    SearchRequest,
    SearchResponse,
)


def _citations(out: AuditedAnswer) -> list[Citation]:
    return [Citation(passage_id=p.passage_id, document_id=p.document_id, source_uri=p.source_uri, chunk_id=p.chunk_id)
            for p in out.answer.citations]


def search(engine: QueryEngine, who: Principal, req: SearchRequest, request_id: str) -> SearchResponse:
    out = engine.search(req.question, user=who.user, groups=list(who.groups), k=req.k, mode=req.mode,
                        purpose=req.purpose, request_id=request_id, via=who.via)
    texts = engine.render([h.text for h in out.result.hits], user=who.user, groups=who.groups, via=who.via,
                          request_id=out.request_id)
    hits = [SearchHit(chunk_id=h.chunk_id, document_id=h.document_id, document_version=h.document_version,
                      source_uri=h.source_uri, score=h.score, text=t)
            for h, t in zip(out.result.hits, texts, strict=True)]
    return SearchResponse(request_id=out.request_id, audit_id=out.audit.seq, question_redacted=out.result.question,
                          hits=hits)


def ask(engine: QueryEngine, who: Principal, req: AskRequest, request_id: str) -> AskResponse:
    out = engine.ask(req.question, user=who.user, groups=list(who.groups), k=req.k, purpose=req.purpose,
                     request_id=request_id, via=who.via)
    [answer] = engine.render([out.answer.text], user=who.user, groups=who.groups, via=who.via,
                             request_id=out.request_id)
    return AskResponse(request_id=out.request_id, audit_id=out.audit.seq, outcome=out.answer.outcome,
                       answer=answer, citations=_citations(out))


def reveal(engine: QueryEngine, who: Principal, req: RevealRequest) -> RevealResponse:
    out = engine.vault.reveal(req.token, user=who.user, groups=who.groups, purpose=req.purpose, via=who.via)
    return RevealResponse(token=out.token, value=out.value, audit_id=out.audit_seq)


def chat(engine: QueryEngine, who: Principal, req: ChatCompletionRequest,
         request_id: str) -> tuple[dict[str, Any], AuditedAnswer]:
    question = req.question()  # validated: present, non-empty, capped (protocol)
    out = engine.ask(question, user=who.user, groups=list(who.groups), kind="chat", request_id=request_id,
                     via=who.via)
    gen = out.answer.generation
    [content] = engine.render([out.answer.text], user=who.user, groups=who.groups, via=who.via,
                              request_id=out.request_id)
    body = {
        "id": f"chatcmpl-{out.request_id}", "object": "chat.completion", "created": int(time.time()),
        "model": req.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": gen.prompt_tokens if gen else 0,
                  "completion_tokens": gen.completion_tokens if gen else 0,
                  "total_tokens": (gen.prompt_tokens + gen.completion_tokens) if gen else 0},
        "citations": [c.model_dump() for c in _citations(out)],
        "audit_id": out.audit.seq, "outcome": out.answer.outcome,
    }
    return body, out


def chat_stream(body: dict[str, Any], piece_chars: int = 24) -> Iterator[str]:
    """Server-sent events in OpenAI's chunk format, from an answer already audited."""
    base = {"id": body["id"], "object": "chat.completion.chunk", "created": body["created"], "model": body["model"]}
    content = body["choices"][0]["message"]["content"]
    first = {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
    yield f"data: {json.dumps(first)}\n\n"
    for start in range(0, len(content), piece_chars):
        delta = {"content": content[start:start + piece_chars]}
        yield f"data: {json.dumps({**base, 'choices': [{'index': 0, 'delta': delta, 'finish_reason': None}]})}\n\n"
    last = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "citations": body["citations"], "audit_id": body["audit_id"], "outcome": body["outcome"]}
    yield f"data: {json.dumps(last)}\n\n"
    yield "data: [DONE]\n\n"


def new_request_id() -> str:
    return uuid.uuid4().hex
