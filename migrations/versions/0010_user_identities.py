"""user identities: directory accounts bound to the portal user they sign in as

A directory sign-in (LDAP, CAS, OIDC) is matched by its method, issuer and subject, never
by its user name alone. The accounts that exist already keep ``users.auth_source`` and get
no identity: a directory user is then unbound, and the first sign-in of its name by its own
method binds it (``user sync-ldap`` binds every LDAP user the directory lists); local
accounts are never bound by a sign-in, only by ``user link``. The SQL here is frozen (no
import of live code).

Revision ID: 0010_user_identities
Revises: 0009_sso
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_user_identities"
down_revision = "0009_sso"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "user_identities",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("issuer", sa.String(length=255), nullable=False),
        sa.Column("subject", sa.String(length=512), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE",
                                name=op.f("fk_user_identities_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_identities")),
        sa.UniqueConstraint("method", "issuer", "subject",
                            name="uq_user_identities_method_issuer_subject"),
    )
    with op.batch_alter_table("user_identities", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_user_identities_user_id"), ["user_id"])


def downgrade():
    op.drop_table("user_identities")
