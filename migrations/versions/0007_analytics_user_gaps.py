"""analytics: gaps between a person's active days, for exact distinct users of past periods

``analytics_user_gaps`` holds, per file (0 = any file) and person, each run of inactive days
between two active days. Distinct users over a period that ends before today (the overview's
"previous period") become two index range counts instead of one user-day probe per person.
Filled from the user-days already stored.

Revision ID: 0007_analytics_user_gaps
Revises: 0006_analytics_file_users
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_analytics_user_gaps"
down_revision = "0006_analytics_file_users"
branch_labels = None
depends_on = None


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
    from portal.analytics import materialise

    materialise.gaps_from_user_days(op.get_bind())


def downgrade():
    with op.batch_alter_table("analytics_user_gaps", schema=None) as batch_op:
        batch_op.drop_index("ix_analytics_user_gaps_file_to")
        batch_op.drop_index("ix_analytics_user_gaps_file_span")
    op.drop_table("analytics_user_gaps")
