"""The router: HTTP only. Identity, request parsing, status codes, metrics; the work is in serving.py.

Every route that reads documents depends on ``PrincipalDep``: no verified identity gives 401,
never an anonymous answer. Errors come back as a typed body carrying the request id.
"""


import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from rag.config import Settings, load_settings
from rag.errors import AuthenticationError, EnclaveError
from rag.index import faiss_build
from rag.llm.admission import GenerationBusyError
from rag.query import QueryEngine
from rag.service import serving
from rag.service.auth import Principal, principal_from_headers
from rag.service.page import add_chat_page
from rag.service.protocol import (
    AskRequest,
    AskResponse,
    ChatCompletionRequest,
    ErrorResponse,
    SearchRequest,
    SearchResponse,
)

log = logging.getLogger(__name__)


def _error(status: int, kind: str, message: str, request_id: str,
           headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"type": kind, "message": message, "request_id": request_id}}
    return JSONResponse(status_code=status, content=body, headers=headers)


def create_app(settings: Settings | None = None,
               engine_factory: Callable[[Settings], QueryEngine] | None = None) -> FastAPI:
    settings = settings or load_settings()
    settings.require_secrets(serving=True)
    index_backend = faiss_build().describe()  # refuses to start without faiss, or with two builds installed
    factory = engine_factory or (lambda s: QueryEngine(s))
    registry = CollectorRegistry()
    requests = Counter("enclave_requests_total", "Requests by route and outcome", ["route", "outcome"],
                       registry=registry)
    latency = Histogram("enclave_request_seconds", "Request latency", ["route"], registry=registry,
                        buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("starting with index backend %s", index_backend)
        engine = factory(settings)
        engine.warm_up()
        app.state.engine = engine
        yield
        engine.close()

    app = FastAPI(title="Enclave", version="0.1.0", lifespan=lifespan,
                  responses={401: {"model": ErrorResponse}, 500: {"model": ErrorResponse}})

    def principal(authorization: Annotated[str | None, Header()] = None,
                  x_enclave_user: Annotated[str | None, Header()] = None,
                  x_enclave_groups: Annotated[str | None, Header()] = None) -> Principal:
        return principal_from_headers(authorization, x_enclave_user, x_enclave_groups, settings)

    def engine(request: Request) -> QueryEngine:
        eng: QueryEngine = request.app.state.engine
        return eng

    PrincipalDep = Annotated[Principal, Depends(principal)]
    EngineDep = Annotated[QueryEngine, Depends(engine)]

    @app.middleware("http")
    async def request_ids(request: Request, call_next: Callable[[Request], Any]) -> Any:
        request.state.request_id = serving.new_request_id()
        started = time.perf_counter()
        response = await call_next(request)
        route = request.url.path
        latency.labels(route).observe(time.perf_counter() - started)
        requests.labels(route, str(response.status_code)).inc()
        response.headers["x-request-id"] = request.state.request_id
        return response

    @app.exception_handler(AuthenticationError)
    async def unauthenticated(request: Request, exc: AuthenticationError) -> JSONResponse:
        return _error(401, "unauthenticated", str(exc), request.state.request_id, {"WWW-Authenticate": "Bearer"})

    @app.exception_handler(EnclaveError)
    async def enclave_error(request: Request, exc: EnclaveError) -> JSONResponse:
        log.warning("request failed", extra={"request_id": request.state.request_id, "error": type(exc).__name__})
        return _error(500, type(exc).__name__, str(exc), request.state.request_id)

    @app.exception_handler(GenerationBusyError)
    async def busy(request: Request, exc: GenerationBusyError) -> JSONResponse:
        return _error(503, "busy", str(exc), request.state.request_id, {"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(ValueError)
    async def bad_request(request: Request, exc: ValueError) -> JSONResponse:
        return _error(400, "bad_request", str(exc), request.state.request_id)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "index_backend": index_backend}

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/search", response_model=SearchResponse)
    def search(req: SearchRequest, who: PrincipalDep, eng: EngineDep, request: Request) -> SearchResponse:
        return serving.search(eng, who, req, request.state.request_id)

    @app.post("/v1/ask", response_model=AskResponse)
    def ask(req: AskRequest, who: PrincipalDep, eng: EngineDep, request: Request) -> AskResponse:
        return serving.ask(eng, who, req, request.state.request_id)

    @app.post("/v1/chat/completions", response_model=None)
    def chat(req: ChatCompletionRequest, who: PrincipalDep, eng: EngineDep, request: Request) -> Any:
        if not req.stream:
            return serving.chat(eng, who, req, request.state.request_id)
        # retrieval, admission and the prompt record happen here, before any byte is sent
        stream = serving.open_chat(eng, who, req, request.state.request_id)
        events = serving.sse(serving.chat_stream(eng, who, req, stream))
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.get("/v1/whoami")
    def whoami(who: PrincipalDep) -> dict[str, Any]:
        return {"user": who.user, "groups": list(who.groups), "authenticated_via": who.via}

    add_chat_page(app)

    @app.get("/v1/models")
    def models(who: PrincipalDep) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "enclave", "object": "model", "owned_by": "enclave"}]}

    return app
