"""The chat page at ``/``: static files from the package, served under a strict Content-Security-Policy.

The page holds no data: it is the same HTML for everyone and reaches documents only through the
API (``/v1/whoami``, ``/v1/chat/completions``), with the reader's identity as the API takes it
(a bearer token the page keeps for the browser tab, or the organisation's gateway headers in
trusted-header mode). No identity, no data. Nothing is loaded from elsewhere: no CDN, fonts or
scripts from outside, and the CSP forbids them (and inline script) should anyone add one.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, Response

STATIC = Path(__file__).resolve().parent / "static"

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self'",
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
])
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_ASSETS = {"chat.js": "text/javascript", "chat.css": "text/css"}


def add_chat_page(app: FastAPI) -> None:
    """Serve ``/`` and its assets (a fixed list: nothing else under static/ is reachable)."""

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html", headers=PAGE_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    def asset(name: str) -> Response:
        media_type = _ASSETS.get(name)
        if media_type is None:
            return Response(status_code=404)
        return FileResponse(STATIC / name, media_type=media_type, headers=PAGE_HEADERS)
