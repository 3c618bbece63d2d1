"""analytics: first and last day per file and person, daily file-detail cells, indexes

Distinct users over 180- or 365-day periods read ``analytics_file_users`` (one row per file
and person) instead of counting distinct keys over every user-day; the file detail page reads
daily cells (version x client class x completion decile x completed). Both are filled from
what is stored (the user-days; the logical downloads).

Revision ID: 0006_analytics_file_users
Revises: 0005_search_trgm
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_analytics_file_users"
down_revision = "0005_search_trgm"
branch_labels = None
depends_on = None


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


def _fill_details():
    """The file-detail cells of the logical downloads already stored (local days of the
    configured ANALYTICS_TIMEZONE)."""
    from flask import current_app, has_app_context

    from portal.analytics import materialise

    if not has_app_context():
        return
    settings = materialise.Settings.from_config(current_app.config)
    materialise.details_from_logical(op.get_bind(), settings)


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
