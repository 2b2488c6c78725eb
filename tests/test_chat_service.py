"""Chat over HTTP as it streams: real SSE, the prompt record before the first byte, the answer record
after the last, failures and overload audited, conversations that shape retrieval, the token command.

The service runs on loopback with the sample corpus ingested through the real pipeline and the
bundled SmolLM2 GGUF in process (fixtures shared with tests/test_query_service.py).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from click.testing import CliRunner
from llm_server import free_loopback_port, serving, smollm2_generator  # noqa: F401  # session fixture
from test_query_service import JWT_KEY, _token, engine, ingested, server  # noqa: F401  # module fixtures

from rag.audit import AuditLog
from rag.cli import main as cli
from rag.config import Settings
from rag.conversation import open_answer_stream, standalone_question
from rag.llm.llamacpp import LlamaCppGenerator, bundled_gguf_path
from rag.query import QueryEngine
from rag.service.app import create_app
from rag.service.page import STATIC

FOLLOW_UP = [{"role": "user", "content": "Which antiemetics are given before the FOLFOX infusion?"},
             {"role": "assistant", "content": "Ondansetron and dexamethasone."},
             {"role": "user", "content": "And at what dose?"}]


def _records(settings: Settings, request_id: str) -> list[dict[str, Any]]:
    log = AuditLog(settings.audit_database_url)
    try:
        return [rec.body for rec in log.records() if rec.body["request_id"] == request_id]
    finally:
        log.dispose()


def _events(response: httpx.Response) -> Iterator[tuple[float, dict[str, Any]]]:
    """(arrival time, event) for each SSE data line, as the bytes arrive."""
    for line in response.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            yield time.monotonic(), json.loads(line[6:])


def _stream(server: str, settings: Settings, messages: list[dict[str, str]], user: str = "onc1",  # noqa: F811
            groups: tuple[str, ...] = ("oncology",)) -> httpx.Response:
    return httpx.post(server + "/v1/chat/completions", json={"model": "enclave", "stream": True, "messages": messages},
                      headers=_token(settings, user, list(groups)), timeout=120)


def test_streaming_sends_answer_pieces_before_generation_ends(server: str, ingested: Settings) -> None:  # noqa: F811
    body = {"model": "enclave", "stream": True,
            "messages": [{"role": "user", "content": "How is the oxaliplatin dose adjusted for neuropathy?"}]}
    with httpx.stream("POST", server + "/v1/chat/completions", json=body, timeout=120,
                      headers=_token(ingested, "onc1", ["oncology"])) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(_events(response))
    first_at, first = events[0]
    final_at, final = events[-1]
    pieces = [at for at, e in events[1:-1] if e["choices"][0]["delta"].get("content")]
    assert first["choices"][0]["delta"]["role"] == "assistant"
    assert final["choices"][0]["finish_reason"] == "stop" and final["outcome"] in ("ok", "invalid_answer")
    # the first event and the answer's pieces arrive while the model is still generating
    assert len(pieces) > 3, "the answer came in one block, not token by token"
    assert first_at < pieces[0] < pieces[-1] <= final_at
    assert final_at - first_at > 0.2


def test_the_prompt_record_is_committed_before_the_first_byte_and_the_answer_record_after(
        server: str, ingested: Settings) -> None:  # noqa: F811
    body = {"stream": True, "messages": [{"role": "user", "content": "Which antiemetics are given before FOLFOX?"}]}
    with httpx.stream("POST", server + "/v1/chat/completions", json=body, timeout=120,
                      headers=_token(ingested, "onc1", ["oncology"])) as response:
        request_id = response.headers["x-request-id"]
        events = _events(response)
        _, first = next(events)
        # read on the first event, before anything more: what the model is shown is already on record
        [prompt] = [r for r in _records(ingested, request_id) if r["stage"] == "prompt"]
        _, final = list(events)[-1]
    assert prompt["seq"] == first["prompt_audit_id"] and prompt["outcome"] == "pending"
    assert prompt["answer"] is None and any(c["shown_to_model"] for c in prompt["chunks"])
    assert prompt["llm_model"] == bundled_gguf_path().name and prompt["prompt_template_version"] == "v1"
    records = _records(ingested, request_id)
    [answer] = [r for r in records if r["stage"] == "answer"]
    assert answer["seq"] == final["audit_id"] > prompt["seq"] and answer["prompt_seq"] == prompt["seq"]
    assert answer["outcome"] == final["outcome"] and answer["answer"] == final["answer"]
    log = AuditLog(ingested.audit_database_url)
    assert log.verify().ok
    log.dispose()


def test_a_reader_who_goes_away_mid_stream_stops_the_model_and_the_chain_says_so(
        server: str, ingested: Settings, engine: QueryEngine) -> None:  # noqa: F811
    body = {"stream": True, "messages": [{"role": "user", "content": "How is the oxaliplatin dose adjusted?"}]}
    with httpx.stream("POST", server + "/v1/chat/completions", json=body, timeout=120,
                      headers=_token(ingested, "onc1", ["oncology"])) as response:
        request_id = response.headers["x-request-id"]
        next(_events(response))  # the first event, then the reader closes the connection
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        answers = [r for r in _records(ingested, request_id) if r["stage"] == "answer"]
        if answers:
            break
        time.sleep(0.1)
    assert [(r["outcome"], r["error_type"]) for r in answers] == [("error", "ClientDisconnected")]
    assert engine.answerer.queue.admitted == 0  # the generation slot came back


@pytest.fixture
def slow_server(ingested: Settings, tmp_path: Path) -> Iterator[tuple[str, QueryEngine]]:  # noqa: F811
    """A second service whose model is given 0.3 s per answer: every answer times out mid-stream."""
    settings = ingested.model_copy(update={"llm_timeout_s": 0.3})
    generator = LlamaCppGenerator(bundled_gguf_path(), n_ctx=2048, timeout_s=0.3)
    eng = QueryEngine(settings, generator=generator)
    eng.warm_up()
    with serving(create_app(settings, engine_factory=lambda s: eng)) as url:
        yield url, eng


def test_a_generation_that_fails_mid_stream_leaves_a_chained_timeout_record(
        slow_server: tuple[str, QueryEngine], ingested: Settings) -> None:  # noqa: F811
    url, _ = slow_server
    response = _stream(url, ingested, [{"role": "user", "content": "How is the oxaliplatin dose adjusted?"}])
    assert response.status_code == 200  # the stream had started: the failure is its last event
    events = [json.loads(line[6:]) for line in response.text.splitlines()
              if line.startswith("data: ") and line != "data: [DONE]"]
    final = events[-1]
    assert final["outcome"] == "timeout" and final["citations"] == []
    records = _records(ingested, response.headers["x-request-id"])
    assert [(r["stage"], r["outcome"]) for r in records] == [("prompt", "pending"), ("answer", "timeout")]
    assert "took longer than 0.3s" in records[1]["error_type"] and records[1]["prompt_seq"] == records[0]["seq"]
    log = AuditLog(ingested.audit_database_url)
    assert log.verify().ok
    log.dispose()


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/ask"])
def test_a_full_generation_queue_answers_503_with_retry_after_and_is_audited_once(
        route: str, server: str, ingested: Settings, engine: QueryEngine) -> None:  # noqa: F811
    # an ask's failure reaches the service wrapped (RequestFailedError): still 503, not 500
    question = "Which antiemetics are given?"
    body = ({"question": question} if route == "/v1/ask" else
            {"model": "enclave", "stream": True, "messages": [{"role": "user", "content": question}]})
    queue = engine.answerer.queue
    held = [queue.admit() for _ in range(queue.concurrency + queue.max_waiting)]  # the line is full
    try:
        response = httpx.post(server + route, json=body, headers=_token(ingested, "onc1", ["oncology"]), timeout=120)
    finally:
        for ticket in held:
            ticket.release()
    assert response.status_code == 503 and int(response.headers["retry-after"]) >= 1
    assert response.json()["error"]["type"] == "busy"
    [record] = _records(ingested, response.headers["x-request-id"])
    assert (record["outcome"], record["error_type"]) == ("error", "GenerationBusyError")


def test_a_follow_up_is_retrieved_with_the_earlier_question_of_its_conversation(
        engine: QueryEngine, ingested: Settings) -> None:  # noqa: F811
    alone = engine.search("And at what dose?", user="onc1", groups=["oncology", "staff"], k=3)
    stream = open_answer_stream(engine, "And at what dose?", earlier=[FOLLOW_UP[0]["content"]], user="onc1",
                                groups=["oncology", "staff"], k=3)
    stream.close()  # retrieval is the point here; closing early is recorded as the reader going away
    assert stream.result.hits[0].source_uri == "oncology/chemo-protocol.md"
    assert [h.source_uri for h in alone.result.hits][:1] != ["oncology/chemo-protocol.md"] or (
        stream.result.hits[0].score >= alone.result.hits[0].score)
    records = _records(ingested, stream.request_id)
    assert [r["stage"] for r in records] == ["prompt", "answer"]
    assert records[1]["error_type"] == "ClientDisconnected"
    assert all(r["turns_used"] == 1 for r in records)
    assert records[0]["question_redacted"].splitlines() == [FOLLOW_UP[0]["content"], "And at what dose?"]


def test_the_standalone_question_keeps_the_last_turns_and_redacts_with_the_question(engine: QueryEngine) -> None:  # noqa: F811
    text, used = standalone_question("and now?", ["first", "  ", "second", "third"], turns=2)
    assert (text, used) == ("second\nthird\nand now?", 2)
    assert standalone_question("q", ["a"], turns=0) == ("q", 0)
    # an earlier turn's personal data is redacted like the question's own
    stream = open_answer_stream(engine, "what about him?", earlier=["Is Margaret Okonkwo on FOLFOX?"],
                                user="onc1", groups=["oncology"])
    stream.close()
    assert "Okonkwo" not in stream.result.question


def test_chat_over_http_with_history_reports_the_turns_used(server: str, ingested: Settings) -> None:  # noqa: F811
    r = httpx.post(server + "/v1/chat/completions", json={"messages": FOLLOW_UP}, timeout=120,
                   headers=_token(ingested, "onc1", ["oncology"]))
    assert r.status_code == 200 and r.json()["turns_used"] == 1
    assert r.json()["citations"] == [] or r.json()["citations"][0]["source_uri"] == "oncology/chemo-protocol.md"


def test_citations_carry_what_the_reader_needs_and_the_sources_block_is_a_setting(
        server: str, ingested: Settings, engine: QueryEngine, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setattr(engine.settings, "chat_sources_block", True)
    body = {"messages": [{"role": "user", "content": "When are wards open to visitors?"}]}
    for _ in range(3):  # the tiny model does not cite every time
        r = httpx.post(server + "/v1/chat/completions", json=body, timeout=120,
                       headers=_token(ingested, "fin1", ["finance"]))
        reply = r.json()
        if reply["citations"]:
            break
    else:
        pytest.skip("the model cited nothing in three tries")
    first = reply["citations"][0]
    assert first["number"] == 1 and first["source_uri"] == "public/visiting-hours.html"
    assert first["access"] == "public" and first["excerpt"] and first["section"].startswith(("part", "page"))
    content = reply["choices"][0]["message"]["content"]
    assert "**Sources**" in content and "[1] public/visiting-hours.html" in content


def test_the_chat_page_is_served_under_a_strict_csp_and_loads_nothing_from_elsewhere(server: str) -> None:  # noqa: F811
    page = httpx.get(server + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    for name in ("chat.js", "chat.css"):
        asset = httpx.get(f"{server}/static/{name}")
        assert asset.status_code == 200 and asset.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(server + "/static/../app.py").status_code == 404
    assert httpx.get(server + "/static/index.html").status_code == 404
    for path in STATIC.iterdir():
        assert not re.search(r"https?://|//[a-z]", path.read_text()), f"{path.name} refers to another origin"


def test_the_page_holds_no_data_without_an_identity(server: str, ingested: Settings) -> None:  # noqa: F811
    assert httpx.get(server + "/v1/whoami").status_code == 401
    me = httpx.get(server + "/v1/whoami", headers=_token(ingested, "onc1", ["oncology"])).json()
    assert me == {"user": "onc1", "groups": ["oncology"], "authenticated_via": "jwt"}


def test_enclave_token_prints_a_token_the_service_accepts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ENCLAVE_HOME", str(tmp_path))
    monkeypatch.setenv("ENCLAVE_JWT_KEY", JWT_KEY)
    result = CliRunner().invoke(cli, ["token", "--user", "alice", "--groups", "oncology, hr", "--ttl", "8h"])
    assert result.exit_code == 0, result.output
    claims = jwt.decode(result.output.strip(), JWT_KEY, algorithms=["HS256"], audience="enclave")
    assert claims["sub"] == "alice" and claims["groups"] == ["oncology", "hr"]
    assert claims["exp"] - claims["iat"] == 8 * 3600
    for bad in ("0s", "31d", "eight hours"):
        assert CliRunner().invoke(cli, ["token", "--user", "a", "--ttl", bad]).exit_code == 2


def test_enclave_token_without_a_signing_key_refuses(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ENCLAVE_HOME", str(tmp_path))
    monkeypatch.delenv("ENCLAVE_JWT_KEY", raising=False)
    result = CliRunner().invoke(cli, ["token", "--user", "alice"])
    assert result.exit_code != 0 and "ENCLAVE_JWT_KEY" in str(result.exception or result.output)
