"""The service's work: turn API requests into QueryEngine calls and API responses.

Chat completions go through :mod:`rag.conversation`: the conversation's earlier user turns shape
retrieval, and the record of what the model was shown is committed before anything is sent.
With ``stream: true`` each piece of the answer is sent as the model generates it
(:func:`chat_stream`); the answer record is appended when generation ends, and the last event
carries its seq, the outcome and the citations.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Generator
from typing import Any

import anyio
from starlette.concurrency import run_in_threadpool

from rag.answer import Answer, AnswerDelta
from rag.conversation import AnswerStream, cited_passages, open_answer_stream
from rag.errors import EnclaveError
from rag.query import AuditedAnswer, QueryEngine
from rag.service.auth import Principal
from rag.service.protocol import (
    AskRequest,
    AskResponse,
    ChatCitation,
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


def _user_turns(req: ChatCompletionRequest) -> tuple[str, list[str]]:
    """The question (the last user message: present, non-empty and capped, as the protocol validated)
    and the user messages before it, oldest first."""
    user_messages = [msg for msg in req.messages if msg.role == "user"]
    earlier = [text for msg in user_messages[:-1] if (text := msg.text()).strip()]
    return req.question(), earlier


def open_chat(engine: QueryEngine, who: Principal, req: ChatCompletionRequest, request_id: str) -> AnswerStream:
    """Retrieve with the conversation, admit to the model and commit the prompt record (nothing sent yet)."""
    question, earlier = _user_turns(req)
    return open_answer_stream(engine, question, earlier=earlier, user=who.user, groups=list(who.groups),
                              request_id=request_id, via=who.via)


def chat_citations(engine: QueryEngine, who: Principal, answer: Answer) -> list[ChatCitation]:
    return [ChatCitation(number=n, passage_id=c.passage_id, document_id=c.document_id, source_uri=c.source_uri,
                         chunk_id=c.chunk_id, section=c.section, excerpt=c.excerpt, access=c.access)
            for n, c in enumerate(cited_passages(engine, answer, who.groups), start=1)]


def sources_block(citations: list[ChatCitation]) -> str:
    """Markdown naming the cited passages, for front ends that show only the message content."""
    if not citations:
        return ""
    lines = [f"[{c.number}] {c.source_uri}" + (f", {c.section}" if c.section else "") for c in citations]
    return "\n\n**Sources**\n" + "\n".join(f"- {line}" for line in lines)


def _reply_text(answer: Answer, streamed: str) -> str:
    """What follows the streamed text so that the reader ends with the checked answer, not the raw one."""
    if answer.outcome == "ok":
        return answer.text[len(streamed.strip()):] if answer.text.startswith(streamed.strip()) else ""
    # An invalid reply, a failure or a timeout: what streamed was not an answer; say so after it.
    return ("\n\n" if streamed else "") + answer.text


def _chunk(base: dict[str, Any], delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
    body = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
    return f"data: {json.dumps(body)}\n\n"


def chat(engine: QueryEngine, who: Principal, req: ChatCompletionRequest, request_id: str) -> dict[str, Any]:
    """A whole chat completion (``stream: false``): the same stream, collected."""
    stream = open_chat(engine, who, req, request_id)
    done = stream.collect()
    citations = chat_citations(engine, who, done.answer)
    gen = done.answer.generation
    # per-role view (rag.lifecycle): pseudonyms back to originals for the allowed groups, after the audit record
    [text] = engine.render([done.answer.text], user=who.user, groups=who.groups, via=who.via, request_id=request_id)
    content = text + (sources_block(citations) if engine.settings.chat_sources_block else "")
    return {
        "id": f"chatcmpl-{request_id}", "object": "chat.completion", "created": int(time.time()),
        "model": req.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": gen.prompt_tokens if gen else 0,
                  "completion_tokens": gen.completion_tokens if gen else 0,
                  "total_tokens": (gen.prompt_tokens + gen.completion_tokens) if gen else 0},
        "citations": [c.model_dump() for c in citations],
        "audit_id": done.audit.seq, "outcome": done.answer.outcome,
        "prompt_audit_id": stream.prompt_record.seq if stream.prompt_record else None,
        "turns_used": stream.turns_used,
    }


def chat_stream(engine: QueryEngine, who: Principal, req: ChatCompletionRequest,
                stream: AnswerStream) -> Generator[str, None, None]:
    """Server-sent events in OpenAI's chunk format, each answer piece sent as the model produces it.

    The first event leaves after the prompt record was committed (``open_chat``); the last one
    names the answer record (``audit_id``), the outcome and the cited passages.
    """
    base = {"id": f"chatcmpl-{stream.request_id}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": req.model}
    prompt_seq = stream.prompt_record.seq if stream.prompt_record else None
    streamed = ""
    try:
        yield _chunk(base, {"role": "assistant", "content": ""}, prompt_audit_id=prompt_seq,
                     request_id=stream.request_id, turns_used=stream.turns_used)
        for event in stream:
            if isinstance(event, AnswerDelta):
                streamed += event.text
                yield _chunk(base, {"content": event.text})
                continue
            answer = event.answer
            citations = chat_citations(engine, who, answer)
            tail = _reply_text(answer, streamed)
            if engine.settings.chat_sources_block:
                tail += sources_block(citations)
            if tail:
                yield _chunk(base, {"content": tail})
            yield _chunk(base, {}, "stop", citations=[c.model_dump() for c in citations], audit_id=event.audit.seq,
                         outcome=answer.outcome, answer=answer.text, prompt_audit_id=prompt_seq)
        yield "data: [DONE]\n\n"
    except EnclaveError as exc:  # e.g. the answer record could not be written: the reader must know
        error = {"type": type(exc).__name__, "message": str(exc), "request_id": stream.request_id}
        yield f"data: {json.dumps({'error': error})}\n\n"
    finally:
        stream.close()


async def sse(events: Generator[str, None, None]) -> AsyncIterator[str]:
    """``events`` for a StreamingResponse, each step in the thread pool; when the reader goes away
    the generator is closed at once (which stops the model and appends the answer record)."""
    try:
        while (chunk := await run_in_threadpool(next, events, None)) is not None:
            yield chunk
    finally:
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(events.close)


def new_request_id() -> str:
    return uuid.uuid4().hex
