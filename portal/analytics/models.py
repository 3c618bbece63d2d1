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
    __table_args__ = (
        # Top files over long periods: an index-only scan of every file's daily rows.
        Index("ix_analytics_rollups_grain_grp_bucket_cover", "grain", "grp", "bucket", "file_id",
              "downloads", "completed", "bytes_served"),
        # One file's (or all files') series, heatmap and forecast: only that file's rows.
        Index("ix_analytics_rollups_grain_grp_file_bucket", "grain", "grp", "file_id", "bucket"),
    )

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
    __table_args__ = (
        Index("ix_analytics_user_days_file_day", "file_id", "day"),
        Index("ix_analytics_user_days_file_user_day", "file_id", "user_key", "day"),
    )

    day: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    file_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_key: Mapped[str] = mapped_column(String(48), primary_key=True)
    user_id: Mapped[int | None] = mapped_column(Integer)


class FileUser(db.Model):
    """Each person's first and last day with a counted download of a file (``ALL_FILES``: of
    any file): distinct users over long periods without reading every user-day.

    Over [a, b) a person counts when first_day or last_day is inside, or, when the span covers
    the whole period (first_day < a, last_day >= b), when a user-day inside exists (one index
    probe). Periods that end today (the pages' "last N days") need no probe at all.
    """

    __tablename__ = "analytics_file_users"
    __table_args__ = (Index("ix_analytics_file_users_file_last", "file_id", "last_day",
                            "first_day"),)

    file_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_key: Mapped[str] = mapped_column(String(48), primary_key=True)
    user_id: Mapped[int | None] = mapped_column(Integer)
    first_day: Mapped[datetime] = mapped_column(UTCDateTime)
    last_day: Mapped[datetime] = mapped_column(UTCDateTime)


class FileDetailDay(db.Model):
    """Counted logical downloads per local day (of counted_at), file, version, client class,
    completion decile (0-9, 9 = 90-100 %) and completed: the file detail page over long
    periods without reading every logical download. A download whose coverage grows moves
    from its old decile to its new one."""

    __tablename__ = "analytics_file_details"

    file_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    day: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    version_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ua_class: Mapped[str] = mapped_column(String(16), primary_key=True)
    decile: Mapped[int] = mapped_column(Integer, primary_key=True)
    completed: Mapped[bool] = mapped_column(Boolean, primary_key=True)
    downloads: Mapped[int] = mapped_column(BigInteger, default=0)


class UserGap(db.Model):
    """A run of days without a counted download between two active days of a person and a
    file (``ALL_FILES``: any file): ``gap_from`` and ``gap_to`` are both active local days,
    with no active day between and at least one inactive day (consecutive days make no row).

    Why: exact distinct users over a period that ends before today. Everyone whose first and
    last days (``FileUser``) straddle a period [a, b) was active in it, unless one of their
    gaps covers it whole (gap_from < a and gap_to >= b); each person has at most one such
    gap. So ``distinct users = spans that meet [a, b) - gaps that cover [a, b)``: two index
    range counts, where one user-day probe per person used to be (150-450 ms for the
    180-day overview's previous period at 10 M events).

    ``span_days`` (whole days from gap_from to gap_to, rounded down) only prunes: a gap that
    covers [a, b) is longer than b - a, so the covering count reads only the long gaps.
    """

    __tablename__ = "analytics_user_gaps"
    __table_args__ = (
        # Long periods: few gaps are long enough to cover them.
        Index("ix_analytics_user_gaps_file_span", "file_id", "span_days", "gap_to",
              "gap_from"),
        # Recent periods (and those that end today: none): few gaps end after them.
        Index("ix_analytics_user_gaps_file_to", "file_id", "gap_to", "gap_from"),
    )

    file_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_key: Mapped[str] = mapped_column(String(48), primary_key=True)
    gap_from: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    gap_to: Mapped[datetime] = mapped_column(UTCDateTime)
    span_days: Mapped[int] = mapped_column(Integer)
    user_id: Mapped[int | None] = mapped_column(Integer)
