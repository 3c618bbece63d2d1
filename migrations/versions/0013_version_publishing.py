"""version publishing: a new version of a published document waits until it is published

Every version that exists already is published (``published`` true); old nodes' INSERTs
leave the column out and get the same default, so a version they store is published at
once, as they promise. The SQL here is frozen (no import of live code).

Revision ID: 0013_version_publishing
Revises: 0012_download_limits
"""

import sqlalchemy as sa
from alembic import op

revision = "0013_version_publishing"
down_revision = "0012_download_limits"
branch_labels = None
depends_on = None

# Additive in SQL, but nodes of the release before serve the newest version of a file
# whatever the column says (docs/operations.md, "Upgrades"; scripts/check_migrations.py).
REQUIRES_STOP = (
    "nodes of the release before ignore the published flag: they would serve a pending "
    "version, uploaded through an upgraded node, to every reader of its document")


def upgrade():
    with op.batch_alter_table("file_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("published", sa.Boolean(), nullable=False,
                                      server_default=sa.true()))


def downgrade():
    with op.batch_alter_table("file_versions", schema=None) as batch_op:
        batch_op.drop_column("published")
