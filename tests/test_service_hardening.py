"""The query service under bad input and abuse (issue 10), on the real service over loopback.

One sample corpus is ingested for the module; several services (JWT mode, trusted-header mode,
production settings, a rate limit) share one engine with the bundled SmolLM2 model in process.
Each test says one behaviour: a size or count limit, a refusal and its audit record, what a body,
a metric or a file may hold.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from llm_server import free_loopback_port, serving, smollm2_generator  # noqa: F401  # fixtures
from pydantic import SecretStr
from sqlalchemy import text

from rag.audit import AuditLog
from rag.config import Settings
from rag.errors import RequestFailedError
from rag.query import QueryEngine
from rag.service.app import create_app
from rag.service.auth import issue_token
from rag.service.guard import ConnectionBudget

JWT_KEY = "test-signing-key-that-is-long-enough-for-hs256"
TENANT_KEY = "tenant-key-for-the-hardening-tests-0123456789"
METRICS_TOKEN = "metrics-token-for-the-hardening-tests"
PERSONAL = ("Marlowe", "415-555-0199")


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, smollm2_generator: object) -> Iterator[QueryEngine]:  # noqa: F811
    from conftest import ingested_sample

    with ingested_sample(tmp_path_factory.mktemp("hardening")) as home:
        settings = Settings(home=home, jwt_key=JWT_KEY, llm_max_tokens=48, llm_context_tokens=2048)
        with closing(QueryEngine(settings, generator=smollm2_generator)) as eng:  # type: ignore[arg-type]  # LlamaCppGenerator
            eng.warm_up()
            yield eng


@pytest.fixture(scope="module")
def ingested(engine: QueryEngine) -> Settings:
    """The settings of the module's service: the ingested home, the JWT key."""
    return engine.settings


@contextmanager
def running(settings: Settings, engine: QueryEngine) -> Iterator[str]:
    """A service on a loopback port over the shared engine (which outlives it)."""
    umask = os.umask(0o022)
    os.umask(umask)
    try:
        with running_app(create_app(settings, engine_factory=lambda s: engine), engine) as url:
            yield url
    finally:
        os.umask(umask)  # create_app made it 077 for the service; the test process goes back


@contextmanager
def running_app(app: Any, engine: QueryEngine) -> Iterator[str]:
    engine_close, engine.close = engine.close, lambda: None  # type: ignore[method-assign]  # shared engine
    try:
        with serving(app) as url:
            yield url
    finally:
        engine.close = engine_close  # type: ignore[method-assign]  # shared engine


@pytest.fixture(scope="module")
def server(ingested: Settings, engine: QueryEngine) -> Iterator[str]:
    with running(ingested.model_copy(update={"metrics_token": SecretStr(METRICS_TOKEN)}), engine) as url:
        yield url


@pytest.fixture(scope="module")
def gateway(ingested: Settings, engine: QueryEngine) -> Iterator[str]:
    """The service in trusted-header mode, as behind an authenticating gateway."""
    with running(ingested.model_copy(update={"trusted_header_mode": True}), engine) as url:
        yield url


def _auth(settings: Settings, user: str = "onc1", groups: tuple[str, ...] = ("oncology",)) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(settings, user, list(groups))}"}


def _records(settings: Settings, request_id: str) -> list[dict[str, Any]]:
    log = AuditLog(settings.audit_database_url)
    try:
        return [r.body for r in log.records() if r.body["request_id"] == request_id]
    finally:
        log.dispose()


def _one_record(settings: Settings, response: httpx.Response) -> dict[str, Any]:
    records = _records(settings, response.headers["x-request-id"])
    assert len(records) == 1, records
    return records[0]


def _raw_request(url: str, head: bytes, body: bytes = b"", wait_s: float = 10.0) -> tuple[int, bytes]:
    """Send raw bytes (headers a client library would not send) and read the status and response."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait_s) as sock:
        sock.sendall(head + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        sock.settimeout(1.0)
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except TimeoutError:
            pass
    return int(data.split(b" ", 2)[1]), data


# --- 5: every authenticated request ends in exactly one audit record ------------------------------


def test_a_lone_surrogate_in_chat_is_refused_with_422_and_audited_once(server: str, ingested: Settings) -> None:
    raw = b'{"messages":[{"role":"user","content":[{"type":"text","text":"leave \\ud800 policy"}]}]}'
    r = httpx.post(server + "/v1/chat/completions", content=raw,
                   headers={**_auth(ingested), "content-type": "application/json"})
    assert r.status_code == 422
    problem = r.json()["error"]["fields"][0]
    assert problem["field"] == "body.messages.0.content.parts.0.text"  # pydantic or our validator: not Unicode
    assert "codec" not in r.text and "ud800" not in r.text  # neither the library's text nor the value
    record = _one_record(ingested, r)
    assert record["outcome"] == "refused" and record["error_type"] == "invalid_request"
    assert record["kind"] == "chat" and record["user"] == "onc1"


def test_the_engine_audits_a_question_with_a_lone_surrogate_instead_of_failing(engine: QueryEngine,
                                                                                ingested: Settings) -> None:
    out = engine.search("leave \ud800 policy", user="u", groups=["staff"], k=3)
    [record] = _records(ingested, out.request_id)
    assert record["question_redacted"] == "leave \ufffd policy" and record["outcome"] in ("ok", "no_results")


def test_a_failure_inside_the_engine_is_a_500_audited_once_without_the_library_text(
        ingested: Settings, smollm2_generator: object, tmp_path: Path) -> None:  # noqa: F811
    home = tmp_path / "home"
    shutil.copytree(ingested.home, home)
    settings = ingested.model_copy(update={"home": home, "database_url": f"sqlite:///{home / 'catalog.db'}",
                                           "audit_database_url": f"sqlite:///{home / 'audit.db'}"})
    eng = QueryEngine(settings, generator=smollm2_generator)  # type: ignore[arg-type]  # a LlamaCppGenerator
    try:
        with eng.catalog.engine.begin() as conn:  # the catalog breaks under the running service
            conn.execute(text("DROP TABLE chunks"))
        with pytest.raises(RequestFailedError):
            eng.search("visiting hours", user="u", groups=["staff"])
        with running(settings, eng) as url:
            r = httpx.post(url + "/v1/ask", json={"question": "visiting hours"},
                           headers=_auth(settings, "u", ("staff",)))
        assert r.status_code == 500
        assert r.json()["error"]["request_id"] == r.headers["x-request-id"]
        assert "chunks" not in r.text and "sqlite" not in r.text.lower()  # no library error text
        record = _one_record(settings, r)
        assert record["outcome"] == "error" and record["error_type"] == "OperationalError"
    finally:
        eng.close()


def test_a_value_error_from_our_own_code_is_a_500_audited_once_not_a_400(ingested: Settings,
                                                                           engine: QueryEngine) -> None:
    from fastapi.routing import APIRoute

    def buggy_search() -> None:  # a bug of ours, in front of the real search route
        raise ValueError("bug text that quotes the question: Marlowe 415-555-0199")

    app = create_app(ingested, engine_factory=lambda s: engine)
    app.router.routes.insert(0, APIRoute("/v1/search", buggy_search, methods=["POST"]))
    with running_app(app, engine) as url:
        r = httpx.post(url + "/v1/search", json={"question": "visiting hours"}, headers=_auth(ingested))
    assert r.status_code == 500 and r.json()["error"]["request_id"] == r.headers["x-request-id"]
    assert not any(p in r.text for p in PERSONAL)
    record = _one_record(ingested, r)
    assert record["outcome"] == "error" and record["error_type"] == "ValueError"


# --- 3: body limits; 422 names field and rule, never the value ------------------------------------


def test_a_huge_body_without_a_token_gets_401_before_the_body_is_read(server: str) -> None:
    head = (b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 50000000\r\n\r\n")
    started = time.monotonic()
    status, _ = _raw_request(server, head, b'{"question": "')  # the other 50 MB never come
    assert status == 401 and time.monotonic() - started < 5


def test_a_body_over_the_limit_by_content_length_gets_413_and_one_audit_record(server: str,
                                                                                ingested: Settings) -> None:
    token = _auth(ingested)["Authorization"].encode()
    head = (b"POST /v1/ask HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: " + token +
            b"\r\nContent-Length: 50000000\r\n\r\n")
    status, data = _raw_request(server, head, b'{"question": "')
    assert status == 413
    request_id = next(line.split(b": ")[1].decode() for line in data.split(b"\r\n")
                      if line.lower().startswith(b"x-request-id"))
    [record] = _records(ingested, request_id)
    assert record["outcome"] == "refused" and record["error_type"] == "body_too_large" and record["kind"] == "ask"


def test_a_streamed_body_over_the_limit_gets_413_and_one_audit_record(server: str, ingested: Settings) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer, counted as it arrives
        yield b'{"question": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    r = httpx.post(server + "/v1/search", content=chunks(),
                   headers={**_auth(ingested), "content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["type"] == "body_too_large"
    assert _one_record(ingested, r)["error_type"] == "body_too_large"


def test_a_body_that_arrives_too_slowly_gets_408_and_one_audit_record(ingested: Settings,
                                                                       engine: QueryEngine) -> None:
    token = _auth(ingested)["Authorization"].encode()
    head = (b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: " + token +
            b"\r\nContent-Length: 1000\r\n\r\n")
    with running(ingested.model_copy(update={"body_timeout_s": 1.0}), engine) as url:
        started = time.monotonic()
        status, data = _raw_request(url, head, b'{"question": "')  # then nothing: a slowloris client
    assert status == 408 and time.monotonic() - started < 10
    request_id = next(line.split(b": ")[1].decode() for line in data.split(b"\r\n")
                      if line.lower().startswith(b"x-request-id"))
    [record] = _records(ingested, request_id)
    assert record["outcome"] == "refused" and record["error_type"] == "body_timeout"


def test_a_422_names_the_field_and_rule_but_never_echoes_the_value(server: str, ingested: Settings) -> None:
    question = " ".join(["John Q. Marlowe 415-555-0199"] * 200)
    r = httpx.post(server + "/v1/search", json={"question": question, "k": 10}, headers=_auth(ingested))
    assert r.status_code == 422
    assert r.json()["error"]["fields"] == [{"field": "body.question", "rule": "string_too_long",
                                            "message": "String should have at most 4000 characters"}]
    assert not any(p in r.text for p in PERSONAL) and len(r.content) < 1000
    assert _one_record(ingested, r)["outcome"] == "refused"


# --- 2: chat message size and count ---------------------------------------------------------------


@pytest.mark.parametrize("messages, field", [
    ([{"role": "user", "content": "hello"}] * 65, "body.messages"),
    ([{"role": "user", "content": "x" * 40_000}], "body.messages.0.content"),
    ([{"role": "system", "content": "be brief"}, {"role": "user", "content": "dose " * 1000}], "body"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}], "body"),
    ([{"role": "system", "content": "only a system message"}], "body"),
], ids=["65 messages", "40k-character message", "question over 4000", "no text part", "no user message"])
def test_chat_requests_over_the_limits_or_without_a_question_are_refused_before_the_model(
        server: str, ingested: Settings, messages: list[dict[str, Any]], field: str) -> None:
    started = time.monotonic()
    r = httpx.post(server + "/v1/chat/completions", json={"messages": messages}, headers=_auth(ingested))
    assert r.status_code == 422 and time.monotonic() - started < 5  # no redaction, no model
    assert r.json()["error"]["fields"][0]["field"].startswith(field)
    record = _one_record(ingested, r)
    assert record["outcome"] == "refused" and record["answer"] is None


# --- 1: /metrics --------------------------------------------------------------------------------


def test_metrics_need_their_token_and_label_routes_by_template(server: str) -> None:
    assert httpx.get(server + "/metrics").status_code == 401
    for i in range(50):
        httpx.get(server + f"/patient/John%20Q.%20Marlowe%20415-555-0199/{i}")
    body = httpx.get(server + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).text
    assert not any(p in body for p in PERSONAL) and "John" not in body
    assert 'route="unmatched"' in body and 'route="/v1/search"' in body
    size = len(body)
    for i in range(200):
        httpx.get(server + f"/nothing-here/{i}")
    again = httpx.get(server + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).text
    assert len(again) < size + 500  # 200 more distinct paths, no new series


def test_metrics_are_off_without_a_setting_or_on_a_listener_of_their_own(ingested: Settings,
                                                                         engine: QueryEngine) -> None:
    port = free_loopback_port()
    with running(ingested.model_copy(update={"metrics_port": port}), engine) as url:
        assert httpx.get(url + "/metrics").status_code == 404
        assert "enclave_requests_total" in httpx.get(f"http://127.0.0.1:{port}/metrics").text


# --- 6: purpose ---------------------------------------------------------------------------------


def test_the_declared_purpose_is_stored_redacted(server: str, ingested: Settings) -> None:
    purpose = "care of Jane Roe, SSN 078-05-1120, tel 415-555-0123"
    r = httpx.post(server + "/v1/search", json={"question": "leave", "purpose": purpose}, headers=_auth(ingested))
    assert r.status_code == 200
    stored = _one_record(ingested, r)["purpose"]
    assert stored.startswith("care of ")
    assert not any(v in stored for v in ("Roe", "078-05-1120", "415-555-0123")), stored


# --- 7: trusted headers and token sizes -----------------------------------------------------------


def test_duplicate_identity_headers_are_refused_with_400(gateway: str) -> None:
    for name in ("x-enclave-user", "x-enclave-groups"):
        headers = [("x-enclave-user", "alice"), ("x-enclave-groups", "staff"), (name, "oncology")]
        r = httpx.post(gateway + "/v1/search", json={"question": "visiting hours"}, headers=headers)
        assert r.status_code == 400 and name in r.json()["error"]["message"]


def test_identity_headers_are_utf8_or_refused(gateway: str, ingested: Settings) -> None:
    body = b'{"question": "visiting hours"}'
    head = (b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nx-enclave-user: J\xc3\xbcrgen"
            b"\r\nx-enclave-groups: staff\r\nContent-Length: %d\r\n\r\n" % len(body))
    status, data = _raw_request(gateway, head, body)
    assert status == 200
    request_id = json.loads(data.split(b"\r\n\r\n", 1)[1])["request_id"]
    assert _records(ingested, request_id)[0]["user"] == "Jürgen"
    status, _ = _raw_request(gateway, head.replace(b"J\xc3\xbcrgen", b"J\xfcrgen"), body)
    assert status == 400


def test_identities_are_capped_in_size(gateway: str, server: str) -> None:
    many = ",".join(f"g{i}" for i in range(300))
    r = httpx.post(gateway + "/v1/search", json={"question": "x"}, headers={"x-enclave-user": "a",
                                                                          "x-enclave-groups": many})
    assert r.status_code == 401 and "groups" in r.json()["error"]["message"]
    exp = int(time.time()) + 600
    over_groups = jwt.encode({"sub": "u", "aud": "enclave", "exp": exp, "groups": [f"g{i}" for i in range(300)]},
                             JWT_KEY, "HS256")
    huge = jwt.encode({"sub": "u", "aud": "enclave", "exp": exp, "groups": [f"group-{i}" for i in range(20_001)]},
                      JWT_KEY, "HS256")
    for token in (over_groups, huge):
        r = httpx.post(server + "/v1/search", json={"question": "x"}, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code in (401, 431), r.status_code


# --- 8: smaller ---------------------------------------------------------------------------------


def test_a_subject_of_spaces_is_not_an_identity(server: str) -> None:
    token = jwt.encode({"sub": "   ", "aud": "enclave", "exp": int(time.time()) + 600, "groups": ["staff"]},
                       JWT_KEY, "HS256")
    r = httpx.post(server + "/v1/search", json={"question": "x"}, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401


def test_production_serves_no_cdn_pages_and_rate_limits_by_default(ingested: Settings, engine: QueryEngine) -> None:
    prod = ingested.model_copy(update={"environment": "production", "tenant_key": SecretStr(TENANT_KEY)})
    assert ingested.effective_rate_limit == "" and prod.effective_rate_limit == "120/minute"
    with running(prod, engine) as url:
        assert httpx.get(url + "/docs").status_code == 404 and httpx.get(url + "/redoc").status_code == 404
        assert httpx.get(url + "/openapi.json").status_code == 200  # the schema itself loads nothing


def test_the_home_is_0700_and_its_files_0600(ingested: Settings, engine: QueryEngine, server: str) -> None:
    home = Path(ingested.home)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in home.rglob("*") if p.is_file()}
    assert modes and all(m == 0o600 for m in modes.values()), modes


def test_the_sample_ssn_is_redacted_like_any_other(server: str, ingested: Settings) -> None:
    r = httpx.post(server + "/v1/search", json={"question": "SSN 123-45-6789 leave policy"}, headers=_auth(ingested))
    assert r.status_code == 200 and "123-45-6789" not in r.json()["question_redacted"]


# --- 9: rate limit ------------------------------------------------------------------------------


def test_the_rate_limit_answers_429_per_identity_and_audits_each_refusal(ingested: Settings,
                                                                         engine: QueryEngine) -> None:
    with running(ingested.model_copy(update={"rate_limit": "3/minute"}), engine) as url:
        codes = [httpx.post(url + "/v1/search", json={"question": "visiting hours"},
                            headers=_auth(ingested, "busy", ("staff",))) for _ in range(5)]
        assert [r.status_code for r in codes] == [200, 200, 200, 429, 429]
        assert int(codes[3].headers["retry-after"]) >= 1
        record = _one_record(ingested, codes[3])
        assert record["outcome"] == "refused" and record["error_type"] == "rate_limited"
        other = httpx.post(url + "/v1/search", json={"question": "visiting hours"},
                           headers=_auth(ingested, "calm", ("staff",)))
        assert other.status_code == 200  # the limit is per identity


def test_a_keep_alive_connection_is_closed_after_its_request_budget(ingested: Settings,
                                                                    engine: QueryEngine) -> None:
    """Long-lived connections spread again over the service's processes: after ``keepalive_requests``
    the response says ``Connection: close`` and the server closes the socket; a fresh one is served."""
    request = b"GET /healthz HTTP/1.1\r\nHost: enclave\r\nConnection: keep-alive\r\n\r\n"

    def responses(sock: socket.socket, count: int) -> list[bytes]:
        """``count`` requests one after another on ``sock``; each response's head."""
        heads = []
        for _ in range(count):
            sock.sendall(request)
            data = b""
            while b"\r\n\r\n" not in data or not data.endswith(b"}"):
                chunk = sock.recv(65536)
                assert chunk, "the server closed the connection before its budget was spent"
                data += chunk
            heads.append(data.split(b"\r\n\r\n", 1)[0].lower())
        return heads

    with running(ingested.model_copy(update={"keepalive_requests": 3}), engine) as url:
        host, port = url.removeprefix("http://").split(":")
        for _ in range(2):  # the second connection gets a budget of its own
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                heads = responses(sock, 3)
                assert [b"connection: close" in h for h in heads] == [False, False, True]
                assert all(h.startswith(b"http/1.1 200") for h in heads)
                sock.settimeout(5)
                assert sock.recv(65536) == b"", "the server kept the connection open past its budget"
    with running(ingested.model_copy(update={"keepalive_requests": 0}), engine) as url:  # 0: no budget
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            assert not any(b"connection: close" in h for h in responses(sock, 5))


def test_the_connection_budget_forgets_the_oldest_connections_beyond_its_bound() -> None:
    budget = ConnectionBudget(limit=2)
    budget.MAX_TRACKED = 3
    scopes = [{"client": ("127.0.0.1", port), "server": ("127.0.0.1", 8080)} for port in range(5)]
    assert not any(budget.last_request(s) for s in scopes)  # five connections, one request each
    assert budget.last_request(scopes[4]) and budget.last_request(scopes[3]) and budget.last_request(scopes[2])
    assert not budget.last_request(scopes[0])  # forgotten: counted from one again
    assert not ConnectionBudget(limit=2).last_request({"client": None})  # a Unix socket: no budget


# --- the OpenAPI schema, fuzzed against the running service ---------------------------------------

# examples per operation and generation mode: enough to hit every limit and type, few enough that the
# model (positive ask/chat examples reach it) keeps the test to a couple of minutes on a busy CPU
FUZZ_EXAMPLES = {"/v1/search": 30, "/v1/ask": 4, "/v1/chat/completions": 4}
FUZZ_DEFAULT_EXAMPLES = 10


def _streamed_pair(records: list[dict[str, Any]]) -> bool:
    """The two records of one streamed chat turn (README, "Streaming and the audit chain"): what the
    model was shown (stage prompt), then the answer or failure linked to it (stage answer)."""
    if len(records) != 2:
        return False
    prompt, answer = sorted(records, key=lambda r: r["seq"]) if all("seq" in r for r in records) else records
    return (prompt.get("stage") == "prompt" and answer.get("stage") == "answer"
            and answer.get("prompt_seq") == prompt.get("seq"))


def _fuzz(operation: Any, mode: Any, examples: int, headers: dict[str, str], settings: Settings,
          calls: dict[str, int], problems: list[str]) -> None:
    """Call one operation with ``examples`` generated requests; note each 5xx and each request on an
    audited route that does not have exactly one audit record."""
    from hypothesis import HealthCheck, Phase, given
    from hypothesis import settings as fuzz_settings

    from rag.service.guard import KIND_BY_PATH

    path = operation.path

    @given(case=operation.as_strategy(generation_mode=mode))
    @fuzz_settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
                   suppress_health_check=list(HealthCheck))
    def call(case: Any) -> None:
        response = case.call(headers=headers, timeout=300)
        calls[path] = calls.get(path, 0) + 1
        if response.status_code >= 500 and response.status_code != 503:  # 503: a full generation queue
            problems.append(f"{case.method} {path}: {response.status_code}")
        if path in KIND_BY_PATH:
            [request_id] = response.headers["x-request-id"]  # schemathesis: each header a list of values
            records = _records(settings, request_id)
            if len(records) != 1 and not _streamed_pair(records):
                problems.append(f"{case.method} {path}: {response.status_code} with {len(records)} records")

    call()


def test_fuzzing_the_schema_finds_no_5xx_and_no_unaudited_request(server: str, ingested: Settings) -> None:
    import schemathesis
    from schemathesis import GenerationMode

    from rag.service.guard import KIND_BY_PATH

    schema = schemathesis.openapi.from_url(server + "/openapi.json")
    headers = _auth(ingested, "fuzz", ("staff",))
    problems: list[str] = []
    calls: dict[str, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        examples = FUZZ_EXAMPLES.get(operation.path, FUZZ_DEFAULT_EXAMPLES)
        _fuzz(operation, GenerationMode.POSITIVE, examples, headers, ingested, calls, problems)
        if operation.method.upper() == "POST":  # a GET without parameters has no invalid form
            # invalid requests are refused before the model: cheap, so more of them
            _fuzz(operation, GenerationMode.NEGATIVE, 3 * examples, headers, ingested, calls, problems)
    assert set(KIND_BY_PATH) <= set(calls), calls
    assert not problems, problems
