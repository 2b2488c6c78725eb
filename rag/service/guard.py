"""The service's front door (pure ASGI): request id, identity, size and rate limits, metrics, failures.

It runs before FastAPI reads a byte of the body, so that what costs nothing to refuse is refused
first, in this order::

    request id ─▶ /v1/*: identity from headers (401, or 400 for duplicated / non-UTF-8 headers)
               ─▶ rate limit per identity (429 + Retry-After)
               ─▶ body limit by Content-Length (413), then while the body streams in (413)
               ─▶ the app ─▶ any exception escaping it: 500 with the request id, never its text

Every search, ask or chat request that carries a verified identity ends in exactly one audit
record: the engine writes it when the request reaches it (an answer, or a failure it audits and
raises as :class:`~rag.errors.RequestFailedError`); this module, or the app's handlers through
:func:`audit_refusal`, write it otherwise (``outcome="refused"`` with the reason, or ``"error"``).
Metrics are labelled by route template, never the raw path, so series stay bounded and free of
whatever a client puts in a URL.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.routing import Match

from rag.audit import Kind
from rag.config import Settings
from rag.errors import AuthenticationError, RequestFailedError
from rag.service.auth import IdentityHeaderError, Principal, principal_from_headers

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PROTECTED_PREFIX = "/v1/"  # deny by default: every route under it needs a verified identity
KIND_BY_PATH: dict[str, Kind] = {"/v1/search": "search", "/v1/ask": "ask", "/v1/chat/completions": "chat"}
_IDENTITY_HEADERS = (b"authorization", b"x-enclave-user", b"x-enclave-groups")


def error_body(status: int, kind: str, message: str, request_id: str,
               headers: dict[str, str] | None = None, fields: list[dict[str, str]] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"type": kind, "message": message, "request_id": request_id}
    if fields is not None:
        body["fields"] = fields
    return JSONResponse(status_code=status, content={"error": body}, headers=headers)


def state_of(scope: Scope) -> dict[str, Any]:
    state: dict[str, Any] = scope.setdefault("state", {})
    return state


async def audit_refusal(scope: Scope, reason: str, outcome: str = "refused") -> None:
    """One audit record for an authenticated search/ask/chat that the engine never saw (or did not audit)."""
    state = state_of(scope)
    who: Principal | None = state.get("principal")
    kind = KIND_BY_PATH.get(scope.get("path", ""))
    if who is None or kind is None or state.get("audited"):
        return
    engine = scope["app"].state.engine
    state["audited"] = True
    await run_in_threadpool(engine.record_refusal, kind=kind, request_id=state["request_id"], user=who.user,
                            groups=who.groups, via=who.via, reason=reason, started=state["started"],
                            outcome=outcome)


class ServiceMetrics:
    """Prometheus series of the service, labelled by route template and status code."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("enclave_requests_total", "Requests by route template and status",
                                ["route", "outcome"], registry=self.registry)
        self.latency = Histogram("enclave_request_seconds", "Request latency by route template", ["route"],
                                 registry=self.registry,
                                 buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.refusals = Counter("enclave_refusals_total", "Requests refused before the engine, by reason",
                                ["reason"], registry=self.registry)


class RateLimiter:
    """Per-identity moving-window limit (the ``limits`` package, in memory: one service process)."""

    def __init__(self, rate: str) -> None:
        from limits import parse
        from limits.storage import MemoryStorage
        from limits.strategies import MovingWindowRateLimiter

        self.item = parse(rate)
        self.limiter = MovingWindowRateLimiter(MemoryStorage())

    def admit(self, who: Principal) -> float | None:
        """None if admitted, else the seconds until the identity may try again."""
        key = f"{who.via}:{who.user}"
        if self.limiter.hit(self.item, key):
            return None
        reset_at, _ = self.limiter.get_window_stats(self.item, key)
        return max(1.0, reset_at - time.time())


class ConnectionBudget:
    """Requests per keep-alive connection: the last one's response says ``Connection: close``.

    Keep-alive connections outlive the balance they were opened in: a pool of eight connections that
    all landed on one of two service processes (asyncio accepts every pending connection in one go)
    stays there, and the other process idles. Closing each connection after ``limit`` requests
    lets the kernel hand the reconnect to whichever process accepts first. Connections are told
    apart by the client's address and port (ASGI gives no connection object); those that end
    before their budget are forgotten oldest first once more than ``MAX_TRACKED`` are counted.
    """

    MAX_TRACKED = 4096

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._served: dict[Any, int] = {}

    def last_request(self, scope: Scope) -> bool:
        """Count this request on its connection; True if the connection should close after it."""
        client = scope.get("client")
        if not self.limit or client is None:
            return False
        key = (tuple(client), tuple(scope.get("server") or ()))
        served = self._served.pop(key, 0) + 1
        if served >= self.limit:
            return True
        self._served[key] = served  # re-inserted: the dict stays in order of last use
        if len(self._served) > self.MAX_TRACKED:
            for stale in list(self._served)[: len(self._served) - self.MAX_TRACKED]:
                del self._served[stale]
        return False


class ServiceGuard:
    def __init__(self, app: ASGIApp, settings: Settings, metrics: ServiceMetrics) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        rate = settings.effective_rate_limit
        self.rate = RateLimiter(rate) if rate else None
        self.connections = ConnectionBudget(settings.keepalive_requests)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = state_of(scope)
        request_id = state["request_id"] = uuid.uuid4().hex
        state["started"] = time.perf_counter()
        status = {"code": 500}
        sent = False

        closing = self.connections.last_request(scope)

        async def send_with_id(message: Message) -> None:
            nonlocal sent
            if message["type"] == "http.response.start":
                status["code"], sent = message["status"], True
                message.setdefault("headers", [])
                extra = [(b"x-request-id", request_id.encode())]
                if closing:  # the server closes the connection once this response is sent
                    extra.append((b"connection", b"close"))
                message["headers"] = [*message["headers"], *extra]
            await send(message)

        try:
            refusal = await self._admit(scope)
            if refusal is not None:
                await refusal(scope, receive, send_with_id)
                return
            await self.app(scope, self._bounded(scope, receive), send_with_id)
        except Exception as exc:  # noqa: BLE001  # the last line: whatever escaped becomes an audited 500
            await self._failed(scope, exc, send_with_id, sent)
        finally:
            route = self._route_template(scope)
            self.metrics.latency.labels(route).observe(time.perf_counter() - state["started"])
            self.metrics.requests.labels(route, str(status["code"])).inc()

    async def _admit(self, scope: Scope) -> JSONResponse | None:
        """A refusal to send instead of the app's answer, or None to go on."""
        state = state_of(scope)
        rid = state["request_id"]
        if not scope["path"].startswith(PROTECTED_PREFIX):
            return None
        try:
            values = _identity_headers(scope["headers"])
            who = principal_from_headers(values.get(b"authorization"), values.get(b"x-enclave-user"),
                                         values.get(b"x-enclave-groups"), self.settings)
        except IdentityHeaderError as exc:
            self.metrics.refusals.labels("identity_headers").inc()
            return error_body(400, "bad_request", str(exc), rid)
        except AuthenticationError as exc:
            self.metrics.refusals.labels("unauthenticated").inc()
            return error_body(401, "unauthenticated", str(exc), rid, {"WWW-Authenticate": "Bearer"})
        state["principal"] = who
        if self.rate is not None:
            wait = self.rate.admit(who)
            if wait is not None:
                self.metrics.refusals.labels("rate_limited").inc()
                await audit_refusal(scope, "rate_limited")
                return error_body(429, "rate_limited",
                                  f"too many requests for this identity ({self.settings.effective_rate_limit})",
                                  rid, {"Retry-After": str(int(wait + 0.999))})
        length = _content_length(scope["headers"])
        if length is not None and length > self.settings.max_body_bytes:
            self.metrics.refusals.labels("body_too_large").inc()
            await audit_refusal(scope, "body_too_large")
            return error_body(413, "body_too_large",
                              f"the request body is larger than {self.settings.max_body_bytes} bytes", rid)
        return None

    def _bounded(self, scope: Scope, receive: Receive) -> Receive:
        """``receive`` that stops a body at the limit while it streams in, whatever Content-Length said,
        and a body still arriving ``body_timeout_s`` after the request began (a slowloris client)."""
        limit = self.settings.max_body_bytes
        deadline = state_of(scope)["started"] + self.settings.body_timeout_s
        seen = 0

        async def bounded() -> Message:
            nonlocal seen
            with anyio.move_on_after(max(0.0, deadline - time.perf_counter())) as waiting:
                message = await receive()
            if waiting.cancelled_caught:
                self.metrics.refusals.labels("body_timeout").inc()
                raise HTTPException(408, f"the request body did not arrive within {self.settings.body_timeout_s:g} s")
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    self.metrics.refusals.labels("body_too_large").inc()
                    # FastAPI passes an HTTPException raised while it reads the body to the handlers
                    raise HTTPException(413, f"the request body is larger than {limit} bytes")
            return message

        return bounded

    async def _failed(self, scope: Scope, exc: Exception, send: Send, started: bool) -> None:
        """An exception escaped the app: our bug or a failed step. 500 naming the request id, audited."""
        state = state_of(scope)
        error_type = exc.error_type if isinstance(exc, RequestFailedError) else type(exc).__name__
        log.error("request %s failed: %s", state["request_id"], error_type)
        if not isinstance(exc, RequestFailedError):  # the engine audited those itself
            try:
                await audit_refusal(scope, error_type, outcome="error")
            except Exception as audit_exc:  # noqa: BLE001  # still answer 500; the log says the audit failed
                # the type only (noqa TRY400): a traceback could quote the input
                log.error("request %s: the failure could not be audited (%s)", state["request_id"],  # noqa: TRY400
                          type(audit_exc).__name__)
        if started:  # a streamed answer broke off: the client sees a truncated stream
            return
        await error_body(500, "request_failed", "the request failed; quote its request id to the operator",
                         state["request_id"])(scope, _no_body, send)

    def _route_template(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is not None:
            return str(route.path)
        for candidate in scope["app"].router.routes:
            match, _ = candidate.matches(scope)
            if match == Match.FULL:
                return str(candidate.path)
        return "unmatched"


async def _no_body() -> Message:
    return {"type": "http.disconnect"}


def _identity_headers(headers: list[tuple[bytes, bytes]]) -> dict[bytes, str]:
    """The identity headers, decoded as UTF-8; a duplicated one is refused (a gateway that appends
    instead of replacing would otherwise let the client's own value through)."""
    found: dict[bytes, str] = {}
    for name, raw in headers:
        if name not in _IDENTITY_HEADERS:
            continue
        if name in found:
            raise IdentityHeaderError(f"the {name.decode()} header appears more than once")
        try:
            found[name] = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise IdentityHeaderError(f"the {name.decode()} header is not valid UTF-8") from None
    return found


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, raw in headers:
        if name == b"content-length":
            try:
                return int(raw)
            except ValueError:
                return None
    return None
