"""Chat turns answered as a stream: multi-turn retrieval, and the two audit records of a streamed answer.

Place in the flow: the chat endpoint (``rag.service.serving``) and the chat page call
:func:`open_answer_stream`; it runs the same components as :meth:`rag.query.QueryEngine.ask`:

    earlier user turns + question ─▶ standalone question ─▶ Retriever (redacts it, filters by access)
      ─▶ Answerer.prompt ─▶ GenerationQueue.admit (full: GenerationBusyError, audited, 503)
      ─▶ AuditLog.append(stage "prompt", outcome "pending")      ◀── committed before the first byte
      ─▶ Answerer.stream: AnswerDelta, AnswerDelta, ...            ◀── the caller sends these as they come
      ─▶ AuditLog.append(stage "answer", prompt_seq = the prompt record's seq) ─▶ AnswerDone

*Multi-turn.* A follow-up ("and for grade 3?") means little alone. The standalone question is the
last ``chat_history_turns`` user questions of the conversation and the new one, one a line: it is
what retrieval embeds and matches, what is redacted (as one text, like any question) and what
the model answers (told to answer the last line). Each record counts the earlier turns it used
(``turns_used``); their redacted text is in ``question_redacted``. Assistant turns are not used:
they are the model's own words, and feeding them back would let one bad answer steer the next
retrieval.

*Every stream ends in a record.* The answer record is written when generation ends, whatever
the end: an answer, an invalid reply, a model failure or timeout (the Answerer's outcomes), a
reader who went away (``ClientDisconnected``) or an unexpected error (its type).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import select

from connectors.base import AccessRule
from rag.answer import Answer, AnswerDelta, Passage, Prompt
from rag.audit import AuditRecord
from rag.catalog.models import Chunk
from rag.query import passage_of

if TYPE_CHECKING:
    from rag.llm.admission import Ticket
    from rag.query import QueryEngine
    from rag.retrieval import SearchResult

TURN_CHARS = 1000  # an earlier turn longer than this is cut: it shapes retrieval, it is not the question


def standalone_question(question: str, earlier: Sequence[str], turns: int) -> tuple[str, int]:
    """The text retrieval and the model see for ``question`` after ``earlier`` user turns, and
    how many of those it holds (the last ``turns`` that are not blank)."""
    used = [" ".join(turn.split())[:TURN_CHARS] for turn in earlier if turn.strip()][-turns:] if turns > 0 else []
    return "\n".join([*used, question]), len(used)


@dataclass(frozen=True)
class AnswerDone:
    """The end of a stream: the checked answer and the audit record that closes it."""

    answer: Answer
    audit: AuditRecord


@dataclass(frozen=True)
class CitedPassage:
    """What a reader sees of a cited passage: where it is from, its redacted text, why they may see it."""

    passage_id: str
    chunk_id: int
    document_id: int
    source_uri: str
    section: str  # "part 3 of 7", "page 2": chunk titles are not kept (they are document text)
    excerpt: str  # the redacted passage, as the model saw it
    access: str  # the rule that let this reader see it: "public" or "group oncology"


class AnswerStream:
    """A chat turn whose prompt record is committed; iterate it for :class:`AnswerDelta` pieces
    and one final :class:`AnswerDone`. Close it to stop early (the answer record says so)."""

    def __init__(self, request_id: str, result: SearchResult, passages: list[Passage],
                 prompt_record: AuditRecord | None, turns_used: int,
                 events: Iterator[AnswerDelta | AnswerDone]) -> None:
        self.request_id = request_id
        self.result = result
        self.passages = passages
        self.prompt_record = prompt_record  # None when nothing was retrieved (one "complete" record)
        self.turns_used = turns_used
        self._events = events

    def __iter__(self) -> Iterator[AnswerDelta | AnswerDone]:
        return self._events

    def close(self) -> None:
        close = getattr(self._events, "close", None)
        if close is not None:
            close()

    def collect(self) -> AnswerDone:
        """Run the stream to its end (for clients that asked for the whole answer)."""
        try:
            for event in self._events:
                if isinstance(event, AnswerDone):
                    return event
        finally:
            self.close()
        raise AssertionError("unreachable: a stream always ends with AnswerDone")


def open_answer_stream(engine: QueryEngine, question: str, *, earlier: Sequence[str] = (), user: str,
                       groups: Sequence[str], k: int | None = None, purpose: str | None = None,
                       request_id: str | None = None, via: str | None = None) -> AnswerStream:
    """Retrieve, admit and commit the prompt record of one chat turn; the answer streams on iteration.

    ``k`` passages are retrieved (default: ``chat_passages``, fewer than ``/v1/ask``'s five: each
    is prompt the model evaluates before its first token). Raises what retrieval or admission
    raised (:class:`~rag.llm.admission.GenerationBusyError` when the generation queue is full),
    after an audit record of the failure."""
    started = time.perf_counter()
    request_id = request_id or uuid.uuid4().hex
    g = tuple(sorted(set(groups)))
    text, turns = standalone_question(question, earlier, engine.settings.chat_history_turns)
    common: dict[str, Any] = {"kind": "chat", "request_id": request_id, "user": user, "groups": g,
                              "purpose": purpose, "question": question, "via": via, "started": started}
    result: SearchResult | None = None
    try:
        result = engine.retriever.search(text, g, k=k or engine.settings.chat_passages, mode="hybrid")
        passages = [passage_of(i, h) for i, h in enumerate(result.hits)]
        answerer = engine.answerer
        if not passages:
            answer = answerer.no_results()
            record = engine.audit.append(engine.audit_entry(result=result, shown=set(), outcome="no_results",
                                                       answer=answer, extra={"turns_used": turns}, **common))
            return AnswerStream(request_id, result, passages, None, turns, iter([AnswerDone(answer, record)]))
        prompt = answerer.prompt(result.question, passages, turns)
        ticket = answerer.queue.admit()
    except Exception as exc:
        engine.audit.append(engine.audit_entry(result=result, shown=set(), outcome="error",
                                               error_type=type(exc).__name__, extra={"turns_used": turns}, **common))
        raise
    shown = {p.chunk_id for p in prompt.shown}
    generator = answerer.generator
    try:
        prompt_record = engine.audit.append(engine.audit_entry(
            result=result, shown=shown, outcome="pending", **common,
            extra={"stage": "prompt", "turns_used": turns, "prompt_template_version": prompt.template_version,
                   "llm_model": _model_name(generator), "llm_weights_hash": getattr(generator, "model_hash", None)}))
    except BaseException:
        ticket.release()
        raise
    primed = _answer_events(engine, ticket, prompt, passages, result, shown, prompt_record, turns, common)
    next(primed)
    events = cast("Iterator[AnswerDelta | AnswerDone]", primed)  # the one None is consumed
    return AnswerStream(request_id, result, passages, prompt_record, turns, events)


def _model_name(generator: object) -> str | None:
    """The model a generator will use, as its Generation will name it (known before it answers)."""
    model = getattr(generator, "model", None)
    if isinstance(model, str) and model:
        return model
    path = getattr(generator, "model_path", None)
    return path.name if isinstance(path, Path) else None


def _answer_events(engine: QueryEngine, ticket: Ticket, prompt: Prompt, passages: list[Passage],
                   result: SearchResult, shown: set[int], prompt_record: AuditRecord, turns: int,
                   common: dict[str, Any]) -> Iterator[AnswerDelta | AnswerDone | None]:
    """The answer events; primed once by the caller (the first ``None``) so that from then on any
    end of the stream, even a close before the first real event, appends the answer record."""
    extra = {"stage": "answer", "prompt_seq": prompt_record.seq, "turns_used": turns}
    answer: Answer | None = None
    try:
        yield None
        with ticket, contextlib.closing(engine.answerer.stream(prompt, passages, common["started"])) as events:
            for event in events:
                if isinstance(event, Answer):
                    answer = event
                else:
                    yield event
    except GeneratorExit:  # the reader went away: stop generating, and say so in the chain
        engine.audit.append(engine.audit_entry(result=result, shown=shown, outcome="error",
                                          error_type="ClientDisconnected", extra=extra, **common))
        raise
    except Exception as exc:
        engine.audit.append(engine.audit_entry(result=result, shown=shown, outcome="error",
                                          error_type=type(exc).__name__, extra=extra, **common))
        raise
    finally:
        ticket.release()
    if answer is None:
        raise AssertionError("unreachable: Answerer.stream always ends with an Answer")
    record = engine.audit.append(engine.audit_entry(result=result, shown=shown, outcome=answer.outcome, answer=answer,
                                               error_type=answer.error, extra=extra, **common))
    yield AnswerDone(answer, record)


def cited_passages(engine: QueryEngine, answer: Answer, groups: Sequence[str]) -> list[CitedPassage]:
    """The reader's view of each passage ``answer`` cites (their groups name the rule that admitted them)."""
    ids = [p.chunk_id for p in answer.citations]
    if not ids:
        return []
    with engine.catalog.session() as session:
        rows = {r.id: r for r in session.execute(
            select(Chunk.id, Chunk.ordinal, Chunk.page, Chunk.access).where(Chunk.id.in_(ids)))}
    out: list[CitedPassage] = []
    for passage in answer.citations:
        row = rows.get(passage.chunk_id)
        if row is None:  # deleted since retrieval: cite it without the catalog's details
            section, access = "", ""
        else:
            section = f"page {row.page}" if row.page else f"part {row.ordinal + 1}"
            rule = AccessRule.from_json(row.access)
            allowed = sorted(rule.groups.intersection(groups))
            access = "public" if rule.public else "group " + ", ".join(allowed)
        out.append(CitedPassage(passage.passage_id, passage.chunk_id, passage.document_id, passage.source_uri,
                                section, passage.text, access))
    return out
