"""The labeling app's routes: pages for labelers, the JSON API, and the admin pages. Who may call a route is
its dependencies (`feedback.auth`); what the store refuses (NotFound, FeedbackError) becomes a 4xx in one
place, `app.py`'s exception handlers."""

from __future__ import annotations

import base64
import json
import secrets
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Path, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from jinja2 import Environment, PackageLoader, select_autoescape

from rlhfkit.data.records import METADATA_FLAGS
from rlhfkit.feedback.auth import (
    COOKIE,
    SESSION_SECONDS,
    SignedIn,
    admin,
    admin_form,
    csrf_form,
    csrf_header,
    get_store,
    same_origin,
    signed_in,
)
from rlhfkit.feedback.export import agreement, throughput
from rlhfkit.feedback.plots import admin_plot_png
from rlhfkit.feedback.store import PROMPT_LABELS, FeedbackError, Store

templates = Environment(loader=PackageLoader("rlhfkit.feedback", "templates"), autoescape=select_autoescape(["html"]))
pages, api, admin_pages = APIRouter(), APIRouter(prefix="/api"), APIRouter(prefix="/admin")
# ids the database can hold (a 2**63 in the URL is a 422, not an overflow deep in the driver)
AssignmentId = Annotated[int, Path(ge=1, le=2**31 - 1)]


def page(template: str, **context) -> HTMLResponse:
    return HTMLResponse(templates.get_template(template).render(**context))


def json_for_script(value) -> str:
    """JSON safe inside <script type="application/json">: no '<', '>' or '&' survives to end the element."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def task_view(store: Store, user: SignedIn, assignment_id: int) -> tuple[dict, object]:
    """What the task page (and the JSON API) shows of an assignment the user owns, and its project."""
    with store.session() as s:
        a, task, project = store.own_assignment(s, user.labeler.id, assignment_id)
    responses = task.payload.get("responses") or []
    shown = [responses[i] for i in a.order]  # the labeler sees a shuffled order; it maps back on submit
    data = {"assignment": a.id, "kind": project.kind, "status": a.status, "project": project.name,
            "prompt": task.payload["prompt"], "responses": shown, "flags": list(METADATA_FLAGS),
            "prompt_labels": list(PROMPT_LABELS), "csrf": user.csrf, "submission_key": secrets.token_hex(16)}
    return data, project


# ---- sign in, and labeling in the browser ----

@pages.get("/login")
def login_page(error: str = "") -> HTMLResponse:
    return page("login.html", error=error)


@pages.post("/login", dependencies=[Depends(same_origin)])
def login(request: Request, name: str = Form(""), password: str = Form(""), token: str = Form(""),
          store: Store = Depends(get_store)):
    throttle = request.app.state.throttle
    keys = (f"client:{request.client.host if request.client else '-'}",) + (() if token else (f"name:{name}",))
    wait = throttle.retry_after(*keys)
    if wait:
        return JSONResponse({"error": f"too many failed sign-ins; try again in {wait} s"}, 429,
                            headers={"Retry-After": str(wait)})
    lab = store.by_token(token) if token else store.by_password(name, password)
    if lab is None:
        throttle.failed(*keys)
        store.audit_event("sign_in_failed", name=name[:100] if not token else None, client=keys[0])
        return RedirectResponse("/login?error=1", 303)
    throttle.succeeded(f"name:{lab.name}")
    response = RedirectResponse("/", 303)
    response.set_cookie(COOKIE, request.app.state.sessions.new(lab.id), max_age=SESSION_SECONDS, httponly=True,
                        samesite="strict", secure=request.url.scheme == "https", path="/")
    return response


@pages.post("/logout")
def logout(user: SignedIn = Depends(csrf_form), store: Store = Depends(get_store)):
    store.end_session(user.session)  # the cookie is worthless from now on, wherever a copy of it is
    response = RedirectResponse("/login", 303)
    response.delete_cookie(COOKIE, path="/")
    return response


@pages.get("/")
def home(user: SignedIn = Depends(signed_in), store: Store = Depends(get_store)) -> HTMLResponse:
    return page("home.html", labeler=user.labeler, projects=store.projects(), csrf=user.csrf)


@pages.get("/projects/{name}/next")
def next_task(name: str, user: SignedIn = Depends(signed_in), store: Store = Depends(get_store)):
    a = store.lease_next(user.labeler.id, name)
    if a is None:
        return page("done.html", labeler=user.labeler, project=name)
    return RedirectResponse(f"/assignments/{a.id}", 303)


@pages.get("/assignments/{assignment_id}")
def assignment_page(assignment_id: AssignmentId, user: SignedIn = Depends(signed_in),
                    store: Store = Depends(get_store)) -> HTMLResponse:
    data, project = task_view(store, user, assignment_id)
    return page("task.html", labeler=user.labeler, project=project, data=json_for_script(data), csrf=user.csrf)


# ---- the JSON API (the page's script and LabelingClient) ----

@api.get("/projects/{name}/next")
def next_task_json(name: str, user: SignedIn = Depends(signed_in), store: Store = Depends(get_store)):
    """The next task as JSON, for labeling clients other than the page: {"task": {...}} or {"task": null}.
    Other sites cannot read it (no CORS), so handing the CSRF token over here is safe."""
    a = store.lease_next(user.labeler.id, name)
    return {"task": None if a is None else task_view(store, user, a.id)[0]}


async def json_object(request: Request, fields: str) -> dict:
    """The request's JSON object, or a 422 that says what was expected (never a 500 on a malformed body)."""
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise FeedbackError(f"the body is not valid JSON; expected an object {{{fields}}}") from None
    if not isinstance(body, dict):
        raise FeedbackError(f"the body must be a JSON object {{{fields}}}")
    return body


@api.post("/assignments/{assignment_id}/submit")
async def submit(request: Request, assignment_id: AssignmentId, user: SignedIn = Depends(csrf_header),
                 store: Store = Depends(get_store)):
    body = await json_object(request, "judgement, submission_key")  # read only once the caller is known
    j = store.submit(user.labeler.id, assignment_id, body.get("judgement") or {}, body.get("submission_key"))
    return {"judgement": j.id}


@api.post("/assignments/{assignment_id}/skip")
async def skip(request: Request, assignment_id: AssignmentId, user: SignedIn = Depends(csrf_header),
               store: Store = Depends(get_store)):
    body = await json_object(request, "reason")
    reason = body.get("reason")
    store.skip(user.labeler.id, assignment_id, reason if isinstance(reason, str) else "")
    return {"skipped": assignment_id}


# ---- admins ----

@admin_pages.get("")
def admin_page(user: SignedIn = Depends(admin), store: Store = Depends(get_store)) -> HTMLResponse:
    reports = []
    for name, kind in store.projects():
        agree, rate = agreement(store, name), throughput(store, name)
        plot = None
        if rate["buckets"]:  # rendered here, shown as a data: image (the CSP allows img-src data:)
            plot = "data:image/png;base64," + base64.b64encode(admin_plot_png(rate, agree)).decode()
        reports.append({"name": name, "kind": kind, "progress": store.progress(name), "agreement": agree,
                        "throughput": rate, "plot": plot})
    return page("admin.html", labeler=user.labeler, reports=reports, csrf=user.csrf)


@admin_pages.post("/labelers")
def admin_add_labeler(name: str = Form(...), role: str = Form("labeler"), user: SignedIn = Depends(admin_form),
                      store: Store = Depends(get_store)):
    _, token = store.add_labeler(name, role, actor=user.labeler.id)
    return page("token.html", labeler=user.labeler, name=name, token=token)


@admin_pages.post("/projects")
def admin_add_project(name: str = Form(...), kind: str = Form("ranking"), overlap: int = Form(1),
                      user: SignedIn = Depends(admin_form), store: Store = Depends(get_store)):
    store.add_project(name, kind, overlap, actor=user.labeler.id)
    return RedirectResponse("/admin", 303)
