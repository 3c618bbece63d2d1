"""The Alembic migrations build the same schema as the models, on SQLite and PostgreSQL."""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import upgrade
from sqlalchemy import inspect

from portal import create_app
from portal.extensions import db, migration_include_object

pytestmark = pytest.mark.databases  # the migrations build each dialect's schema


def test_upgrade_matches_models(config):
    app = create_app(config)
    with app.app_context():
        upgrade()
        tables = set(inspect(db.engine).get_table_names())
        assert {"users", "groups", "user_groups", "files", "file_versions",
                "download_events", "alembic_version"} <= tables
        with db.engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"include_object": migration_include_object})
            diff = compare_metadata(context, db.metadata)
            if conn.dialect.name == "postgresql":  # the trigram search indexes exist
                names = {ix["name"] for ix in inspect(conn).get_indexes("files")}
                assert {"ix_files_title_trgm", "ix_files_description_trgm"} <= names
        assert diff == []
        upgrade()  # a second upgrade is a no-op
        db.engine.dispose()
