"""trigram indexes for catalog search on PostgreSQL

The catalog searches with lower(column) LIKE '%word%'. On PostgreSQL a GIN index with
pg_trgm's operator class serves exactly that predicate; SQLite has no such index and scans,
which is fine for a campus catalog. The indexes are not in the models (SQLite would get
useless expression indexes), so migrations/env.py tells autogenerate to leave them alone.

Revision ID: 0005_search_trgm
Revises: 0004_analytics
"""

from alembic import op
from sqlalchemy import text

revision = "0005_search_trgm"
down_revision = "0004_analytics"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_files_title_trgm": ("files", "title"),
    "ix_files_description_trgm": ("files", "description"),
    "ix_file_versions_original_filename_trgm": ("file_versions", "original_filename"),
}


def upgrade():
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    # The operator class lives in the schema the extension was installed in (once per
    # database), which need not be on this connection's search_path.
    schema = bind.execute(text(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
        " WHERE e.extname = 'pg_trgm'")).scalar_one()
    for name, (table, column) in INDEXES.items():
        op.execute(f'CREATE INDEX IF NOT EXISTS {name} ON {table} '
                   f'USING gin (lower({column}) "{schema}".gin_trgm_ops)')


def downgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    for name in INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
