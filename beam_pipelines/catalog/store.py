"""The data-plane store: pipelines, SQL versions, epochs, manifests, logs.

SQLAlchemy over SQLite in the data dir by default (WAL, so the API's
processes and the job manager's workers read while one writes), or any
SQLAlchemy URL. The job manager and the API share it: the store, not
process memory, is the source of truth for every pipeline's state, so any
process may crash and the next one picks up where the store says.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from beam_pipelines.model.manifest import public_file
from beam_pipelines.model.times import iso

__all__ = [
    "Base",
    "EngineJob",
    "Epoch",
    "EPOCH_PROGRESS_COLUMNS",
    "EpochColumns",
    "EpochFile",
    "FileColumns",
    "LogEntry",
    "OWN_EPOCH_COLUMNS",
    "PipelineRow",
    "SqlVersion",
    "Store",
    "utcnow",
]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class PipelineRow(Base):
    __tablename__ = "pipelines"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True, index=True)
    status: Mapped[str] = mapped_column(String(16))  # a beam_pipelines.model.lifecycle.Status
    version: Mapped[int] = mapped_column(Integer, default=1)
    definition: Mapped[str] = mapped_column(Text)  # JSON, secrets included: never replied as is
    committed_seq: Mapped[int] = mapped_column(Integer, default=0)
    next_epoch: Mapped[int] = mapped_column(Integer, default=1)
    events_out: Mapped[int] = mapped_column(Integer, default=0)
    bytes_out: Mapped[int] = mapped_column(Integer, default=0)
    files_written: Mapped[int] = mapped_column(Integer, default=0)
    epochs_committed: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_commit_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    stop_from_epoch: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)

    def definition_dict(self) -> dict[str, Any]:
        return json.loads(self.definition)  # type: ignore[no-any-return]


class SqlVersion(Base):
    __tablename__ = "sql_versions"
    __table_args__ = (UniqueConstraint("pipeline_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    pipeline_id: Mapped[str] = mapped_column(ForeignKey("pipelines.id", ondelete="CASCADE"),
                                             index=True)
    version: Mapped[int] = mapped_column(Integer)
    sql: Mapped[str] = mapped_column(Text)
    output_schema: Mapped[str] = mapped_column(Text)  # JSON [{name, type}]
    created_at: Mapped[float] = mapped_column(Float)
    # The definition's schema (JSON, API shape) this version was planned against;
    # None: a version from before schemas could change (the pipeline's first schema).
    input_schema: Mapped[str | None] = mapped_column(Text, nullable=True)


#: ``sort_order`` of an epoch table's own columns between the shared range and progress
#: (``EpochColumns``): each table keeps its columns in the order it first had them.
OWN_EPOCH_COLUMNS = 1
#: ``sort_order`` of the shared progress columns, after the table's own (``EpochColumns``).
EPOCH_PROGRESS_COLUMNS = 2


class EpochColumns:
    """The columns a pipeline's epoch (``epochs``) and a replay's (``replay_epochs``) share.

    Declared once for both tables, each table's columns stay in the order it
    first had them, so a fresh catalog's schema is unchanged: the table's key
    and owner, the range, the table's own (``sort_order=OWN_EPOCH_COLUMNS``),
    then the progress (``sort_order=EPOCH_PROGRESS_COLUMNS``).
    """

    epoch: Mapped[int] = mapped_column(Integer)
    range_start: Mapped[int] = mapped_column(Integer)  # exclusive
    range_end: Mapped[int] = mapped_column(Integer)  # inclusive
    rows_out: Mapped[int] = mapped_column(Integer, default=0, sort_order=EPOCH_PROGRESS_COLUMNS)
    attempts: Mapped[int] = mapped_column(Integer, default=0, sort_order=EPOCH_PROGRESS_COLUMNS)
    planned_at: Mapped[float] = mapped_column(Float, sort_order=EPOCH_PROGRESS_COLUMNS)
    committed_at: Mapped[float | None] = mapped_column(Float, nullable=True,
                                                       sort_order=EPOCH_PROGRESS_COLUMNS)


class FileColumns:
    """The columns of a committed epoch's file, a pipeline's (``epoch_files``) or a
    replay's (``replay_files``), after the table's key and owner."""

    epoch: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    rows: Mapped[int] = mapped_column(Integer)
    bytes: Mapped[int] = mapped_column(Integer)
    min_event_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_event_time: Mapped[float | None] = mapped_column(Float, nullable=True)

    def public(self) -> dict[str, Any]:
        return public_file(self.path, self.rows, self.bytes, self.min_event_time,
                           self.max_event_time, epoch=self.epoch)


class Epoch(EpochColumns, Base):
    __tablename__ = "epochs"
    __table_args__ = (UniqueConstraint("pipeline_id", "epoch"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    pipeline_id: Mapped[str] = mapped_column(ForeignKey("pipelines.id", ondelete="CASCADE"),
                                             index=True)
    sql_version: Mapped[int] = mapped_column(Integer, sort_order=OWN_EPOCH_COLUMNS)
    status: Mapped[str] = mapped_column(String(16), sort_order=OWN_EPOCH_COLUMNS)  # planned | committed
    events: Mapped[int] = mapped_column(Integer, sort_order=OWN_EPOCH_COLUMNS)


class EpochFile(FileColumns, Base):
    __tablename__ = "epoch_files"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    pipeline_id: Mapped[str] = mapped_column(ForeignKey("pipelines.id", ondelete="CASCADE"),
                                             index=True)


class EngineJob(Base):
    """A distributed pipeline's engine job (Dataflow, Flink): the one it runs or ran last.

    ``job_id``/``job_name``/``savepoint``/``location`` are the engine's ``JobHandle``
    (``location``: where the job lives, in the engine's own form; None in a row
    recorded before it was kept); ``state``
    (a ``runners.base.JobState``), ``metrics`` (JSON, the monitor's names) and
    ``message`` are what the engine last reported, at ``state_at``.
    """

    __tablename__ = "engine_jobs"

    pipeline_id: Mapped[str] = mapped_column(ForeignKey("pipelines.id", ondelete="CASCADE"),
                                             primary_key=True)
    engine: Mapped[str] = mapped_column(String(16))
    job_id: Mapped[str] = mapped_column(String(255))
    job_name: Mapped[str] = mapped_column(String(255))
    savepoint: Mapped[str | None] = mapped_column(Text, nullable=True)
    location: Mapped[str | None] = mapped_column(Text, nullable=True)
    state: Mapped[str] = mapped_column(String(32))
    state_at: Mapped[float] = mapped_column(Float)
    metrics: Mapped[str] = mapped_column(Text, default="{}")
    message: Mapped[str | None] = mapped_column(Text, nullable=True)

    def metrics_dict(self) -> dict[str, float]:
        return json.loads(self.metrics or "{}")  # type: ignore[no-any-return]


class LogEntry(Base):
    __tablename__ = "logs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    pipeline_id: Mapped[str | None] = mapped_column(String(40), index=True, nullable=True)
    timestamp: Mapped[float] = mapped_column(Float, index=True)
    level: Mapped[str] = mapped_column(String(8))
    message: Mapped[str] = mapped_column(Text)
    epoch: Mapped[int | None] = mapped_column(Integer, nullable=True)

    def public(self) -> dict[str, Any]:
        return {"timestamp": iso(self.timestamp), "level": self.level, "message": self.message,
                "epoch": self.epoch}


#: Nullable columns added to a table after its first release (``Store.create_all`` adds them).
ADDED_COLUMNS: tuple[tuple[str, str], ...] = (
    ("engine_jobs", "location"),
    ("sql_versions", "input_schema"),
)


def default_database_url(data_dir: str) -> str:
    return "sqlite:///" + os.path.join(os.path.abspath(data_dir), "pipeline-do.sqlite")


class Store:
    """Owns the engine and hands out transactions."""

    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        self.engine: Engine = create_engine(url, future=True, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
            # Take the write lock at BEGIN: a deferred transaction that later
            # writes can fail at once with SQLITE_BUSY when another process
            # committed in between, whatever the busy timeout.
            event.listen(self.engine, "begin",
                         lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Reads need no write lock: a separate engine without BEGIN IMMEDIATE,
        # so the hot ingest path never queues behind epoch commits. A deferred
        # BEGIN still makes a session's reads one snapshot: an epoch committed
        # between two of them cannot show in one and not the other.
        self.read_engine: Engine = self.engine
        if url.startswith("sqlite"):
            self.read_engine = create_engine(url, future=True, **kwargs)
            event.listen(self.read_engine, "connect", _sqlite_pragmas)
            event.listen(self.read_engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN"))
        self._read_sessions = sessionmaker(self.read_engine, expire_on_commit=False)

    def create_all(self) -> None:
        """Create missing tables, then add the ``ADDED_COLUMNS`` an older catalog lacks."""
        from beam_pipelines.catalog import replays  # noqa: F401  (registers its tables)

        Base.metadata.create_all(self.engine)
        self._add_columns()

    def _add_columns(self) -> None:
        """``ALTER TABLE ... ADD COLUMN`` for each added column a table does not have yet.

        ``create_all`` makes missing tables only, so a catalog made by an
        earlier release keeps its old columns. The check and the change are
        one transaction (on SQLite it holds the write lock from BEGIN), so
        processes starting together add a column once; should another
        database race anyway, a column that is there afterwards is fine.
        """
        for table_name, column_name in ADDED_COLUMNS:
            column = Base.metadata.tables[table_name].c[column_name]
            try:
                with self.engine.begin() as conn:
                    have = {c["name"] for c in inspect(conn).get_columns(table_name)}
                    if column_name in have:
                        continue
                    kind = column.type.compile(dialect=self.engine.dialect)
                    conn.exec_driver_sql(f"ALTER TABLE {table_name} ADD COLUMN "
                                         f"{column_name} {kind}")
            except OperationalError:
                with self.engine.connect() as conn:
                    if column_name not in {c["name"] for c in inspect(conn)
                                           .get_columns(table_name)}:
                        raise

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed on success, rolled back on error."""
        with self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A read-only snapshot; never takes the write lock."""
        with self._read_sessions() as session:
            yield session
            session.rollback()

    def log(self, pipeline_id: str | None, level: str, message: str,
            epoch: int | None = None) -> None:
        with self.session() as s:
            s.add(LogEntry(pipeline_id=pipeline_id, timestamp=time.time(), level=level,
                           message=message, epoch=epoch))

    def pipeline_by_ref(self, session: Session, ref: str) -> PipelineRow | None:
        column = PipelineRow.id if ref.startswith("pl_") else PipelineRow.name
        return session.scalars(select(PipelineRow).where(column == ref)).first()

    def dispose(self) -> None:
        self.engine.dispose()
        self.read_engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # BEGIN is ours (see Store.__init__)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
