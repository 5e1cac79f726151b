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

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from pathlib import Path

from fastapi import FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, PackageLoader, select_autoescape

from rlhfkit.data.records import METADATA_FLAGS
from rlhfkit.feedback.export import agreement, throughput
from rlhfkit.feedback.plots import admin_plot_png
from rlhfkit.feedback.store import PROMPT_LABELS, FeedbackError, Labeler, NotFound, Project, Store

COOKIE = "rlhfkit_session"
SESSION_SECONDS = 12 * 3600
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
       "base-uri 'none'; frame-ancestors 'none'; form-action 'self'")

templates = Environment(loader=PackageLoader("rlhfkit.feedback", "templates"), autoescape=select_autoescape(["html"]))


def load_secret(db_url: str) -> bytes:
    if os.environ.get("RLHFKIT_SECRET"):
        return os.environ["RLHFKIT_SECRET"].encode()
    folder = Path(db_url.removeprefix("sqlite:///")).parent if db_url.startswith("sqlite:///") else Path.cwd()
    path = folder / ".rlhfkit-secret"
    if not path.exists():
        try:  # created readable by the owner only; a second process starting at once reads the first's
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        except FileExistsError:
            time.sleep(0.1)
    return path.read_text().strip().encode()


def json_for_script(value) -> str:
    """JSON safe inside <script type="application/json">: no '<', '>' or '&' survives to end the element."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def create_app(db_url: str = "sqlite:///feedback.db", secret: bytes | None = None) -> FastAPI:
    store = Store(db_url)
    key = secret or load_secret(db_url)
    app = FastAPI(title="rlhfkit labeling", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(packages=[("rlhfkit.feedback", "static")]), name="static")

    # ---- sessions and CSRF ----

    def sign(payload: str) -> str:
        return hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()

    def new_session(labeler_id: int) -> str:
        payload = f"{labeler_id}:{int(time.time()) + SESSION_SECONDS}:{secrets.token_hex(8)}"
        return f"{payload}:{sign(payload)}"

    def session_of(request: Request) -> tuple[Labeler, str] | None:
        raw = request.cookies.get(COOKIE, "")
        payload, _, sig = raw.rpartition(":")
        if not payload or not hmac.compare_digest(sign(payload), sig):
            return None
        labeler_id, expires, _nonce = payload.split(":")
        if int(expires) < time.time():
            return None
        with store.session() as s:
            lab = s.get(Labeler, int(labeler_id))
        return (lab, sign("csrf:" + payload)) if lab and lab.active else None

    def require(request: Request, admin: bool = False, csrf: str | None = None) -> tuple[Labeler, str]:
        found = session_of(request)
        if found is None:
            raise HTTPException(401, "sign in first")
        lab, token = found
        if admin and lab.role != "admin":
            raise HTTPException(403, "admins only")
        if csrf is not None and not hmac.compare_digest(csrf, token):
            raise HTTPException(403, "bad or missing CSRF token; reload the page")
        return lab, token

    def page(template: str, **context) -> HTMLResponse:
        return HTMLResponse(templates.get_template(template).render(**context))

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response: Response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        if exc.status_code == 401 and request.method == "GET" and not request.url.path.startswith("/api/"):
            return RedirectResponse("/login", 303)
        return JSONResponse({"error": exc.detail}, exc.status_code)

    # ---- sign in ----

    @app.get("/login")
    def login_page(error: str = "") -> HTMLResponse:
        return page("login.html", error=error)

    @app.post("/login")
    def login(request: Request, name: str = Form(""), password: str = Form(""), token: str = Form("")):
        lab = store.by_token(token) if token else store.by_password(name, password)
        if lab is None:
            return RedirectResponse("/login?error=1", 303)
        response = RedirectResponse("/", 303)
        response.set_cookie(COOKIE, new_session(lab.id), max_age=SESSION_SECONDS, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https", path="/")
        return response

    @app.post("/logout")
    def logout(request: Request, csrf: str = Form("")):
        require(request, csrf=csrf)
        response = RedirectResponse("/login", 303)
        response.delete_cookie(COOKIE, path="/")
        return response

    # ---- labelers ----

    @app.get("/")
    def home(request: Request) -> HTMLResponse:
        lab, csrf = require(request)
        return page("home.html", labeler=lab, projects=store_rows(store), csrf=csrf)

    @app.get("/projects/{name}/next")
    def next_task(request: Request, name: str):
        lab, _ = require(request)
        try:
            a = store.lease_next(lab.id, name)
        except NotFound:
            raise HTTPException(404, "no such project") from None
        if a is None:
            return page("done.html", labeler=lab, project=name)
        return RedirectResponse(f"/assignments/{a.id}", 303)

    def task_view(lab: Labeler, assignment_id: int, csrf: str) -> tuple[dict, Project]:
        try:
            with store.session() as s:
                a, task, project = store.own_assignment(s, lab.id, assignment_id)
        except NotFound:
            raise HTTPException(404, "no such assignment") from None
        responses = task.payload.get("responses") or []
        shown = [responses[i] for i in a.order]  # the labeler sees a shuffled order; it maps back on submit
        data = {"assignment": a.id, "kind": project.kind, "status": a.status, "project": project.name,
                "prompt": task.payload["prompt"], "responses": shown, "flags": list(METADATA_FLAGS),
                "prompt_labels": list(PROMPT_LABELS), "csrf": csrf, "submission_key": secrets.token_hex(16)}
        return data, project

    @app.get("/assignments/{assignment_id}")
    def assignment_page(request: Request, assignment_id: int) -> HTMLResponse:
        lab, csrf = require(request)
        data, project = task_view(lab, assignment_id, csrf)
        return page("task.html", labeler=lab, project=project, data=json_for_script(data), csrf=csrf)

    @app.get("/api/projects/{name}/next")
    def next_task_json(request: Request, name: str):
        """The next task as JSON, for labeling clients other than the page: {"task": {...}} or {"task": null}.
        Other sites cannot read it (no CORS), so handing the CSRF token over here is safe."""
        lab, csrf = require(request)
        try:
            a = store.lease_next(lab.id, name)
        except NotFound:
            raise HTTPException(404, "no such project") from None
        except FeedbackError as e:
            raise HTTPException(503, str(e)) from None
        return {"task": None if a is None else task_view(lab, a.id, csrf)[0]}

    @app.post("/api/assignments/{assignment_id}/submit")
    async def submit(request: Request, assignment_id: int):
        body = await request.json()
        lab, _ = require(request, csrf=request.headers.get("X-CSRF-Token", ""))
        try:
            j = store.submit(lab.id, assignment_id, body.get("judgement") or {}, str(body.get("submission_key", "")))
        except NotFound:
            raise HTTPException(404, "no such assignment") from None
        except FeedbackError as e:
            raise HTTPException(422, str(e)) from None
        return {"judgement": j.id}

    @app.post("/api/assignments/{assignment_id}/skip")
    async def skip(request: Request, assignment_id: int):
        body = await request.json()
        lab, _ = require(request, csrf=request.headers.get("X-CSRF-Token", ""))
        try:
            store.skip(lab.id, assignment_id, str(body.get("reason", "")))
        except NotFound:
            raise HTTPException(404, "no such assignment") from None
        except FeedbackError as e:
            raise HTTPException(422, str(e)) from None
        return {"skipped": assignment_id}

    # ---- admins ----

    @app.get("/admin")
    def admin(request: Request) -> HTMLResponse:
        lab, csrf = require(request, admin=True)
        reports = []
        for name, kind in store_rows(store):
            agree, rate = agreement(store, name), throughput(store, name)
            plot = None
            if rate["buckets"]:  # rendered here, shown as a data: image (the CSP allows img-src data:)
                plot = "data:image/png;base64," + base64.b64encode(admin_plot_png(rate, agree)).decode()
            reports.append({"name": name, "kind": kind, "progress": store.progress(name), "agreement": agree,
                            "throughput": rate, "plot": plot})
        return page("admin.html", labeler=lab, reports=reports, csrf=csrf)

    @app.post("/admin/labelers")
    def admin_add_labeler(request: Request, csrf: str = Form(""), name: str = Form(...), role: str = Form("labeler")):
        lab, _ = require(request, admin=True, csrf=csrf)
        try:
            _, token = store.add_labeler(name, role, actor=lab.id)
        except FeedbackError as e:
            raise HTTPException(422, str(e)) from None
        return page("token.html", labeler=lab, name=name, token=token)

    @app.post("/admin/projects")
    def admin_add_project(request: Request, csrf: str = Form(""), name: str = Form(...), kind: str = Form("ranking"),
                          overlap: int = Form(1)):
        lab, _ = require(request, admin=True, csrf=csrf)
        try:
            store.add_project(name, kind, overlap, actor=lab.id)
        except FeedbackError as e:
            raise HTTPException(422, str(e)) from None
        return RedirectResponse("/admin", 303)

    app.state.store = store
    return app


def store_rows(store: Store) -> list[tuple[str, str]]:
    from sqlalchemy import select

    with store.session() as s:
        return [tuple(r) for r in s.execute(select(Project.name, Project.kind).order_by(Project.id))]
