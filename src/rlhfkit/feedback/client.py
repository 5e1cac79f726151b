"""A labeling client over HTTP: signs in with a labeler's token, takes tasks and submits judgements.

For labeling from code (scripts, simulated labelers, load tests) through the same routes and checks as the
browser page: the session cookie, the CSRF header, server-side validation, idempotent submission keys.
`ServerProcess` runs the server itself in a subprocess, for scripts, benchmarks and tests.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`rlhfkit label serve` on 127.0.0.1 in a subprocess, on a fixed port (a free one by default) and secret, so that
    it can be killed and started again where its clients (signed in with server-side sessions) expect it. Its output
    goes to `log_path`, if given."""

    def __init__(self, db_url: str, port: int | None = None, log_path: str | Path | None = None):
        self.db_url, self.log_path = db_url, log_path
        self.port, self.secret = port or free_port(), secrets.token_hex(32)
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> str:
        """Starts the server and waits until it answers; its base URL."""
        log = open(self.log_path, "a") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, "-m", "rlhfkit", "label", "serve", "--db", self.db_url,
                                      "--port", str(self.port), "--log-level", "warning"],
                                     env={**os.environ, "RLHFKIT_SECRET": self.secret}, stdout=log,
                                     stderr=subprocess.STDOUT)
        if log is not subprocess.DEVNULL:
            log.close()  # the child holds its own copy
        for _ in range(300):
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}")
            try:
                httpx.get(self.url + "/login", timeout=1)
                return self.url
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("the server did not start in 30 s")

    def kill(self) -> None:
        """SIGKILL, as a crash would stop it."""
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


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
