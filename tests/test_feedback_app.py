import re

import pytest
from fastapi.testclient import TestClient

from rlhfkit.feedback import app as app_module
from rlhfkit.feedback.app import create_app
from rlhfkit.feedback.export import export_rankings

XSS = ['</script><script>alert("x")</script>', '<img src=x onerror=alert(1)>', '<a href="javascript:alert(1)">hi</a>',
       '</textarea><b>bold</b>']


@pytest.fixture
def app(tmp_path):
    app = create_app(f"sqlite:///{tmp_path / 'f.db'}", secret=b"test-secret")
    store = app.state.store
    store.add_project("p", overlap=2)
    store.import_tasks("p", [{"prompt": "Pick one " + XSS[0], "responses": XSS}])
    return app


def client_for(app, name, role="labeler"):
    _, token = app.state.store.add_labeler(name, role)
    c = TestClient(app, base_url="http://testserver", follow_redirects=False)
    r = c.post("/login", data={"token": token})
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    return c


def task_data(c, assignment_url):
    html = c.get(assignment_url).text
    blob = re.search(r'<script type="application/json" id="task-data">(.*?)</script>', html, re.S).group(1)
    import json

    return html, json.loads(blob)


def test_sign_in_required_and_headers(app):
    c = TestClient(app, follow_redirects=False)
    r = c.get("/")
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert c.post("/login", data={"token": "nope"}).headers["location"] == "/login?error=1"
    assert c.post("/api/assignments/1/submit", json={}).status_code == 401
    login = c.get("/login")
    assert "default-src 'self'" in login.headers["content-security-policy"] and "<script>" not in login.text


def test_rank_submit_export_and_xss(app):
    ann = client_for(app, "ann")
    r = ann.get("/projects/p/next")
    assert r.status_code == 303
    url = r.headers["location"]
    html, data = task_data(ann, url)
    for payload in XSS:
        assert payload not in html  # never raw in the page: only escaped inside the JSON blob
    assert "<img" not in html and "</textarea><b>" not in html
    assert sorted(data["responses"]) == sorted(XSS)
    assignment = data["assignment"]
    body = {"judgement": {"ranks": [0, 1, 1, 2], "likert": [7, 4, 4, 1]}, "submission_key": data["submission_key"]}
    assert ann.post(f"/api/assignments/{assignment}/submit", json=body).status_code == 403  # no CSRF token
    headers = {"X-CSRF-Token": data["csrf"]}
    first = ann.post(f"/api/assignments/{assignment}/submit", json=body, headers=headers)
    again = ann.post(f"/api/assignments/{assignment}/submit", json=body, headers=headers)
    assert first.status_code == 200 and again.json() == first.json()
    (ranking,) = export_rankings(app.state.store, "p")
    shown_to_task = {text: i for i, text in enumerate(XSS)}
    expected = [None] * 4
    for shown_pos, text in enumerate(data["responses"]):
        expected[shown_to_task[text]] = body["judgement"]["ranks"][shown_pos]
    assert ranking.ranks == expected and ranking.labeler == "ann"
    bad = ann.post("/api/assignments/1/submit", json={"judgement": {"ranks": [0, 5]}, "submission_key": "z"},
                   headers=headers)
    assert bad.status_code == 422


def test_labelers_are_kept_apart_and_admin_is_admin_only(app):
    ann, bob = client_for(app, "ann"), client_for(app, "bob")
    url = ann.get("/projects/p/next").headers["location"]
    _, data = task_data(ann, url)
    _, bob_data = task_data(bob, bob.get("/projects/p/next").headers["location"])
    assert bob.get(url).status_code == 404  # ann's assignment does not exist for bob
    r = bob.post(f"/api/assignments/{data['assignment']}/submit", headers={"X-CSRF-Token": bob_data["csrf"]},
                 json={"judgement": {"ranks": [0, 0, 0, 0]}, "submission_key": "b"})
    assert r.status_code == 404
    assert ann.get("/admin").status_code == 403
    assert ann.post("/admin/labelers", data={"name": "eve", "csrf": data["csrf"]}).status_code == 403


def test_admin_pages(app):
    admin = client_for(app, "root", role="admin")
    page = admin.get("/admin")
    assert page.status_code == 200 and "Inter-labeler agreement" in page.text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    assert admin.post("/admin/labelers", data={"name": "cy"}).status_code == 403  # CSRF missing
    made = admin.post("/admin/labelers", data={"name": "cy", "csrf": csrf})
    assert made.status_code == 200 and "cy" in made.text
    assert admin.post("/admin/projects", data={"name": "duel", "kind": "pairwise", "csrf": csrf}).status_code == 303
    assert app.state.store.project("duel").kind == "pairwise"


def test_static_assets_served_locally(app):
    c = TestClient(app)
    js = c.get("/static/task.js")
    assert js.status_code == 200 and "textContent" in js.text and "innerHTML" not in js.text
    assert c.get("/static/app.css").status_code == 200


def test_admin_page_plots_throughput_and_agreement(app):
    import base64

    from rlhfkit.feedback.export import throughput

    for name, ranks in (("ann", [0, 1, 1, 2]), ("bob", [0, 1, 2, 2])):
        c = client_for(app, name)
        task = c.get("/api/projects/p/next").json()["task"]
        r = c.post(f"/api/assignments/{task['assignment']}/submit", headers={"X-CSRF-Token": task["csrf"]},
                   json={"judgement": {"ranks": ranks}, "submission_key": task["submission_key"]})
        assert r.status_code == 200
        assert c.get("/api/projects/p/next").json() == {"task": None}  # overlap 2: one task each
    rate = throughput(app.state.store, "p")
    assert rate["bucket_minutes"] == 1 and {k: sum(v) for k, v in rate["per_labeler"].items()} == {"ann": 1, "bob": 1}
    page = client_for(app, "root", role="admin").get("/admin").text
    src = re.search(r'<img class="plot" src="data:image/png;base64,([^"]+)"', page).group(1)
    assert base64.b64decode(src).startswith(b"\x89PNG")


def test_json_next_task_route_checks_sign_in_and_project(app):
    anonymous = TestClient(app, follow_redirects=False)
    assert anonymous.get("/api/projects/p/next").status_code == 401  # JSON routes answer, never redirect
    ann = client_for(app, "ann")
    assert ann.get("/api/projects/nope/next").status_code == 404
    task = ann.get("/api/projects/p/next").json()["task"]
    assert sorted(task["responses"]) == sorted(XSS) and task["csrf"] and task["kind"] == "ranking"
    again = ann.get("/api/projects/p/next").json()["task"]
    assert again["assignment"] == task["assignment"]  # the open lease comes back, not a second task


def test_malformed_submissions_are_4xx_with_a_message(app):
    """Issue #19 rows 4, 5, 7: every malformed body gets a 422 naming what was expected, never a 500, and
    nothing is stored."""
    ann = client_for(app, "ann")
    _, data = task_data(ann, ann.get("/projects/p/next").headers["location"])
    url, headers = f"/api/assignments/{data['assignment']}/submit", {"X-CSRF-Token": data["csrf"]}
    judgement = {"ranks": [0, 1, 1, 2]}
    for body in (b"{bad", b"[]", b"null", b"5", b"\xff\xfe"):
        r = ann.post(url, content=body, headers={**headers, "content-type": "application/json"})
        assert r.status_code == 422 and "JSON" in r.json()["error"], (body, r.text)
    for body in ({"judgement": judgement}, {"judgement": judgement, "submission_key": None},
                 {"judgement": judgement, "submission_key": "k" * 200_000},
                 {"judgement": "x", "submission_key": "k"},
                 {"judgement": {"ranks": [True, False, True, 2]}, "submission_key": "k"}):
        r = ann.post(url, json=body, headers=headers)
        assert r.status_code == 422, (str(body)[:80], r.text)
    assert app.state.store.progress("p")["judgements"] == 0
    r = ann.post(f"/api/assignments/{data['assignment']}/skip", content=b"[1]",
                 headers={**headers, "content-type": "application/json"})
    assert r.status_code == 422


def test_login_csrf_separate_csrf_key_and_hsts_behind_tls(app):
    """Issue #19 rows 8, 11, 12."""
    _, token = app.state.store.add_labeler("eve")
    c = TestClient(app, base_url="http://testserver", follow_redirects=False)
    r = c.post("/login", data={"token": token}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and "set-cookie" not in r.headers  # another site cannot sign a browser in
    r = c.post("/login", data={"token": token}, headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403
    assert c.post("/login", data={"token": token}, headers={"Origin": "null"}).status_code == 403  # sandboxed frame
    r = c.post("/login", data={"token": token}, headers={"Origin": "http://testserver"})
    assert r.status_code == 303 and "strict-transport-security" not in r.headers
    # the CSRF token is an HMAC of the session under a key of its own: the cookie itself is no token
    cookie = c.cookies.get("rlhfkit_session")
    assert app.state.sessions.csrf(cookie) != cookie
    bad = c.post("/api/assignments/1/submit", json={}, headers={"X-CSRF-Token": cookie})
    assert bad.status_code == 403
    tls = TestClient(app, base_url="https://testserver", follow_redirects=False)
    r = tls.post("/login", data={"token": token})
    assert r.headers["strict-transport-security"].startswith("max-age=") and "secure" in r.headers["set-cookie"].lower()


def test_sign_in_is_throttled_and_unknown_names_cost_the_same(app, monkeypatch):
    """Issue #19 rows 1 and 10."""
    from rlhfkit.feedback import store as store_mod

    app.state.store.add_labeler("root", role="admin", password="a long passphrase")
    c = TestClient(app, follow_redirects=False)
    for _ in range(10):
        assert c.post("/login", data={"name": "root", "password": "wrong"}).status_code == 303
    r = c.post("/login", data={"name": "root", "password": "a long passphrase"})  # even the right one, for now
    assert r.status_code == 429 and 0 < int(r.headers["retry-after"]) <= 300 and "set-cookie" not in r.headers
    assert r.headers["x-content-type-options"] == "nosniff"
    other = TestClient(app, follow_redirects=False)  # (the same test client address: 30 a client)
    assert other.post("/login", data={"name": "ann", "password": "wrong"}).status_code == 303
    # every password sign-in runs one key derivation, for a real name or not
    calls = []
    real = store_mod.hashlib.scrypt
    monkeypatch.setattr(store_mod.hashlib, "scrypt", lambda *a, **k: calls.append(1) or real(*a, **k))
    for name in ("root", "nobody"):
        app.state.store.by_password(name, "guess")
    assert calls == [1, 1] and app.state.store.by_password("nobody", "guess") is None


def test_body_limit_before_auth_ids_in_range_and_headers_on_errors(app):
    """Issue #19 rows 7 and 9: 413 before parsing or authentication; an id out of range is a 422; a 500 carries
    the security headers too."""
    anon = TestClient(app, follow_redirects=False)
    r = anon.post("/api/assignments/1/submit", content=b"{" + b" " * 2_000_000 + b"}",
                  headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.headers["content-security-policy"] == app_module.CSP

    def chunks():  # no Content-Length: counted as it streams, refused once past the limit
        for _ in range(40):
            yield b"x" * 50_000

    ann = client_for(app, "ann")
    _, data = task_data(ann, ann.get("/projects/p/next").headers["location"])
    headers = {"X-CSRF-Token": data["csrf"]}
    r = ann.post(f"/api/assignments/{data['assignment']}/submit", content=chunks(),
                 headers={**headers, "content-type": "application/json"})
    assert r.status_code == 413
    assert ann.post(f"/api/assignments/{2**63}/submit", json={}, headers=headers).status_code == 422
    assert ann.get(f"/assignments/{2**63}").status_code == 422

    # the database is lost under the running server (its tables gone): the request fails inside, a 500
    with app.state.store.engine.begin() as conn:
        for table in ("assignments", "sessions"):
            conn.exec_driver_sql(f"DROP TABLE {table}")
    quiet = TestClient(app, raise_server_exceptions=False, follow_redirects=False)
    quiet.cookies = ann.cookies
    r = quiet.post(f"/api/assignments/{data['assignment']}/submit", json={"judgement": {}, "submission_key": "k"},
                   headers=headers)
    assert r.status_code == 500 and r.json() == {"error": "internal error"}
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["cache-control"] == "no-store"


def test_sessions_end_on_sign_out_deactivation_and_new_token_and_are_audited(app):
    """Issue #19 rows 2 and 14: a copied cookie stops working when its session ends; sign-in, failures,
    sign-out and refusals are in the audit log with their actor."""
    from sqlalchemy import select

    from rlhfkit.feedback.store import AuditEntry

    store = app.state.store
    ann = client_for(app, "ann")
    html = ann.get("/").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', html).group(1)
    copy = TestClient(app, follow_redirects=False)
    copy.cookies = ann.cookies  # e.g. stolen
    assert copy.get("/api/projects/p/next").status_code == 200
    assert ann.post("/logout", data={"csrf": csrf}).status_code == 303
    assert copy.get("/api/projects/p/next").status_code == 401  # the session is over, not only the cookie

    bob = client_for(app, "bob")
    assert bob.get("/api/projects/p/next").status_code == 200
    store.deactivate("bob")
    assert bob.get("/api/projects/p/next").status_code == 401
    cy = client_for(app, "cy")
    new = store.rotate_token("cy")
    assert cy.get("/api/projects/p/next").status_code == 401
    fresh = TestClient(app, follow_redirects=False)
    assert fresh.post("/login", data={"token": new}).status_code == 303 and fresh.get("/").status_code == 200

    fresh.post("/login", data={"name": "nobody", "password": "wrong password"})
    dan = client_for(app, "dan")
    assert dan.get("/admin").status_code == 403
    with store.session() as s:
        log = [(e.action, e.actor_id, e.detail) for e in s.scalars(select(AuditEntry).order_by(AuditEntry.id))]
    actions = [a for a, _, _ in log]
    for action in ("sign_in", "sign_out", "deactivate", "rotate_token", "sign_in_failed", "denied"):
        assert action in actions, action
    denied = next(d for a, _, d in log if a == "denied")
    assert denied["status"] == 403 and denied["path"] == "/admin"
    assert next(actor for a, actor, _ in log if a == "denied") is not None  # dan, who asked
    assert next(d for a, _, d in log if a == "deactivate")["via"] == "cli"  # no labeler acted: who ran it
