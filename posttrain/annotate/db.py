"""Tables and engine setup for the annotation app (SQLAlchemy 2.x).

Tables: ``accounts`` (annotators and admins, login tokens stored as SHA-256 hashes), ``tasks``
(a prompt with 2..26 completions, optionally a gold ranking), ``assignments`` (which annotator sees
which task, in which shuffled order) and ``votes`` (one per assignment, keyed by a client-made
``vote_key`` so a retried or double-clicked submit can never store twice; a revised vote replaces
the row and its earlier version moves to ``vote_revisions``).

SQLite runs in WAL mode with ``synchronous=FULL``: a vote is on disk before the server answers.
Writers take the lock up front (``BEGIN IMMEDIATE``) so concurrent writers wait on the busy timeout
instead of failing half-way through a transaction.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

ROLE_ANNOTATOR = "annotator"
ROLE_ADMIN = "admin"

STATUS_PENDING = "pending"
STATUS_DONE = "done"
STATUS_SKIPPED = "skipped"


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    # None: the token never expires (added later: make_engine adds the column to older databases)
    token_expires_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )


class LoginSession(Base):
    """A browser login: the cookie holds a random id, this row its SHA-256 hash (see ``auth``)."""

    __tablename__ = "login_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    id_hash: Mapped[str] = mapped_column(String(64), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Task(Base):
    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ext_id: Mapped[str] = mapped_column(String(200), unique=True)
    prompt: Mapped[str] = mapped_column(Text)  # JSON: a string or a list of {role, content}
    completions: Mapped[str] = mapped_column(Text)  # JSON list of strings
    gold: Mapped[str | None] = mapped_column(
        String(200), nullable=True
    )  # "B > A" (original letters)
    source: Mapped[str] = mapped_column(String(300))  # "tasks.jsonl:17"
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class Assignment(Base):
    __tablename__ = "assignments"
    __table_args__ = (
        UniqueConstraint("task_id", "account_id", name="uq_assignment_task_account"),
        Index("ix_assignment_queue", "account_id", "status", "position"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    position: Mapped[int] = mapped_column(Integer)  # place in the annotator's queue
    order: Mapped[str] = mapped_column(Text)  # JSON: original completion index shown as A, B, ...
    status: Mapped[str] = mapped_column(String(16), default=STATUS_PENDING)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class Vote(Base):
    __tablename__ = "votes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    vote_key: Mapped[str] = mapped_column(String(64), unique=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id"), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # "choice" (A / B / tie) or "rank"
    ranking: Mapped[str] = mapped_column(String(200))  # original letters, e.g. "B > A"
    shown_ranking: Mapped[str] = mapped_column(String(200))  # as the annotator saw the letters
    confidence: Mapped[int | None] = mapped_column(Integer, nullable=True)  # 1..3
    ratings: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON, original letters
    elapsed_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class VoteRevision(Base):
    """A superseded version of a vote: when an annotator revises an answer, the ``votes`` row takes
    the new answer (exports read only ``votes``) and the old one is copied here. A new table, so
    databases made before revisions existed gain it from ``create_all`` without a migration."""

    __tablename__ = "vote_revisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    vote_id: Mapped[int] = mapped_column(ForeignKey("votes.id"), index=True)
    vote_key: Mapped[str] = mapped_column(String(64), unique=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id"), index=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    kind: Mapped[str] = mapped_column(String(16))
    ranking: Mapped[str] = mapped_column(String(200))
    shown_ranking: Mapped[str] = mapped_column(String(200))
    confidence: Mapped[int | None] = mapped_column(Integer, nullable=True)
    ratings: Mapped[str | None] = mapped_column(Text, nullable=True)
    elapsed_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # of that version
    superseded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class GuidelinesRead(Base):
    """An annotator acknowledged one version of the guidelines (``version``: SHA-256 of the rendered
    HTML). The page opens the guidelines at login until the version being served is acknowledged.
    A new table: older databases gain it from ``create_all``."""

    __tablename__ = "guidelines_reads"
    __table_args__ = (UniqueConstraint("account_id", "version", name="uq_guidelines_read"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    version: Mapped[str] = mapped_column(String(64))
    read_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


def normalize_url(url: str) -> str:
    """A plain path means SQLite: ``votes.db`` -> ``sqlite:///votes.db``."""
    if "://" in url:
        return url
    return "sqlite:///" + os.path.abspath(url)


def make_engine(url: str) -> Engine:
    """An engine for ``url`` with the tables created. SQLite gets WAL, FULL sync, foreign keys."""
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30, "isolation_level": None}
        )
        _configure_sqlite(engine)
    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    Base.metadata.create_all(engine)
    _add_missing_columns(engine)
    return engine


# Columns added to existing tables after their first release: (table, column). ``create_all`` makes
# new tables only, so a database created before gets these with ALTER TABLE (nullable, no default).
_LATER_COLUMNS = [("accounts", "token_expires_at")]


def _add_missing_columns(engine: Engine) -> None:
    from sqlalchemy import inspect

    inspector = inspect(engine)
    for table, column in _LATER_COLUMNS:
        present = {c["name"] for c in inspector.get_columns(table)}
        if column in present:
            continue
        kind = Base.metadata.tables[table].c[column].type.compile(dialect=engine.dialect)
        with engine.begin() as conn:
            conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


def _configure_sqlite(engine: Engine) -> None:
    # The driver's own transaction handling is off (isolation_level=None above); we emit BEGIN
    # ourselves so that every transaction that may write takes the write lock first.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def session(engine: Engine) -> Session:
    """A session whose commit is one transaction; ``expire_on_commit=False`` keeps loaded rows usable."""
    return Session(engine, expire_on_commit=False)
