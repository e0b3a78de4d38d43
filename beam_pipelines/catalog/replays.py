"""The catalog's replays: a retained range run again, as epochs of its own.

A replay (``replays``) runs frames ``(range_start, range_end]`` of a
pipeline's event log through one SQL text into a target sink prefix. All of
its epochs (``replay_epochs``) are planned with their ranges in the same
transaction that makes the replay, before any runs, and each commits once
with its file manifest (``replay_files``), as live epochs do. The pipeline's
own epochs, offsets and files are never touched.

A running replay pins its range: :func:`pinned_after` is what retention
(``EventBuffer.expire``) must keep, until the replay is done, failed, or gone
with its pipeline.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Float, ForeignKey, Integer, String, Text, UniqueConstraint, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from beam_pipelines.catalog.store import OWN_EPOCH_COLUMNS, Base, EpochColumns, FileColumns, Store

__all__ = ["Replay", "ReplayEpoch", "ReplayFile", "pin_of", "pinned_after"]

#: A replay's statuses: it runs until every epoch committed (``done``), an epoch
#: used up its attempts (``failed``), the user cancels it (``cancelled``), or its
#: pipeline is deleted (rows gone).
RUNNING, DONE, FAILED, CANCELLED = "running", "done", "failed", "cancelled"


class Replay(Base):
    __tablename__ = "replays"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # rp_ + 12 hex digits
    pipeline_id: Mapped[str] = mapped_column(ForeignKey("pipelines.id", ondelete="CASCADE"),
                                             index=True)
    status: Mapped[str] = mapped_column(String(16))
    range_start: Mapped[int] = mapped_column(Integer)  # exclusive offset
    range_end: Mapped[int] = mapped_column(Integer)  # inclusive offset
    since: Mapped[float | None] = mapped_column(Float, nullable=True)  # as asked (ingest time)
    until: Mapped[float | None] = mapped_column(Float, nullable=True)
    sql: Mapped[str] = mapped_column(Text)
    sql_version: Mapped[int | None] = mapped_column(Integer, nullable=True)  # None: new SQL
    target_uri: Mapped[str] = mapped_column(Text)
    target_prefix: Mapped[str | None] = mapped_column(Text, nullable=True)  # None: the sink
    epochs_total: Mapped[int] = mapped_column(Integer)
    events_total: Mapped[int] = mapped_column(Integer)
    epochs_done: Mapped[int] = mapped_column(Integer, default=0)
    events_done: Mapped[int] = mapped_column(Integer, default=0)
    rows_out: Mapped[int] = mapped_column(Integer, default=0)
    files_written: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class ReplayEpoch(EpochColumns, Base):
    __tablename__ = "replay_epochs"
    __table_args__ = (UniqueConstraint("replay_id", "epoch"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    replay_id: Mapped[str] = mapped_column(ForeignKey("replays.id", ondelete="CASCADE"),
                                           index=True)
    pipeline_id: Mapped[str] = mapped_column(String(40), index=True)
    events: Mapped[int] = mapped_column(Integer, sort_order=OWN_EPOCH_COLUMNS)
    status: Mapped[str] = mapped_column(String(16), sort_order=OWN_EPOCH_COLUMNS)  # planned | committed


class ReplayFile(FileColumns, Base):
    __tablename__ = "replay_files"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    replay_id: Mapped[str] = mapped_column(ForeignKey("replays.id", ondelete="CASCADE"),
                                           index=True)


def pinned_after(session: Session, pipeline_id: str) -> int | None:
    """The offset after which the pipeline's running replays still need every frame
    (the smallest exclusive start of their uncommitted epochs), or None."""
    return session.scalar(
        select(func.min(ReplayEpoch.range_start))
        .join(Replay, Replay.id == ReplayEpoch.replay_id)
        .where(ReplayEpoch.pipeline_id == pipeline_id, ReplayEpoch.status == "planned",
               Replay.status == RUNNING))


def pin_of(store: Store, pipeline_id: str) -> Callable[[], int | None]:
    """``pinned_after`` of one pipeline as retention asks it (``EventBuffer.expire``)."""
    def pinned() -> int | None:
        with store.reading() as s:
            return pinned_after(s, pipeline_id)
    return pinned
