"""Which migrations may run while nodes of the previous release still serve (docs/
operations.md, "Upgrades"): every migration's upgrade() is run against a scratch PostgreSQL
schema, one revision at a time, and the SQL it sends is read. A statement that old nodes
could trip over makes the migration non-additive:

- DROP of a table, index, column, constraint or default; a RENAME;
- a column's type changed, or a column made NOT NULL;
- a NOT NULL column added without a default;
- a UNIQUE, CHECK, FOREIGN KEY or PRIMARY KEY constraint, or a unique index, added to a
  table that existed before the migration (old nodes' writes may break it);
- rows deleted from, or a table truncated, that existed before.

Such a migration must say so: ``REQUIRES_STOP = "why"`` in its file (a non-empty reason).
Some migrations are additive in SQL and still need every node stopped (old nodes would not
fill a table the new code reads): they carry the marker too, as their authors judge. Exit
status 1, with one line per migration in the wrong, when one lacks it::

    .venv/bin/python scripts/check_migrations.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test

PostgreSQL is where several nodes share one database (SQLite is one node), and its SQL is
what the rules read. The URL defaults to PORTAL_TEST_DATABASE_URL; a schema of its own is
made and dropped.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_QUOTED = re.compile(r"'(?:[^']|'')*'")
_NAME = r'"?(?:\w+"?\."?)?(\w+)"?'  # a table, maybe schema-qualified, maybe quoted
RULES = [
    (re.compile(rf"^DROP (TABLE|INDEX|VIEW|MATERIALIZED VIEW|SEQUENCE|TYPE|SCHEMA|"
                rf"EXTENSION|FUNCTION|TRIGGER) (?:IF EXISTS )?{_NAME}"), "drops {0} {1}"),
    (re.compile(rf"^ALTER TABLE (?:ONLY )?{_NAME} .*\bDROP (COLUMN|CONSTRAINT|DEFAULT)\b"),
     "drops a {1} of {0}"),
    (re.compile(rf"^ALTER (?:TABLE|INDEX|SEQUENCE|VIEW) (?:ONLY )?{_NAME} .*\bRENAME\b"),
     "renames in {0}"),
    (re.compile(rf"^ALTER TABLE (?:ONLY )?{_NAME} .*\bALTER COLUMN \S+ (?:SET DATA )?TYPE\b"),
     "changes a column type of {0}"),
    (re.compile(rf"^ALTER TABLE (?:ONLY )?{_NAME} .*\bSET NOT NULL\b"),
     "makes a column of {0} NOT NULL"),
]
_ADD_COLUMN = re.compile(rf"^ALTER TABLE (?:ONLY )?{_NAME} ADD (?:COLUMN )?(.*)$")
_ADD_CONSTRAINT = re.compile(
    rf"^ALTER TABLE (?:ONLY )?{_NAME} ADD CONSTRAINT \S+ (UNIQUE|CHECK|FOREIGN KEY|"
    rf"PRIMARY KEY)\b")
_UNIQUE_INDEX = re.compile(rf"^CREATE UNIQUE INDEX .* ON (?:ONLY )?{_NAME}")
_REMOVE_ROWS = re.compile(rf"^(?:DELETE FROM|TRUNCATE(?: TABLE)?) (?:ONLY )?{_NAME}")
_CREATE_TABLE = re.compile(rf"^CREATE TABLE (?:IF NOT EXISTS )?{_NAME}")


@dataclass
class Migration:
    """One revision: the SQL its upgrade sent, what in it is not additive, its marker."""

    revision: str
    statements: list[str] = field(default_factory=list)
    marker: object = None

    def findings(self) -> list[str]:
        """Why old nodes could trip over this migration's SQL (empty: additive)."""
        created, found = set(), []
        for raw in self.statements:
            sql = " ".join(_QUOTED.sub("''", raw).split()).upper().rstrip(";")
            if "ALEMBIC_VERSION" in sql:
                continue
            made = _CREATE_TABLE.match(sql)
            if made:
                created.add(made.group(1))
                continue
            for rule, say in RULES:
                hit = rule.match(sql)
                if hit:
                    found.append(say.format(*(g.lower() for g in hit.groups())))
            added = _ADD_COLUMN.match(sql)
            if added and added.group(1) not in created and "NOT NULL" in added.group(2) \
                    and " DEFAULT " not in f" {added.group(2)} " \
                    and not added.group(2).startswith("CONSTRAINT"):
                found.append(f"adds a NOT NULL column without a default to "
                             f"{added.group(1).lower()}")
            for pattern, say in ((_ADD_CONSTRAINT, "adds a {1} constraint to {0}"),
                                 (_UNIQUE_INDEX, "adds a unique index to {0}"),
                                 (_REMOVE_ROWS, "removes rows of {0}")):
                hit = pattern.match(sql)
                if hit and hit.group(1) not in created:
                    found.append(say.format(*(g.lower() for g in hit.groups())))
        return list(dict.fromkeys(found))

    def verdict(self) -> tuple[bool, str]:
        """(in order, one line for the report)."""
        findings = self.findings()
        reason = self.marker if isinstance(self.marker, str) else ""
        if self.marker is not None and not reason.strip():
            return False, (f"{self.revision}: REQUIRES_STOP must be the reason, as text "
                           f"(found {self.marker!r})")
        if reason.strip():
            seen = f" (its SQL: {'; '.join(findings)})" if findings else ""
            return True, f"{self.revision}: requires a stop: {reason.strip()}{seen}"
        if findings:
            return False, (f"{self.revision}: not additive and no REQUIRES_STOP: "
                           f"{'; '.join(findings)}")
        return True, f"{self.revision}: additive: safe while old nodes run"


def run(database_url: str, migrations: Path) -> list[Migration]:
    """Upgrade a scratch schema revision by revision, recording each one's SQL."""
    from alembic.script import ScriptDirectory
    from flask_migrate import upgrade
    from sqlalchemy import create_engine, event, text
    from sqlalchemy.engine import make_url

    schema = f"rolling_{uuid.uuid4().hex[:12]}"
    admin = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(database_url).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        from portal import create_app
        from portal.extensions import db

        scratch = Path(tempfile.mkdtemp(prefix="portal-rolling-"))
        app = create_app({
            "TESTING": True, "SECRET_KEY": "check-migrations",
            "DATABASE_URL": url.render_as_string(hide_password=False),
            "STORAGE_URL": (scratch / "storage").as_uri(), "INSTANCE_PATH": str(scratch),
            "REDIS_URL": os.environ.get("PORTAL_REDIS_URL", "redis://127.0.0.1:6379/0")})
        script = ScriptDirectory(str(migrations))
        revisions = list(reversed(list(script.walk_revisions())))
        found = []
        with app.app_context():
            current: Migration | None = None

            def record(_conn, _cursor, statement, *_args) -> None:
                if current is not None:
                    current.statements.append(statement)

            event.listen(db.engine, "before_cursor_execute", record)
            for revision in revisions:
                current = Migration(revision.revision,
                                    marker=getattr(revision.module, "REQUIRES_STOP", None))
                upgrade(directory=str(migrations), revision=revision.revision)
                found.append(current)
            current = None
            db.engine.dispose()
        return found
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("PORTAL_TEST_DATABASE_URL"),
                        help="PostgreSQL to run the migrations on [PORTAL_TEST_DATABASE_URL]")
    parser.add_argument("--migrations", type=Path, default=ROOT / "migrations",
                        help="the migrations folder [migrations/]")
    args = parser.parse_args(argv)
    if not args.database_url or not args.database_url.startswith("postgresql"):
        print("check_migrations: needs a PostgreSQL URL (--database-url or "
              "PORTAL_TEST_DATABASE_URL)", file=sys.stderr)
        return 2
    import logging

    logging.getLogger("alembic").setLevel(logging.WARNING)
    wrong = 0
    for migration in run(args.database_url, args.migrations):
        fine, line = migration.verdict()
        wrong += not fine
        print(line, file=sys.stdout if fine else sys.stderr)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
