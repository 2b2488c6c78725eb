"""The router: HTTP only. Identity, request parsing, status codes, metrics; the work is in serving.py.

Every route under /v1/ needs a verified identity: :mod:`rag.service.guard` resolves it (401
otherwise) and applies the size and rate limits before FastAPI reads the body. Errors come back
as a typed body carrying the request id; a 422 names each field and rule, never the value sent.
Only the client's input is a 4xx: a failure of our own code is a 500, audited.
"""


import hmac
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from rag.config import Settings, load_settings, secure_home
from rag.errors import AccessDeniedError, AuthenticationError, RequestFailedError
from rag.index import faiss_build
from rag.llm.admission import GenerationBusyError
from rag.query import QueryEngine
from rag.service import serving
from rag.service.auth import Principal
from rag.service.guard import ServiceGuard, ServiceMetrics, audit_refusal, error_body
from rag.service.page import add_chat_page
from rag.service.protocol import (
    AskRequest,
    AskResponse,
    ChatCompletionRequest,
    ErrorResponse,
    RevealRequest,
    RevealResponse,
    SearchRequest,
    SearchResponse,
)

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None,
               engine_factory: Callable[[Settings], QueryEngine] | None = None) -> FastAPI:
    settings = settings or load_settings()
    settings.require_secrets(serving=True)
    secure_home(settings)
    index_backend = faiss_build().describe()  # refuses to start without faiss, or with two builds installed
    factory = engine_factory or (lambda s: QueryEngine(s))
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("starting with index backend %s", index_backend)
        engine = factory(settings)
        engine.warm_up()
        app.state.engine = engine
        exporter = None
        if settings.metrics_port is not None:  # a listener of its own, not exposed on the service's port
            from prometheus_client import start_http_server

            exporter = start_http_server(settings.metrics_port, settings.metrics_host, registry=metrics.registry)
        yield
        if exporter is not None:
            exporter[0].shutdown()
        engine.close()

    docs = settings.docs_enabled
    app = FastAPI(title="Enclave", version="0.1.0", lifespan=lifespan,
                  docs_url="/docs" if docs else None, redoc_url="/redoc" if docs else None,
                  responses={401: {"model": ErrorResponse}, 413: {"model": ErrorResponse},
                             422: {"model": ErrorResponse}, 429: {"model": ErrorResponse},
                             500: {"model": ErrorResponse}})
    app.add_middleware(ServiceGuard, settings=settings, metrics=metrics)

    # Both dependencies only read request state: async, so FastAPI calls them on the event loop
    # instead of handing each to a worker thread and back (two thread hops per request saved).
    async def principal(request: Request) -> Principal:
        who: Principal | None = getattr(request.state, "principal", None)
        if who is None:  # a route outside the guarded prefix that asks for an identity: deny
            raise AuthenticationError("no verified identity: send 'Authorization: Bearer <token>'")
        return who

    async def engine(request: Request) -> QueryEngine:
        eng: QueryEngine = request.app.state.engine
        return eng

    PrincipalDep = Annotated[Principal, Depends(principal)]
    EngineDep = Annotated[QueryEngine, Depends(engine)]

    @app.exception_handler(AuthenticationError)
    async def unauthenticated(request: Request, exc: AuthenticationError) -> JSONResponse:
        return error_body(401, "unauthenticated", str(exc), request.state.request_id, {"WWW-Authenticate": "Bearer"})

    @app.exception_handler(AccessDeniedError)
    async def forbidden(request: Request, exc: AccessDeniedError) -> JSONResponse:
        return error_body(403, "forbidden", str(exc), request.state.request_id)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [{"field": ".".join(str(p) for p in e.get("loc", ())), "rule": str(e.get("type", "")),
                   "message": str(e.get("msg", ""))} for e in exc.errors()]
        await audit_refusal(request.scope, "invalid_request")
        return error_body(422, "invalid_request", "the request does not match the schema", request.state.request_id,
                          fields=fields)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed", 408: "body_timeout",
                413: "body_too_large"}.get(exc.status_code, "bad_request")
        await audit_refusal(request.scope, kind)  # an authenticated search/ask/chat refused: one record
        return error_body(exc.status_code, kind, str(exc.detail), request.state.request_id,
                          dict(exc.headers) if exc.headers else None)

    @app.exception_handler(GenerationBusyError)
    async def busy(request: Request, exc: GenerationBusyError) -> JSONResponse:
        return error_body(503, "busy", str(exc), request.state.request_id, {"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(RequestFailedError)
    async def failed(request: Request, exc: RequestFailedError) -> JSONResponse:
        # The engine audited the failure already. A full generation queue behind an ask is the
        # client's to retry (503), anything else is ours (500, the request id, never the cause's text).
        if isinstance(exc.__cause__, GenerationBusyError):
            return await busy(request, exc.__cause__)
        return error_body(500, "request_failed", "the request failed; quote its request id to the operator",
                          request.state.request_id)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "index_backend": index_backend}

    metrics_token = settings.metrics_token.get_secret_value()

    @app.get("/metrics", response_class=PlainTextResponse, include_in_schema=False)
    def prometheus(request: Request) -> PlainTextResponse:
        if not metrics_token:  # off here: no token set (a separate listener may serve them)
            raise StarletteHTTPException(404, "Not Found")
        sent = request.headers.get("authorization", "")
        if not hmac.compare_digest(sent.encode(), f"Bearer {metrics_token}".encode()):
            raise StarletteHTTPException(401, "/metrics needs 'Authorization: Bearer <ENCLAVE_METRICS_TOKEN>'",
                                         headers={"WWW-Authenticate": "Bearer"})
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # search and ask block (models, catalog, audit commit): they run in a worker thread. The route
    # itself is async so that FastAPI checks the response model on the event loop, not in a second
    # hop to a worker thread as it does for a sync route.
    @app.post("/v1/search", response_model=SearchResponse)
    async def search(req: SearchRequest, who: PrincipalDep, eng: EngineDep, request: Request) -> SearchResponse:
        out = await run_in_threadpool(serving.search, eng, who, req, request.state.request_id)
        request.state.audited = True
        return out

    @app.post("/v1/ask", response_model=AskResponse)
    async def ask(req: AskRequest, who: PrincipalDep, eng: EngineDep, request: Request) -> AskResponse:
        out = await run_in_threadpool(serving.ask, eng, who, req, request.state.request_id)
        request.state.audited = True
        return out

    @app.post("/v1/chat/completions", response_model=None)
    def chat(req: ChatCompletionRequest, who: PrincipalDep, eng: EngineDep, request: Request) -> Any:
        if not req.stream:
            body = serving.chat(eng, who, req, request.state.request_id)
            request.state.audited = True
            return body
        # retrieval, admission and the prompt record happen here, before any byte is sent
        stream = serving.open_chat(eng, who, req, request.state.request_id)
        request.state.audited = True
        events = serving.sse(serving.chat_stream(eng, who, req, stream))
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.get("/v1/whoami")
    async def whoami(who: PrincipalDep) -> dict[str, Any]:
        return {"user": who.user, "groups": list(who.groups), "authenticated_via": who.via}

    add_chat_page(app)

    @app.post("/v1/reveal", response_model=RevealResponse, responses={403: {"model": ErrorResponse}})
    def reveal(req: RevealRequest, who: PrincipalDep, eng: EngineDep) -> RevealResponse:
        return serving.reveal(eng, who, req)

    @app.get("/v1/models")
    async def models(who: PrincipalDep) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "enclave", "object": "model", "owned_by": "enclave"}]}

    return app
