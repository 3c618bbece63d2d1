"""analytics: gaps between a person's active days, for exact distinct users of past periods

``analytics_user_gaps`` holds, per file (0 = any file) and person, each run of inactive days
between two active days. Distinct users over a period that ends before today (the overview's
"previous period") become two index range counts instead of one user-day probe per person.
Filled from the user-days already stored.

Revision ID: 0007_analytics_user_gaps
Revises: 0006_analytics_file_users
"""

from collections import defaultdict
from datetime import UTC, timedelta
from itertools import pairwise

import sqlalchemy as sa
from alembic import op

revision = "0007_analytics_user_gaps"
down_revision = "0006_analytics_file_users"
branch_labels = None
depends_on = None

# Not safe while nodes of the release before still run: stop them all first
# (docs/operations.md, "Upgrades"; scripts/check_migrations.py).
REQUIRES_STOP = (
    "analytics_user_gaps is filled once, here, from the user-days stored then; nodes of the "
    "release before do not keep it, so the distinct users of the downloads they record "
    "meanwhile would be miscounted")


def upgrade():
    op.create_table(
        "analytics_user_gaps",
        sa.Column("file_id", sa.Integer(), nullable=False),
        sa.Column("user_key", sa.String(length=48), nullable=False),
        sa.Column("gap_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("gap_to", sa.DateTime(timezone=True), nullable=False),
        sa.Column("span_days", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("file_id", "user_key", "gap_from",
                                name=op.f("pk_analytics_user_gaps")),
    )
    with op.batch_alter_table("analytics_user_gaps", schema=None) as batch_op:
        batch_op.create_index("ix_analytics_user_gaps_file_span",
                              ["file_id", "span_days", "gap_to", "gap_from"], unique=False)
        batch_op.create_index("ix_analytics_user_gaps_file_to",
                              ["file_id", "gap_to", "gap_from"], unique=False)
    _fill_gaps()


# Every gap from the user-days in one statement on PostgreSQL (lag() finds each active day's
# predecessor), as portal.analytics.materialise derived them when this migration was written
# (frozen here: later code must not change what it does).
_GAPS_FROM_USER_DAYS = """
INSERT INTO analytics_user_gaps (file_id, user_key, gap_from, gap_to, span_days, user_id)
SELECT file_id, user_key, prev, day, floor(extract(epoch FROM day - prev) / 86400)::int,
       user_id
FROM (SELECT file_id, user_key, day, user_id,
             lag(day) OVER (PARTITION BY file_id, user_key ORDER BY day) AS prev
      FROM analytics_user_days) AS x
WHERE day - prev > interval '36 hours'
"""

# Consecutive local days are at most 25 hours apart (a DST change), days with one between at
# least 46: a gap only where a whole inactive day lies between two active days.
_GAP_MIN = timedelta(hours=36)

_USER_DAYS = sa.table(
    "analytics_user_days", sa.column("day", sa.DateTime(timezone=True)),
    sa.column("file_id", sa.Integer()), sa.column("user_key", sa.String()),
    sa.column("user_id", sa.Integer()))
_GAPS = sa.table(
    "analytics_user_gaps", sa.column("file_id", sa.Integer()),
    sa.column("user_key", sa.String()), sa.column("gap_from", sa.DateTime(timezone=True)),
    sa.column("gap_to", sa.DateTime(timezone=True)), sa.column("span_days", sa.Integer()),
    sa.column("user_id", sa.Integer()))


def _fill_gaps():
    """The gaps the stored user-days imply: in SQL on PostgreSQL, through Python elsewhere."""
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text(_GAPS_FROM_USER_DAYS))
        return
    u = _USER_DAYS.c
    days = defaultdict(list)
    users = {}
    for fid, key, day, user_id in conn.execute(
            sa.select(u.file_id, u.user_key, u.day, u.user_id)
            .order_by(u.file_id, u.user_key, u.day)):
        days[(fid, key)].append(day if day.tzinfo else day.replace(tzinfo=UTC))
        if user_id is not None or (fid, key) not in users:
            users[(fid, key)] = user_id
    rows = [{"file_id": fid, "user_key": key, "gap_from": a, "gap_to": b,
             "span_days": (b - a) // timedelta(days=1), "user_id": users[(fid, key)]}
            for (fid, key), pair_days in days.items()
            for a, b in pairwise(pair_days) if b - a > _GAP_MIN]
    if rows:
        conn.execute(sa.insert(_GAPS), rows)


def downgrade():
    with op.batch_alter_table("analytics_user_gaps", schema=None) as batch_op:
        batch_op.drop_index("ix_analytics_user_gaps_file_to")
        batch_op.drop_index("ix_analytics_user_gaps_file_span")
    op.drop_table("analytics_user_gaps")
