"""Real servers for the labeling-service tests: a PostgreSQL database and `rlhfkit label serve` in a subprocess."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

import httpx
import pytest

# scripts/test_services.sh starts PostgreSQL on loopback with this role; RLHFKIT_TEST_PG points elsewhere.
PG_SERVER = os.environ.get("RLHFKIT_TEST_PG", "postgresql://rlhfkit:rlhfkit@127.0.0.1:5432")


@contextmanager
def postgres_database():
    """A fresh, empty PostgreSQL database (dropped afterwards) as a SQLAlchemy URL, or a skip saying why not."""
    try:
        import psycopg
    except ImportError:
        pytest.skip("psycopg is not installed: pip install -e '.[postgres]'")
    name = "rlhfkit_test_" + secrets.token_hex(4)
    try:
        admin = psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as e:
        pytest.skip(f"no PostgreSQL server at {PG_SERVER} (scripts/test_services.sh starts one as root): "
                    f"{str(e).strip().splitlines()[0]}")
    with admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"{PG_SERVER.replace('postgresql://', 'postgresql+psycopg://')}/{name}"
    finally:
        with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextmanager
def database(kind: str, tmp_path):
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'feedback.db'}"
    else:
        with postgres_database() as url:
            yield url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabelServer:
    """`rlhfkit label serve` on 127.0.0.1 in a subprocess, on a fixed port and secret so that it can be killed
    (SIGKILL, as a crash or an OOM kill would) and started again where its clients expect it."""

    def __init__(self, db_url: str, log_path=None):
        self.db_url, self.log_path = db_url, log_path
        self.port, self.secret = free_port(), secrets.token_hex(32)
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> str:
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
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@contextmanager
def label_server(db_url: str, log_path=None):
    """`rlhfkit label serve` on 127.0.0.1 in a subprocess; yields its base URL."""
    server = LabelServer(db_url, log_path)
    try:
        yield server.start()
    finally:
        server.stop()
