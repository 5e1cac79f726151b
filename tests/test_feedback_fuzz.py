"""Issue #19, the HTTP API fuzzed: generated bodies, paths and headers on every route, as a labeler, an admin and
nobody: never a 500, never a judgement stored that validation should refuse, exports unchanged by refusals."""

import json
from urllib.parse import quote

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_feedback_app import client_for, task_data

from rlhfkit.feedback.app import create_app
from rlhfkit.feedback.export import export_rankings

values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                      lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=10), kids,
                                                                                max_size=4), max_leaves=10)
judgements = st.fixed_dictionaries({}, optional={
    "ranks": st.lists(st.integers(-2, 5) | st.booleans() | st.none(), max_size=5) | values,
    "likert": st.lists(st.integers(-1, 9) | st.none() | st.booleans(), max_size=5) | values,
    "flags": st.lists(st.lists(st.sampled_from(["hallucination", "harmful", "x"]), max_size=2), max_size=5) | values,
    "prompt_labels": values, "comment": values, "choice": values, "response": values})
bodies = st.one_of(st.fixed_dictionaries({"judgement": judgements | values,
                                          "submission_key": st.text(max_size=120) | values}), values)
SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))


def make(tmp_path):
    app = create_app(f"sqlite:///{tmp_path / 'fuzz.db'}", secret=b"x" * 32)
    app.state.store.add_project("p", overlap=3)
    app.state.store.import_tasks("p", [{"prompt": f"q{i}", "responses": ["a", "b", "c"]} for i in range(3)])
    return app


def test_fuzzed_submissions_are_refused_without_a_trace(tmp_path_factory):
    app = make(tmp_path_factory.mktemp("fuzz"))
    ann = client_for(app, "ann")
    _, data = task_data(ann, ann.get("/projects/p/next").headers["location"])
    url, headers = f"/api/assignments/{data['assignment']}/submit", {"X-CSRF-Token": data["csrf"]}
    before = export_rankings(app.state.store, "p")

    @SETTINGS
    @given(body=bodies)
    def submit(body):
        r = ann.post(url, content=json.dumps(body), headers={**headers, "content-type": "application/json"})
        assert r.status_code in (200, 404, 413, 422), (body, r.status_code, r.text)
        if r.status_code == 200:  # what was accepted is a valid ranking of the 3 outputs, exported as such
            (ranking,) = export_rankings(app.state.store, "p")
            assert sorted(set(ranking.ranks)) == list(range(len(set(ranking.ranks)))) and len(ranking.ranks) == 3
            assert all(type(r) is int for r in ranking.ranks)
        else:
            assert export_rankings(app.state.store, "p") == before

    submit()


def test_fuzzed_paths_headers_and_roles_never_fail(tmp_path_factory):
    app = make(tmp_path_factory.mktemp("fuzz"))
    clients = {"nobody": TestClient(app, follow_redirects=False), "labeler": client_for(app, "ann"),
               "admin": client_for(app, "root", "admin")}
    routes = [("GET", "/"), ("GET", "/login"), ("POST", "/login"), ("POST", "/logout"), ("GET", "/projects/{x}/next"),
              ("GET", "/assignments/{x}"), ("GET", "/api/projects/{x}/next"), ("POST", "/api/assignments/{x}/submit"),
              ("POST", "/api/assignments/{x}/skip"), ("GET", "/admin"), ("POST", "/admin/labelers"),
              ("POST", "/admin/projects")]

    @SETTINGS
    @given(who=st.sampled_from(sorted(clients)), route=st.sampled_from(routes),
           x=st.text(max_size=12) | st.integers().map(str), body=st.binary(max_size=200) | values.map(json.dumps),
           csrf=st.text(max_size=40), form=st.booleans())
    def request(who, route, x, body, csrf, form):
        method, path = route
        path = path.replace("{x}", quote(x, safe="") or "1")
        kind = "application/x-www-form-urlencoded" if form else "application/json"
        headers = {"content-type": kind}
        if csrf.isascii() and csrf.isprintable():
            headers["X-CSRF-Token"] = csrf
        r = clients[who].request(method, path, content=body if method == "POST" else None, headers=headers)
        assert r.status_code < 500, (who, method, path, body[:80], r.status_code, r.text[:200])
        assert r.headers.get("x-content-type-options") == "nosniff"

    request()
