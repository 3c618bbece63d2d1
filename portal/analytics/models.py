"""Analytics tables: logical downloads, rollups and unique users per day.

Pages read these, never the raw ``download_events`` (which are purged after a retention);
the flusher (materialise.py) maintains them incrementally.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from ..models import UTCDateTime

ALL_USERS = ""  # the rollup group of every user (others are group names)
ALL_FILES = 0  # the rollup "file" that totals every file


class LogicalDownload(db.Model):
    """One person fetching one file version, however many responses it took."""

    __tablename__ = "logical_downloads"
    __table_args__ = (
        Index("ix_logical_downloads_who", "user_key", "version_id", "last_at"),
        Index("ix_logical_downloads_file_started", "file_id", "started_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    user_key: Mapped[str] = mapped_column(String(48))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"),
                                                index=True)
    file_id: Mapped[int] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"))
    version_id: Mapped[int] = mapped_column(ForeignKey("file_versions.id", ondelete="CASCADE"))
    size: Mapped[int] = mapped_column(BigInteger)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    last_at: Mapped[datetime] = mapped_column(UTCDateTime)
    counted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ranges: Mapped[str] = mapped_column(Text, default="")  # delivered bytes, "a-b,c-d"
    covered: Mapped[int] = mapped_column(BigInteger, default=0)
    completion: Mapped[float] = mapped_column(Float, default=0.0)
    events: Mapped[int] = mapped_column(Integer, default=0)
    counted: Mapped[bool] = mapped_column(Boolean, default=False)
    completed: Mapped[bool] = mapped_column(Boolean, default=False)
    ua_class: Mapped[str] = mapped_column(String(16), default="other")


class Rollup(db.Model):
    """Counters per hour ('h') or local day ('d'), file, and user group ('' = everyone).

    requests, bytes_served and cache_hits are per response (bucket of its start);
    downloads and completed are logical downloads (bucket of the response that made it
    count). Category totals join files.
    """

    __tablename__ = "analytics_rollups"
    __table_args__ = (Index("ix_analytics_rollups_grain_grp_bucket", "grain", "grp", "bucket"),)

    grain: Mapped[str] = mapped_column(String(1), primary_key=True)
    bucket: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    file_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    grp: Mapped[str] = mapped_column(String(64), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_served: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_hits: Mapped[int] = mapped_column(BigInteger, default=0)
    downloads: Mapped[int] = mapped_column(BigInteger, default=0)
    completed: Mapped[int] = mapped_column(BigInteger, default=0)


class UserDay(db.Model):
    """Who downloaded which file on which local day: distinct users over any period."""

    __tablename__ = "analytics_user_days"
    __table_args__ = (Index("ix_analytics_user_days_file_day", "file_id", "day"),)

    day: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    file_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_key: Mapped[str] = mapped_column(String(48), primary_key=True)
    user_id: Mapped[int | None] = mapped_column(Integer)
