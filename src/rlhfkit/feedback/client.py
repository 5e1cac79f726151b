"""A labeling client over HTTP: signs in with a labeler's token, takes tasks and submits judgements.

For labeling from code (scripts, simulated labelers, load tests) through the same routes and checks as the
browser page: the session cookie, the CSRF header, server-side validation, idempotent submission keys.
"""

from __future__ import annotations

import httpx


class LabelingError(RuntimeError):
    pass


class LabelingClient:
    def __init__(self, base_url: str, token: str, timeout: float = 30.0):
        self.http = httpx.Client(base_url=base_url, timeout=timeout, follow_redirects=False)
        response = self.http.post("/login", data={"token": token})
        if response.status_code != 303 or response.headers.get("location") != "/":
            raise LabelingError(f"{base_url}: sign-in refused")

    def next_task(self, project: str) -> dict | None:
        """The labeler's next task (responses in the order shown to them), or None when none is left."""
        response = self.http.get(f"/api/projects/{project}/next")
        self._check(response)
        return response.json()["task"]

    def submit(self, task: dict, judgement: dict) -> int:
        """Submit a judgement in the shown order; retrying with the same task dict never duplicates it."""
        response = self.http.post(f"/api/assignments/{task['assignment']}/submit",
                                  json={"judgement": judgement, "submission_key": task["submission_key"]},
                                  headers={"X-CSRF-Token": task["csrf"]})
        self._check(response)
        return response.json()["judgement"]

    def skip(self, task: dict, reason: str) -> None:
        response = self.http.post(f"/api/assignments/{task['assignment']}/skip", json={"reason": reason},
                                  headers={"X-CSRF-Token": task["csrf"]})
        self._check(response)

    @staticmethod
    def _check(response: httpx.Response) -> None:
        if response.status_code >= 400:
            try:
                detail = response.json().get("error")
            except ValueError:
                detail = response.text[:200]
            raise LabelingError(f"{response.request.method} {response.request.url.path}: "
                                f"{response.status_code} {detail}")

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> LabelingClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
