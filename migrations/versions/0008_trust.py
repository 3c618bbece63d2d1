"""trust: the database's identity and generation, the change log, revoked tokens, and the
users' session generation

Revocations live in SQL (portal/coherence.py); Redis only carries them faster. The SQL
here is frozen (no import of live code), and the state row gets a new random identity.

Revision ID: 0008_trust
Revises: 0007_analytics_user_gaps
"""

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0008_trust"
down_revision = "0007_analytics_user_gaps"
branch_labels = None
depends_on = None

# Not safe while nodes of the release before still run: stop them all first
# (docs/operations.md, "Upgrades"; scripts/check_migrations.py).
REQUIRES_STOP = (
    "nodes of the release before change files, users and links without moving the "
    "generation or writing the change log, so upgraded nodes would go on trusting their "
    "cached copies of what old nodes changed (a revoked link, a disabled user)")


def upgrade():
    state = op.create_table(
        "portal_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("identity", sa.String(length=32), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_portal_state")),
    )
    op.bulk_insert(state, [{"id": 1, "identity": uuid.uuid4().hex, "generation": 0}])
    op.create_table(
        "change_log",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("subject", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_change_log")),
    )
    with op.batch_alter_table("change_log", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_change_log_generation"), ["generation"])
        batch_op.create_index(batch_op.f("ix_change_log_at"), ["at"])
    op.create_table(
        "revoked_tokens",
        sa.Column("nonce", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE",
                                name=op.f("fk_revoked_tokens_user_id_users")),
        sa.PrimaryKeyConstraint("nonce", name=op.f("pk_revoked_tokens")),
    )
    with op.batch_alter_table("revoked_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_revoked_tokens_expires_at"), ["expires_at"])
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("session_gen", sa.Integer(), server_default="0",
                                      nullable=False))


def downgrade():
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("session_gen")
    op.drop_table("revoked_tokens")
    op.drop_table("change_log")
    op.drop_table("portal_state")
