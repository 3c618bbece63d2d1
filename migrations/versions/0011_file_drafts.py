"""file drafts: an upload stays unpublished, seen only by those who manage it, until published

Every file that exists already is published (``draft`` false). An upload records whether the
document it creates is a draft, and whether it may repeat content a document has already. The SQL here is frozen (no
import of live code).

Revision ID: 0011_file_drafts
Revises: 0010_user_identities
"""

import sqlalchemy as sa
from alembic import op

revision = "0011_file_drafts"
down_revision = "0010_user_identities"
branch_labels = None
depends_on = None

# Not safe while nodes of the release before still run: stop them all first
# (docs/operations.md, "Upgrades"; scripts/check_migrations.py).
REQUIRES_STOP = (
    "nodes of the release before know nothing of drafts: they would list and serve a draft "
    "uploaded through an upgraded node to everyone its access rule lets read it")


def upgrade():
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.add_column(sa.Column("draft", sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.add_column(sa.Column("draft", sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
        batch_op.add_column(sa.Column("allow_duplicate", sa.Boolean(), nullable=False,
                                      server_default=sa.false()))


def downgrade():
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.drop_column("allow_duplicate")
        batch_op.drop_column("draft")
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.drop_column("draft")
