"""sso: where each account lives, and the CAS tickets that single logout names

Directory users (LDAP, CAS, OIDC) are marked by ``users.auth_source`` so that
``user sync-ldap`` knows whose accounts the directory decides; ``sso_sessions`` maps a CAS
service ticket to the session it started. The SQL here is frozen (no import of live code).

Revision ID: 0009_sso
Revises: 0008_trust
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_sso"
down_revision = "0008_trust"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("auth_source", sa.String(length=8),
                                      server_default="local", nullable=False))
    op.create_table(
        "sso_sessions",
        sa.Column("ticket", sa.String(length=256), nullable=False),
        sa.Column("nonce", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE",
                                name=op.f("fk_sso_sessions_user_id_users")),
        sa.PrimaryKeyConstraint("ticket", name=op.f("pk_sso_sessions")),
    )
    with op.batch_alter_table("sso_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sso_sessions_expires_at"), ["expires_at"])


def downgrade():
    op.drop_table("sso_sessions")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("auth_source")
