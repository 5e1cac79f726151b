"""Real servers for the labeling-service tests: a PostgreSQL database and `rlhfkit label serve` in a subprocess."""

from __future__ import annotations

import os
import secrets
from contextlib import contextmanager

import pytest

from rlhfkit.feedback.client import ServerProcess as LabelServer

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


@contextmanager
def label_server(db_url: str, log_path=None):
    """`rlhfkit label serve` on 127.0.0.1 in a subprocess; yields its base URL."""
    server = LabelServer(db_url, log_path=log_path)
    try:
        yield server.start()
    finally:
        server.stop()
