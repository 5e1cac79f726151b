"""`rlhfkit label ...`: the labeling service's commands, each a config (so `--config label.yaml` can hold the
database URL and the rest) and the function that runs it. What a command prints for people goes to stdout."""

from __future__ import annotations

import getpass
import json
import sys
from typing import Literal

from pydantic import Field

from rlhfkit.config import StageConfig

DB_HELP = "Database URL (sqlite:///file.db or postgresql+psycopg://user@host/db)."


class LabelConfig(StageConfig):
    db: str = Field("sqlite:///feedback.db", description=DB_HELP)


class ServeConfig(LabelConfig):
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8000, ge=1, le=65535, description="Port.")
    log_level: str = Field("info", description="uvicorn log level (warning: no line per request).")
    proxy_headers: bool = Field(False, description="Behind a TLS proxy: take the client's address and scheme from "
                                "X-Forwarded-For/-Proto (then cookies are Secure and HSTS is sent), from "
                                "--forwarded-allow-ips only.")
    forwarded_allow_ips: str = Field("127.0.0.1", description="Proxies trusted for X-Forwarded-* (comma list).")


class AddLabelerConfig(LabelConfig):
    name: str = Field(description="The labeler's sign-in name.", json_schema_extra={"argument": True})
    role: Literal["labeler", "admin"] = Field("labeler", description="labeler or admin.")
    password: bool = Field(False, description="Also set a password (at least 12 characters, stored hashed), asked "
                           "for without echo, or read from standard input when that is not a terminal; never taken "
                           "on the command line, where other users can see it.")


class LabelerConfig(LabelConfig):
    name: str = Field(description="The labeler's name.", json_schema_extra={"argument": True})


class AddProjectConfig(LabelConfig):
    name: str = Field(description="Project name.", json_schema_extra={"argument": True})
    kind: Literal["ranking", "demonstration", "pairwise"] = Field("ranking", description="What labelers do.")
    overlap: int = Field(1, ge=1, description="Distinct labelers per task (more than 1 measures agreement).")
    lease_seconds: int = Field(1800, ge=1, description="How long a labeler holds a task before it goes back.")


class ImportConfig(LabelConfig):
    project: str = Field(description="Project to add tasks to.", json_schema_extra={"argument": True})
    path: str = Field(description="`rlhfkit sample` output (ranking/pairwise) or prompts (demonstration).",
                      json_schema_extra={"argument": True})
    priority_field: str | None = Field(None, description="meta field holding each task's priority (higher first).")


class ExportConfig(LabelConfig):
    project: str = Field(description="Project to export.", json_schema_extra={"argument": True})
    output: str = Field(description="JSONL to write: rankings (rlhfkit rm, eval elo) or demonstrations (rlhfkit "
                        "sft).", json_schema_extra={"argument": True})


class ProjectConfig(LabelConfig):
    project: str = Field(description="Project.", json_schema_extra={"argument": True})


def serve(cfg: ServeConfig) -> None:
    """Serve the labeling web app (sign in at /login; admins at /admin). Put it behind TLS for remote use."""
    import uvicorn

    from rlhfkit.feedback.app import create_app

    uvicorn.run(create_app(cfg.db), host=cfg.host, port=cfg.port, log_level=cfg.log_level, server_header=False,
                proxy_headers=cfg.proxy_headers, forwarded_allow_ips=cfg.forwarded_allow_ips)


def add_labeler(cfg: AddLabelerConfig) -> None:
    """Create a labeler and print their sign-in token (shown once; only its hash is stored)."""
    from rlhfkit.feedback.store import FeedbackError, Store

    secret = None
    if cfg.password:
        if sys.stdin.isatty():
            secret = getpass.getpass("password: ")
            if getpass.getpass("password again: ") != secret:
                raise FeedbackError("the two passwords differ")
        else:
            secret = sys.stdin.readline().rstrip("\n")
    _, token = Store(cfg.db).add_labeler(cfg.name, cfg.role, secret)
    print(token)


def deactivate(cfg: LabelerConfig) -> None:
    """Stop a labeler: their token and password no longer sign in, and their open sessions end at once."""
    from rlhfkit.feedback.store import Store

    Store(cfg.db).deactivate(cfg.name)
    print(f"{cfg.name}: deactivated, sessions ended")


def rotate_token(cfg: LabelerConfig) -> None:
    """Give a labeler a new sign-in token (printed once): the old one stops working and their sessions end."""
    from rlhfkit.feedback.store import Store

    print(Store(cfg.db).rotate_token(cfg.name))


def add_project(cfg: AddProjectConfig) -> None:
    """Create a labeling project."""
    from rlhfkit.feedback.store import Store

    Store(cfg.db).add_project(cfg.name, cfg.kind, cfg.overlap, cfg.lease_seconds)


def import_tasks(cfg: ImportConfig) -> None:
    """Add tasks from a file; records already imported are skipped."""
    from rlhfkit.data import read_prompts
    from rlhfkit.data.rankings import read_rankings
    from rlhfkit.feedback.store import Store

    store = Store(cfg.db)
    if store.project(cfg.project).kind == "demonstration":
        records = read_prompts(cfg.path).records
        payloads = [{"prompt": r.model_dump(mode="json")["prompt"]} for r in records]
    else:
        records = read_rankings(cfg.path, require_ranks=False).records
        payloads = [{"prompt": r.model_dump(mode="json")["prompt"], "responses": r.responses,
                     "sources": r.sources} for r in records]
    priorities = [float(r.meta.get(cfg.priority_field, 0.0)) for r in records] if cfg.priority_field else None
    added = store.import_tasks(cfg.project, payloads, priorities)
    print(f"{added} new tasks ({len(payloads) - added} already there)")


def export(cfg: ExportConfig) -> None:
    """Write one record per labeler judgement, labeler id kept."""
    from rlhfkit.data import write_jsonl
    from rlhfkit.feedback.export import export_demonstrations, export_rankings
    from rlhfkit.feedback.store import Store

    store = Store(cfg.db)
    demonstrations = store.project(cfg.project).kind == "demonstration"
    records = export_demonstrations(store, cfg.project) if demonstrations else export_rankings(store, cfg.project)
    write_jsonl(cfg.output, records)
    print(f"{len(records)} records -> {cfg.output}")


def report(cfg: ProjectConfig) -> None:
    """Progress, judgements per labeler and inter-labeler agreement (JSON)."""
    from rlhfkit.feedback.export import agreement
    from rlhfkit.feedback.store import Store

    store = Store(cfg.db)
    print(json.dumps({"progress": store.progress(cfg.project), "agreement": agreement(store, cfg.project)},
                     indent=2))
