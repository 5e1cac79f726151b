"""The labeling store: labelers, projects, tasks, leases, judgements and an audit log (SQLAlchemy 2).

Assignment is safe under concurrency on any database: a task has `overlap` slots (0..N-1), and a lease
takes the lowest free slot by inserting an Assignment row; unique constraints on (task, slot) and
(task, labeler) make the database refuse a second holder of a slot or a second lease of a task to the
same labeler, and the loser simply tries the next task. An expired or skipped lease gives its slot
back (slot = NULL; NULLs never collide in a unique index). Submissions are idempotent through a
client-chosen submission key, validated against exactly what was shown, and never overwritten.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
import re
import secrets
import time
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from sqlalchemy import JSON, Float, ForeignKey, Integer, String, UniqueConstraint, create_engine, event, func, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from rlhfkit.data.records import METADATA_FLAGS
from rlhfkit.errors import UsageError

T = TypeVar("T")

PROMPT_LABELS = ("ambiguous", "intent_unclear", "sensitive_content", "closed_domain", "explicit_constraints")
TASK_KINDS = ("ranking", "demonstration", "pairwise")


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Labeler(Base):
    __tablename__ = "labelers"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(String(10))  # admin | labeler
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(200), nullable=True)
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=now)


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    kind: Mapped[str] = mapped_column(String(20))
    overlap: Mapped[int] = mapped_column(Integer, default=1)  # distinct labelers per task
    lease_seconds: Mapped[int] = mapped_column(Integer, default=1800)
    created_at: Mapped[datetime] = mapped_column(default=now)


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (UniqueConstraint("project_id", "import_key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    payload: Mapped[dict] = mapped_column(JSON)  # prompt, responses (ranking/pairwise), sources
    priority: Mapped[float] = mapped_column(Float, default=0.0)
    gold: Mapped[list | None] = mapped_column(JSON, nullable=True)  # admin-set ranks for screening
    import_key: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=now)


class Assignment(Base):
    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("task_id", "labeler_id"), UniqueConstraint("task_id", "slot"))
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id"), index=True)
    slot: Mapped[int | None] = mapped_column(Integer, nullable=True)
    status: Mapped[str] = mapped_column(String(10), default="leased")  # leased | submitted | skipped | expired
    order: Mapped[list] = mapped_column(JSON)  # the order the responses were shown in
    leased_at: Mapped[datetime] = mapped_column(default=now)
    expires_at: Mapped[datetime] = mapped_column()
    skip_reason: Mapped[str | None] = mapped_column(String(500), nullable=True)


class Judgement(Base):
    __tablename__ = "judgements"
    id: Mapped[int] = mapped_column(primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id"), unique=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id"), index=True)
    data: Mapped[dict] = mapped_column(JSON)  # in the task's response order, never the shown order
    submission_key: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=now)


class LoginSession(Base):
    """A signed-in browser: the cookie holds a random token, the database its hash; ending a session (sign-out,
    deactivation, a new token) is one UPDATE, effective on the next request."""

    __tablename__ = "sessions"
    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=now)
    expires_at: Mapped[datetime] = mapped_column()
    ended_at: Mapped[datetime | None] = mapped_column(nullable=True)


class AuditEntry(Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=now)
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("labelers.id"), nullable=True)
    action: Mapped[str] = mapped_column(String(50))
    object_type: Mapped[str] = mapped_column(String(30))
    object_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    detail: Mapped[dict] = mapped_column(JSON, default=dict)


def _via(actor: int | None) -> dict:
    """Who acted, where no labeler did: the command line, and the operating-system user running it."""
    if actor is not None:
        return {}
    import getpass

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return {"via": "cli", "os_user": user}


class FeedbackError(UsageError):
    """A request the store refuses: the message says why (shown to the user)."""


class NotFound(FeedbackError):
    pass


class Busy(FeedbackError):
    """The database stayed locked by other writers; the same request may go through later."""


def make_engine(url: str):
    path = url.removeprefix("sqlite:///")
    if url.startswith("sqlite:///") and path and path != ":memory:" and not os.path.exists(path):
        # created readable by the owner only (SQLite gives its -wal and -shm files the same mode)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    engine = create_engine(url, pool_pre_ping=True)
    if url.startswith("sqlite"):
        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn, _record):  # WAL for concurrent readers, foreign keys enforced
            conn.isolation_level = None  # we issue BEGIN ourselves, below
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn):
            # Take the write lock up front: a read-then-write transaction that must upgrade its lock can
            # fail at once with "database is locked" under contention; an immediate one waits its turn.
            conn.exec_driver_sql("BEGIN IMMEDIATE")
    return engine


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()  # tokens are 32 random bytes: no stretching needed


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1)
    return f"scrypt${salt.hex()}${digest.hex()}"


# Checked when a name has no password (or no labeler): every sign-in by password costs one key derivation,
# so the time taken does not tell which names exist.
_DUMMY_HASH = hash_password(secrets.token_hex(16))


def check_password(password: str, stored: str | None) -> bool:
    known = bool(stored) and stored.startswith("scrypt$")
    _, salt, digest = (stored if known else _DUMMY_HASH).split("$")
    got = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=2**14, r=8, p=1)
    return hmac.compare_digest(got.hex(), digest) and known


def _whole(x) -> bool:
    """An int that is not a bool (JSON true/false arrive as Python bools, which are ints)."""
    return isinstance(x, int) and not isinstance(x, bool)


MIN_PASSWORD = 12
SUBMISSION_KEY = re.compile(r"[A-Za-z0-9_-]{1,100}")
PROJECT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")  # safe in URLs and file names


def check_labeler_name(name) -> str:
    if not isinstance(name, str) or not 1 <= len(name.strip()) <= 100 or any(
            unicodedata.category(c) == "Cc" for c in name):
        raise FeedbackError("a labeler's name is 1 to 100 characters, no control characters")
    return name.strip()


def check_project(name, overlap, lease_seconds) -> None:
    if not isinstance(name, str) or not PROJECT_NAME.fullmatch(name) or ".." in name:
        raise FeedbackError("a project's name is 1 to 100 letters, digits, '_', '.' or '-', starting with a letter "
                            "or digit")
    if not _whole(overlap) or not 1 <= overlap <= 100:
        raise FeedbackError("overlap must be a whole number from 1 to 100")
    if not _whole(lease_seconds) or not 10 <= lease_seconds <= 7 * 86400:
        raise FeedbackError("lease_seconds must be a whole number from 10 to 604800 (a week)")


def validate_ranking(data: dict, k: int) -> dict:
    """Ranks a valid weak order over exactly the k shown outputs, Likert 1-7, known flags."""
    ranks = data.get("ranks")
    if not isinstance(ranks, list) or len(ranks) != k or not all(_whole(r) for r in ranks):
        raise FeedbackError(f"ranks must be {k} whole numbers, one per output")
    distinct = sorted(set(ranks))
    if distinct != list(range(len(distinct))):
        raise FeedbackError("ranks must be 0 (best), 1, 2, ... with no gaps; equal ranks are ties")
    likert = data.get("likert")
    if likert is not None and (not isinstance(likert, list) or len(likert) != k
                               or any(v is not None and (not _whole(v) or not 1 <= v <= 7) for v in likert)):
        raise FeedbackError("likert must hold a score from 1 to 7 (or nothing) for each output")
    flags = data.get("flags") or [[] for _ in range(k)]
    if not isinstance(flags, list) or len(flags) != k or any(not set(f) <= set(METADATA_FLAGS) for f in flags):
        raise FeedbackError("flags must be one list of known metadata flags per output")
    prompt_labels = data.get("prompt_labels") or []
    if not set(prompt_labels) <= set(PROMPT_LABELS):
        raise FeedbackError(f"prompt labels must be among {', '.join(PROMPT_LABELS)}")
    comment = data.get("comment") or ""
    if not isinstance(comment, str) or len(comment) > 5000:
        raise FeedbackError("comment must be text of at most 5000 characters")
    return {"ranks": ranks, "likert": likert, "flags": [sorted(set(f)) for f in flags],
            "prompt_labels": sorted(set(prompt_labels)), "comment": comment}


class _LostRace(Exception):
    pass


def _is_contention(e: OperationalError) -> bool:
    """SQLite's lock timeouts and PostgreSQL's deadlock victims: the transaction can simply run again."""
    text = str(e).lower()
    return "locked" in text or "busy" in text or "deadlock" in text


def retry_when_busy(fn: Callable[[], T], attempts: int = 12) -> T:
    """Run a transaction again when the database reports contention (a lock timeout or a deadlock)."""
    for attempt in range(attempts):
        try:
            return fn()
        except OperationalError as e:
            if not _is_contention(e):
                raise
            time.sleep(min(2.0, 0.02 * 2**attempt))
    return fn()


class Store:
    def __init__(self, url: str = "sqlite:///feedback.db", create: bool = True):
        self.engine = make_engine(url)
        if create:  # bring the schema to the current revision (Alembic), whatever state it is in
            from rlhfkit.feedback.migrate import upgrade

            upgrade(url, self.engine)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.sessions() as s, s.begin():
            yield s

    def _audit(self, s: Session, actor: int | None, action: str, obj: str, obj_id: int | None, **detail) -> None:
        s.add(AuditEntry(actor_id=actor, action=action, object_type=obj, object_id=obj_id, detail=detail))

    # ---- people and projects ----

    def add_labeler(self, name: str, role: str = "labeler", password: str | None = None,
                    actor: int | None = None) -> tuple[Labeler, str]:
        """(labeler, sign-in token). The token is shown once; only its hash is stored."""
        name = check_labeler_name(name)
        if password is not None and len(password) < MIN_PASSWORD:
            raise FeedbackError(f"a password has at least {MIN_PASSWORD} characters")
        if role not in ("admin", "labeler"):
            raise FeedbackError("role must be admin or labeler")
        token = secrets.token_urlsafe(32)
        with self.session() as s:
            if s.scalar(select(Labeler).where(Labeler.name == name)):
                raise FeedbackError(f"a labeler named {name!r} exists")
            lab = Labeler(name=name, role=role, token_hash=hash_token(token),
                          password_hash=hash_password(password) if password else None)
            s.add(lab)
            s.flush()
            self._audit(s, actor, "add_labeler", "labeler", lab.id, name=name, role=role, **_via(actor))
        return lab, token

    def by_token(self, token: str) -> Labeler | None:
        with self.session() as s:
            lab = s.scalar(select(Labeler).where(Labeler.token_hash == hash_token(token)))
            return lab if lab and lab.active else None

    def by_name(self, name: str) -> Labeler:
        with self.session() as s:
            lab = s.scalar(select(Labeler).where(Labeler.name == name))
            if lab is None:
                raise NotFound(f"no labeler named {name!r}")
            return lab

    def by_password(self, name: str, password: str) -> Labeler | None:
        with self.session() as s:
            lab = s.scalar(select(Labeler).where(Labeler.name == name))
        ok = check_password(password, lab.password_hash if lab else None)  # one derivation, whoever asks
        return lab if ok and lab.active else None

    # ---- sessions ----

    def start_session(self, labeler_id: int, seconds: int) -> str:
        """A new session's cookie token (random; only its hash is stored)."""
        token = secrets.token_urlsafe(32)
        with self.session() as s:
            s.add(LoginSession(token_hash=hash_token(token), labeler_id=labeler_id,
                               expires_at=now() + timedelta(seconds=seconds)))
            self._audit(s, labeler_id, "sign_in", "labeler", labeler_id)
        return token

    def session_labeler(self, token: str) -> Labeler | None:
        """The active labeler of a live session (not ended, not expired), or None."""
        with self.session() as s:
            row = s.scalar(select(LoginSession).where(LoginSession.token_hash == hash_token(token)))
            if row is None or row.ended_at is not None or row.expires_at < now():
                return None
            lab = s.get(Labeler, row.labeler_id)
            return lab if lab is not None and lab.active else None

    def end_session(self, token: str) -> None:
        with self.session() as s:
            row = s.scalar(select(LoginSession).where(LoginSession.token_hash == hash_token(token)))
            if row is not None and row.ended_at is None:
                row.ended_at = now()
                self._audit(s, row.labeler_id, "sign_out", "labeler", row.labeler_id)

    def _end_sessions(self, s: Session, labeler_id: int) -> None:
        for row in s.scalars(select(LoginSession).where(LoginSession.labeler_id == labeler_id,
                                                        LoginSession.ended_at.is_(None))):
            row.ended_at = now()

    def deactivate(self, name: str, actor: int | None = None) -> None:
        """The labeler can no longer sign in, and every session of theirs ends at once."""
        with self.session() as s:
            lab = s.scalar(select(Labeler).where(Labeler.name == name))
            if lab is None:
                raise NotFound(f"no labeler named {name!r}")
            lab.active = False
            self._end_sessions(s, lab.id)
            self._audit(s, actor, "deactivate", "labeler", lab.id, **_via(actor))

    def rotate_token(self, name: str, actor: int | None = None) -> str:
        """A new sign-in token for the labeler (returned once); the old one stops working and their sessions end."""
        token = secrets.token_urlsafe(32)
        with self.session() as s:
            lab = s.scalar(select(Labeler).where(Labeler.name == name))
            if lab is None:
                raise NotFound(f"no labeler named {name!r}")
            lab.token_hash = hash_token(token)
            self._end_sessions(s, lab.id)
            self._audit(s, actor, "rotate_token", "labeler", lab.id, **_via(actor))
        return token

    def audit_event(self, action: str, actor: int | None = None, **detail) -> None:
        """An entry for what happens outside the store's own changes (failed sign-ins, refused requests)."""
        with self.session() as s:
            self._audit(s, actor, action, "request", None, **detail)

    def add_project(self, name: str, kind: str = "ranking", overlap: int = 1, lease_seconds: int = 1800,
                    actor: int | None = None) -> Project:
        if kind not in TASK_KINDS:
            raise FeedbackError(f"kind must be one of {', '.join(TASK_KINDS)}")
        check_project(name, overlap, lease_seconds)
        with self.session() as s:
            if s.scalar(select(Project).where(Project.name == name)):
                raise FeedbackError(f"a project named {name!r} exists")
            p = Project(name=name, kind=kind, overlap=overlap, lease_seconds=lease_seconds)
            s.add(p)
            s.flush()
            self._audit(s, actor, "add_project", "project", p.id, name=name, kind=kind, overlap=overlap, **_via(actor))
        return p

    def projects(self) -> list[tuple[str, str]]:
        """(name, kind) of every project, oldest first."""
        with self.session() as s:
            return [tuple(r) for r in s.execute(select(Project.name, Project.kind).order_by(Project.id))]

    def project(self, name: str) -> Project:
        with self.session() as s:
            p = s.scalar(select(Project).where(Project.name == name))
            if p is None:
                raise NotFound(f"no project named {name!r}")
            return p

    def import_tasks(self, project: str, payloads: list[dict], priorities: list[float] | None = None,
                     actor: int | None = None) -> int:
        """Add tasks; a payload already imported into the project is skipped. Returns how many were new."""
        p = self.project(project)
        added = 0
        with self.session() as s:
            for i, payload in enumerate(payloads):
                self._check_payload(p.kind, payload)
                key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
                if s.scalar(select(Task.id).where(Task.project_id == p.id, Task.import_key == key)):
                    continue
                s.add(Task(project_id=p.id, payload=payload, import_key=key,
                           priority=priorities[i] if priorities else 0.0))
                added += 1
            self._audit(s, actor, "import_tasks", "project", p.id, added=added, offered=len(payloads), **_via(actor))
        return added

    @staticmethod
    def _check_payload(kind: str, payload: dict) -> None:
        if "prompt" not in payload:
            raise FeedbackError("every task needs a prompt")
        n = len(payload.get("responses") or [])
        if kind == "ranking" and not 2 <= n <= 9:
            raise FeedbackError("a ranking task needs 2 to 9 responses")
        if kind == "pairwise" and n != 2:
            raise FeedbackError("a pairwise task needs exactly 2 responses")

    # ---- leases and submissions ----

    def lease_next(self, labeler_id: int, project: str, rng: random.Random | None = None) -> Assignment | None:
        """The labeler's open lease in the project, or a new one on the highest-priority task with a free slot.
        The responses are shown in a random order (`rng`: a seeded one makes a simulated run repeatable)."""
        p = retry_when_busy(lambda: self.project(project))
        rng = rng or secrets.SystemRandom()
        for _ in range(50):  # lost races retry on the next candidate
            try:
                lease = self._try_lease(labeler_id, p, rng)
            except OperationalError as e:
                if not _is_contention(e):
                    raise
                time.sleep(0.05)
                continue
            if lease is not False:
                return lease
        raise Busy("too busy: could not lease a task, try again")

    def _try_lease(self, labeler_id: int, p: Project, rng) -> Assignment | None | bool:
        """An assignment, None when nothing is left for this labeler, False after losing a race."""
        try:
            with self.session() as s:
                self._expire(s, p.id)
                open_lease = s.scalar(select(Assignment).join(Task).where(
                    Task.project_id == p.id, Assignment.labeler_id == labeler_id, Assignment.status == "leased"))
                if open_lease is not None:
                    return open_lease
                seen = select(Assignment.task_id).where(Assignment.labeler_id == labeler_id)
                taken = (select(func.count()).where(Assignment.task_id == Task.id, Assignment.slot.is_not(None))
                         .correlate(Task).scalar_subquery())
                # SKIP LOCKED (PostgreSQL): labelers asking at the same moment each lock a different task
                # instead of all racing for the first one; SQLite runs one write transaction at a time anyway.
                task = s.scalar(select(Task).where(Task.project_id == p.id, Task.id.not_in(seen), taken < p.overlap)
                                .order_by(Task.priority.desc(), Task.id).limit(1)
                                .with_for_update(of=Task, skip_locked=True))
                if task is None:
                    return None
                used = set(s.scalars(select(Assignment.slot).where(Assignment.task_id == task.id,
                                                                   Assignment.slot.is_not(None))))
                free = set(range(p.overlap)) - used
                if not free:
                    raise _LostRace  # filled by others since the query above
                order = list(range(len(task.payload.get("responses") or [])))
                rng.shuffle(order)
                a = Assignment(task_id=task.id, labeler_id=labeler_id, slot=min(free), order=order,
                               expires_at=now() + timedelta(seconds=p.lease_seconds))
                s.add(a)
                try:
                    s.flush()
                except IntegrityError:
                    raise _LostRace from None  # another labeler took that slot first
                self._audit(s, labeler_id, "lease", "assignment", a.id, task=task.id, slot=a.slot)
                return a
        except _LostRace:  # the transaction was rolled back on the way out
            return False

    def latest_assignment(self, project: str) -> Assignment | None:
        """The project's most recent lease, whatever became of it: where an interrupted batch of work stood."""
        p = self.project(project)
        with self.session() as s:
            return s.scalar(select(Assignment).join(Task).where(Task.project_id == p.id)
                            .order_by(Assignment.id.desc()).limit(1))

    def _expire(self, s: Session, project_id: int) -> None:
        stale = s.scalars(select(Assignment).join(Task).where(
            Task.project_id == project_id, Assignment.status == "leased", Assignment.expires_at < now()))
        for a in stale:
            a.status, a.slot = "expired", None
            self._audit(s, None, "expire", "assignment", a.id)

    def own_assignment(self, s: Session, labeler_id: int, assignment_id: int) -> tuple[Assignment, Task, Project]:
        a = s.get(Assignment, assignment_id)
        if a is None or a.labeler_id != labeler_id:  # someone else's looks the same as none at all
            raise NotFound("no such assignment")
        task = s.get(Task, a.task_id)
        return a, task, s.get(Project, task.project_id)

    def submit(self, labeler_id: int, assignment_id: int, shown: dict, submission_key: str) -> Judgement:
        """Record a judgement given in the shown order; stored in the task's own response order."""
        return retry_when_busy(lambda: self._submit(labeler_id, assignment_id, shown, submission_key))

    def _submit(self, labeler_id: int, assignment_id: int, shown: dict, submission_key: str) -> Judgement:
        if not isinstance(submission_key, str) or not SUBMISSION_KEY.fullmatch(submission_key):
            raise FeedbackError("submission_key must be 1 to 100 letters, digits, '-' or '_'")
        if not isinstance(shown, dict):
            raise FeedbackError("judgement must be an object")
        with self.session() as s:
            a, task, project = self.own_assignment(s, labeler_id, assignment_id)  # someone else's: 404 first
            existing = s.scalar(select(Judgement).where(Judgement.submission_key == submission_key))
            if existing is not None:
                if existing.assignment_id != assignment_id:
                    raise FeedbackError("that submission key was used for another submission")
                return existing  # a retried submit: same answer, nothing duplicated
            if a.status == "submitted":
                raise FeedbackError("this task was already submitted; submissions are never overwritten")
            if a.status == "leased" and a.expires_at < now():  # expired, though nobody has leased since
                raise FeedbackError("this lease expired; ask for a new task")
            if a.status != "leased":
                raise FeedbackError(f"this lease is {a.status}; ask for a new task")
            data = self._to_task_order(project.kind, shown, a.order)
            j = Judgement(assignment_id=a.id, task_id=task.id, labeler_id=labeler_id, data=data,
                          submission_key=submission_key)
            a.status = "submitted"
            s.add(j)
            s.flush()
            self._audit(s, labeler_id, "submit", "judgement", j.id, task=task.id, data=data)
            return j

    @staticmethod
    def _to_task_order(kind: str, shown: dict, order: list[int]) -> dict:
        if kind == "demonstration":
            text = shown.get("response")
            if not isinstance(text, str) or not text.strip() or len(text) > 20000:
                raise FeedbackError("write a response (at most 20000 characters)")
            return {"response": text}
        k = len(order)
        if kind == "pairwise":
            choice = shown.get("choice")  # index in shown order, or "tie"
            if choice not in (0, 1, "tie"):
                raise FeedbackError("choose output 0 or 1, or tie")
            ranks_shown = [0, 0] if choice == "tie" else [0 if i == choice else 1 for i in range(2)]
            shown = {**shown, "ranks": ranks_shown}
        valid = validate_ranking(shown, k)
        unshuffle = [0] * k  # shown position i displayed task response order[i]
        for i, task_index in enumerate(order):
            unshuffle[task_index] = i

        def back(values):
            return None if values is None else [values[unshuffle[t]] for t in range(k)]

        return {**valid, "ranks": back(valid["ranks"]), "likert": back(valid["likert"]), "flags": back(valid["flags"])}

    def skip(self, labeler_id: int, assignment_id: int, reason: str) -> None:
        if not reason or len(reason) > 500:
            raise FeedbackError("give a reason for skipping (at most 500 characters)")
        retry_when_busy(lambda: self._skip(labeler_id, assignment_id, reason))

    def _skip(self, labeler_id: int, assignment_id: int, reason: str) -> None:
        with self.session() as s:
            a, _, _ = self.own_assignment(s, labeler_id, assignment_id)
            if a.status != "leased":
                raise FeedbackError(f"this lease is {a.status}")
            a.status, a.slot, a.skip_reason = "skipped", None, reason
            self._audit(s, labeler_id, "skip", "assignment", a.id, reason=reason)

    # ---- reading back ----

    def judgements(self, project: str) -> list[tuple[Task, Judgement, Labeler]]:
        p = self.project(project)
        with self.session() as s:
            rows = s.execute(select(Task, Judgement, Labeler).join(Judgement, Judgement.task_id == Task.id)
                             .join(Labeler, Labeler.id == Judgement.labeler_id)
                             .where(Task.project_id == p.id).order_by(Judgement.id))
            return [tuple(r) for r in rows]

    def progress(self, project: str) -> dict:
        p = self.project(project)
        with self.session() as s:
            tasks = s.scalar(select(func.count()).select_from(Task).where(Task.project_id == p.id))
            done = s.scalar(select(func.count()).select_from(Judgement).join(Task).where(Task.project_id == p.id))
            per_labeler = dict(s.execute(select(Labeler.name, func.count(Judgement.id))
                                         .join(Judgement, Judgement.labeler_id == Labeler.id).join(Task)
                                         .where(Task.project_id == p.id).group_by(Labeler.name)).all())
        return {"tasks": tasks, "judgements": done, "needed": tasks * p.overlap, "per_labeler": per_labeler}
