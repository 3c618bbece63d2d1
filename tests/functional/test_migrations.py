"""The Alembic migrations build the same schema as the models, on SQLite and PostgreSQL."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import upgrade
from sqlalchemy import inspect

from portal import create_app
from portal.extensions import db


def test_upgrade_matches_models(config):
    app = create_app(config)
    with app.app_context():
        upgrade()
        tables = set(inspect(db.engine).get_table_names())
        assert {"users", "groups", "user_groups", "files", "file_versions",
                "download_events", "alembic_version"} <= tables
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), db.metadata)
        assert diff == []
        upgrade()  # a second upgrade is a no-op
        db.engine.dispose()
