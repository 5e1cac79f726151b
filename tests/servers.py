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


@contextmanager
def label_server(db_url: str, log_path=None):
    """`rlhfkit label serve` on 127.0.0.1 in a subprocess; yields its base URL."""
    port = free_port()
    env = {**os.environ, "RLHFKIT_SECRET": secrets.token_hex(32)}
    log = open(log_path, "w") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "rlhfkit", "label", "serve", "--db", db_url, "--port", str(port),
                             "--log-level", "warning"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}")
            try:
                httpx.get(url + "/login", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise RuntimeError("the server did not start in 30 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        if log_path:
            log.close()
