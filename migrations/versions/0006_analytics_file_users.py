"""analytics: first and last day per file and person, daily file-detail cells, indexes

Distinct users over 180- or 365-day periods read ``analytics_file_users`` (one row per file
and person) instead of counting distinct keys over every user-day; the file detail page reads
daily cells (version x client class x completion decile x completed). Both are filled from
what is stored (the user-days; the logical downloads).

Revision ID: 0006_analytics_file_users
Revises: 0005_search_trgm
"""

from collections import defaultdict
from datetime import UTC
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from alembic import op

revision = "0006_analytics_file_users"
down_revision = "0005_search_trgm"
branch_labels = None
depends_on = None

# Not safe while nodes of the release before still run: stop them all first
# (docs/operations.md, "Upgrades"; scripts/check_migrations.py).
REQUIRES_STOP = (
    "analytics_file_users and analytics_file_details are filled once, here, from the rows "
    "stored then; nodes of the release before do not keep them, so downloads they record "
    "meanwhile would be missing from the new pages (and the index their queries use is "
    "replaced)")


def upgrade():
    op.create_table(
        "analytics_file_details",
        sa.Column("file_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("ua_class", sa.String(length=16), nullable=False),
        sa.Column("decile", sa.Integer(), nullable=False),
        sa.Column("completed", sa.Boolean(), nullable=False),
        sa.Column("downloads", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("file_id", "day", "version_id", "ua_class", "decile",
                                "completed", name=op.f("pk_analytics_file_details")),
    )
    op.create_table(
        "analytics_file_users",
        sa.Column("file_id", sa.Integer(), nullable=False),
        sa.Column("user_key", sa.String(length=48), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("first_day", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_day", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("file_id", "user_key", name=op.f("pk_analytics_file_users")),
    )
    with op.batch_alter_table("analytics_file_users", schema=None) as batch_op:
        batch_op.create_index("ix_analytics_file_users_file_last",
                              ["file_id", "last_day", "first_day"], unique=False)
    with op.batch_alter_table("analytics_rollups", schema=None) as batch_op:
        batch_op.create_index("ix_analytics_rollups_grain_grp_file_bucket",
                              ["grain", "grp", "file_id", "bucket"], unique=False)
        # (grain, grp, bucket) becomes the prefix of a covering index for top files.
        batch_op.drop_index("ix_analytics_rollups_grain_grp_bucket")
        batch_op.create_index("ix_analytics_rollups_grain_grp_bucket_cover",
                              ["grain", "grp", "bucket", "file_id", "downloads", "completed",
                               "bytes_served"], unique=False)
    with op.batch_alter_table("analytics_user_days", schema=None) as batch_op:
        batch_op.create_index("ix_analytics_user_days_file_user_day",
                              ["file_id", "user_key", "day"], unique=False)
    op.execute(
        "INSERT INTO analytics_file_users (file_id, user_key, user_id, first_day, last_day) "
        "SELECT file_id, user_key, max(user_id), min(day), max(day) "
        "FROM analytics_user_days GROUP BY file_id, user_key")
    _fill_details()


# The cells in one statement on PostgreSQL, as portal.analytics.materialise computed them
# when this migration was written (frozen here: later code must not change what it does).
_DETAILS_FROM_LOGICAL = (
    "INSERT INTO analytics_file_details AS t (file_id, day, version_id, ua_class, decile,"
    " completed, downloads) SELECT file_id, date_trunc('day', counted_at, :tz), version_id,"
    " ua_class, CASE WHEN completion >= 1.0 THEN 9 ELSE floor(completion * 10)::int END,"
    " completed, count(*) FROM logical_downloads WHERE id > :after AND counted"
    " GROUP BY 1, 2, 3, 4, 5, 6 ON CONFLICT (file_id, day, version_id, ua_class, decile,"
    " completed) DO UPDATE SET downloads = t.downloads + excluded.downloads")

_LOGICAL = sa.table(
    "logical_downloads", sa.column("id", sa.Integer()), sa.column("file_id", sa.Integer()),
    sa.column("version_id", sa.Integer()), sa.column("size", sa.BigInteger()),
    sa.column("counted_at", sa.DateTime(timezone=True)), sa.column("ranges", sa.Text()),
    sa.column("counted", sa.Boolean()), sa.column("completed", sa.Boolean()),
    sa.column("ua_class", sa.String()))
_DETAILS = sa.table(
    "analytics_file_details", sa.column("file_id", sa.Integer()),
    sa.column("day", sa.DateTime(timezone=True)), sa.column("version_id", sa.Integer()),
    sa.column("ua_class", sa.String()), sa.column("decile", sa.Integer()),
    sa.column("completed", sa.Boolean()), sa.column("downloads", sa.BigInteger()))


def _fill_details():
    """The file-detail cells of the logical downloads already stored (local days of the
    configured ANALYTICS_TIMEZONE)."""
    from flask import current_app, has_app_context

    if not has_app_context():
        return
    tz = ZoneInfo(current_app.config["ANALYTICS_TIMEZONE"])
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text(_DETAILS_FROM_LOGICAL), {"tz": tz.key, "after": 0})
        return
    cells = defaultdict(int)
    for row in conn.execute(sa.select(_LOGICAL).where(_LOGICAL.c.id > 0,
                                                      _LOGICAL.c.counted.is_(True))):
        counted_at = row.counted_at
        if counted_at.tzinfo is None:  # SQLite keeps UTC without an offset
            counted_at = counted_at.replace(tzinfo=UTC)
        local = counted_at.astimezone(tz).replace(hour=0, minute=0, second=0, microsecond=0)
        completion = _completion(row.size, row.ranges)
        cells[(row.file_id, local.astimezone(UTC), row.version_id, row.ua_class,
               9 if completion >= 1.0 else int(completion * 10), bool(row.completed))] += 1
    keys = ("file_id", "day", "version_id", "ua_class", "decile", "completed")
    rows = [{**dict(zip(keys, key, strict=True)), "downloads": n} for key, n in cells.items()]
    if rows:
        conn.execute(sa.insert(_DETAILS), rows)


def _completion(size, ranges):
    """Covered bytes / size of a counted download (1.0 for an empty file); ``ranges`` is
    the delivered bytes as inclusive text, "a-b,c-d" (malformed parts skipped)."""
    if size <= 0:
        return 1.0
    covered = 0
    for part in (ranges or "").split(","):
        first, sep, last = part.strip().partition("-")
        if sep and first.isdigit() and last.isdigit() and int(last) >= int(first):
            covered += int(last) + 1 - int(first)
    return min(1.0, covered / size)


def downgrade():
    with op.batch_alter_table("analytics_rollups", schema=None) as batch_op:
        batch_op.drop_index("ix_analytics_rollups_grain_grp_bucket_cover")
        batch_op.create_index("ix_analytics_rollups_grain_grp_bucket",
                              ["grain", "grp", "bucket"], unique=False)
        batch_op.drop_index("ix_analytics_rollups_grain_grp_file_bucket")
    with op.batch_alter_table("analytics_user_days", schema=None) as batch_op:
        batch_op.drop_index("ix_analytics_user_days_file_user_day")
    with op.batch_alter_table("analytics_file_users", schema=None) as batch_op:
        batch_op.drop_index("ix_analytics_file_users_file_last")
    op.drop_table("analytics_file_users")
    op.drop_table("analytics_file_details")
