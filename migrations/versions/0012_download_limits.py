"""download limits: the per-person limits admins set on /admin/limits

Each row takes the place of the environment's entry of the same key (PORTAL_DOWNLOAD_LIMITS)
unless the environment locks it. A new table that only the new code reads and writes: nodes
of the release before go on applying the environment's limits until they are replaced, which
is what they did before, so it is additive. The SQL here is frozen (no import of live code).

Revision ID: 0012_download_limits
Revises: 0011_file_drafts
"""

import sqlalchemy as sa
from alembic import op

revision = "0012_download_limits"
down_revision = "0011_file_drafts"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "download_limits",
        sa.Column("who", sa.String(length=80), nullable=False),
        sa.Column("connections", sa.Integer(), nullable=True),
        sa.Column("rate", sa.BigInteger(), nullable=True),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("changed_by_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["changed_by_id"], ["users.id"], ondelete="SET NULL",
                                name=op.f("fk_download_limits_changed_by_id_users")),
        sa.PrimaryKeyConstraint("who", name=op.f("pk_download_limits")),
    )


def downgrade():
    op.drop_table("download_limits")
