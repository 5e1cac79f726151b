"""The labeling web app (FastAPI): labelers sign in, rank or write, submit; admins watch progress.

Security, because prompts and model outputs are untrusted text:
- every page is rendered by Jinja2 with autoescaping; task data reaches the page's script only as JSON
  inside <script type="application/json">, with `<`, `>` and `&` escaped so `</script>` cannot end it;
  scripts insert text with textContent, never innerHTML;
- an enforced Content-Security-Policy allows scripts and styles from this app only (no inline code);
- the session cookie is signed, HttpOnly, SameSite=Strict (and Secure behind TLS); state-changing
  requests carry a CSRF token bound to the session; the token and cookie are never readable by scripts
  beyond the CSRF value the page needs;
- every route checks the role, and assignments are looked up through their owner.
The session secret comes from RLHFKIT_SECRET or a generated file beside the database, never a constant.
"""

from __future__ import annotations

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from rlhfkit.feedback.auth import Sessions, Throttle, load_secret
from rlhfkit.feedback.routes import admin_pages, api, pages
from rlhfkit.feedback.store import Busy, FeedbackError, NotFound, Store

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
       "base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
           "Referrer-Policy": "same-origin",  # so browsers name this origin on its own posts (sign-in's check)
           "Cache-Control": "no-store"}
MAX_BODY = 1_000_000  # bytes: a judgement is a few kB, a written demonstration at most 20000 characters


class BodyLimit:
    """Refuses a request body over `limit` bytes with 413 before anything reads it (before parsing, before
    authentication), by its Content-Length or, when it streams without one, as the bytes arrive."""

    def __init__(self, app, limit: int = MAX_BODY):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.limit:
            return await self._refuse(send)
        seen, started = 0, False

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except* _TooLarge:  # (raised inside the app's task groups, it may come back wrapped in a group)
            if not started:
                await self._refuse(send)

    async def _refuse(self, send):
        body = b'{"error":"request body too large"}'
        headers = [(k.lower().encode(), v.encode()) for k, v in HEADERS.items()]
        await send({"type": "http.response.start", "status": 413, "headers": headers + [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


def create_app(db_url: str = "sqlite:///feedback.db", secret: bytes | None = None) -> FastAPI:
    store = Store(db_url)
    app = FastAPI(title="rlhfkit labeling", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store
    app.state.sessions = Sessions(secret or load_secret(db_url), store)
    app.state.throttle = Throttle()
    app.mount("/static", StaticFiles(packages=[("rlhfkit.feedback", "static")]), name="static")
    for router in (pages, api, admin_pages):
        app.include_router(router)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response: Response = await call_next(request)
        response.headers.update(HEADERS)
        if request.url.scheme == "https":  # served over TLS (directly, or by a trusted proxy): keep it that way
            response.headers["Strict-Transport-Security"] = "max-age=31536000"
        return response

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception):
        # a bug: the client learns nothing of it but that it happened, under the same headers as any page
        return JSONResponse({"error": "internal error"}, 500, headers=HEADERS)

    def denied(request: Request, status: int) -> None:
        """An audit entry for a refused request (403, 404), with the signed-in labeler where there is one."""
        user = app.state.sessions.of(request)
        store.audit_event("denied", user.labeler.id if user else None, status=status, method=request.method,
                          path=request.url.path[:200])

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        if exc.status_code == 401 and request.method == "GET" and not request.url.path.startswith("/api/"):
            return RedirectResponse("/login", 303)
        if exc.status_code == 403:
            denied(request, 403)
        return JSONResponse({"error": exc.detail}, exc.status_code)

    @app.exception_handler(FeedbackError)
    async def refused(request: Request, exc: FeedbackError):
        # what the store refuses, with its reason: unknown (404), busy (503), invalid (422)
        status = 404 if isinstance(exc, NotFound) else 503 if isinstance(exc, Busy) else 422
        if status == 404:
            denied(request, 404)
        return JSONResponse({"error": str(exc)}, status)

    app.add_middleware(BodyLimit)
    return app
