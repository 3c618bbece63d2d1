"""scripts/check_migrations.py, the CI check that keeps rolling upgrades possible: every
migration of the repository is additive (safe while nodes of the release before still
run) or says why it needs every node stopped; and the check does catch the SQL old nodes
would trip over, in migrations made up for the test. Needs PostgreSQL."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from tests.helpers import PG_URL, unavailable

ROOT = Path(__file__).resolve().parents[2]

#: Made-up migrations after the head: (name, upgrade body, REQUIRES_STOP line or "").
PROBES = [
    ("drop", 'op.drop_column("files", "description")', ""),
    ("rename", 'op.alter_column("users", "display_name", new_column_name="shown_name")', ""),
    ("notnull", 'op.add_column("files", sa.Column("note", sa.Text(), nullable=False))', ""),
    ("retype", 'op.alter_column("files", "category", type_=sa.Text())', ""),
    ("required", 'op.alter_column("groups", "description", nullable=False, '
                 'existing_type=sa.String(256))', ""),
    ("unique", 'op.create_unique_constraint("uq_users_shown", "users", ["shown_name"])', ""),
    ("purge", 'op.execute("DELETE FROM audit_log")', ""),
    ("told", 'op.drop_table("sso_sessions")', 'REQUIRES_STOP = "the tickets go"'),
    ("bare", 'op.drop_index("ix_files_category", table_name="files")', "REQUIRES_STOP = True"),
    ("fine", 'op.add_column("files", sa.Column("note2", sa.Text(), nullable=True))\n'
             '    op.create_table("extras", sa.Column("id", sa.Integer(), primary_key=True),\n'
             '                    sa.Column("x", sa.Text(), nullable=False))\n'
             '    op.create_unique_constraint("uq_extras_x", "extras", ["x"])', ""),
]


@pytest.fixture(autouse=True)
def _pg_trgm_in_public(pg_admin):
    """The script's scratch schema is dropped afterwards: the extension must not live there
    (tests/conftest.py's pg_admin puts it in public first)."""


def check(migrations: Path | None = None) -> subprocess.CompletedProcess:
    if not PG_URL:
        unavailable("scripts/check_migrations.py needs PORTAL_TEST_DATABASE_URL")
    args = [sys.executable, str(ROOT / "scripts" / "check_migrations.py"),
            "--database-url", PG_URL]
    if migrations is not None:
        args += ["--migrations", str(migrations)]
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900,
                          check=False)


def test_every_migration_is_additive_or_says_why_it_needs_a_stop():
    done = check()
    assert done.returncode == 0, done.stderr[-3000:]
    revisions = [r.revision for r in ScriptDirectory(str(ROOT / "migrations")).walk_revisions()]
    lines = done.stdout.splitlines()
    for revision in revisions:
        assert any(line.startswith(f"{revision}: ") for line in lines), revision


def test_the_check_finds_what_old_nodes_would_trip_over(tmp_path):
    migrations = tmp_path / "migrations"
    shutil.copytree(ROOT / "migrations", migrations,
                    ignore=shutil.ignore_patterns("__pycache__"))
    previous = ScriptDirectory(str(migrations)).get_current_head()
    for number, (name, body, marker) in enumerate(PROBES, start=1):
        revision = f"9{number:03d}_{name}"
        (migrations / "versions" / f"{revision}.py").write_text(textwrap.dedent(f'''\
            """a made-up migration: {name}"""
            import sqlalchemy as sa
            from alembic import op

            revision = "{revision}"
            down_revision = "{previous}"
            branch_labels = None
            depends_on = None
            {marker}


            def upgrade():
                {{body}}
            ''').replace("{body}", body))
        previous = revision
    done = check(migrations)
    assert done.returncode == 1
    wrong = {line.split(":")[0]: line for line in done.stderr.splitlines() if line[:1] == "9"}
    right = {line.split(":")[0]: line for line in done.stdout.splitlines() if line[:1] == "9"}
    expected = {
        "9001_drop": "drops a column of files",
        "9002_rename": "renames in users",
        "9003_notnull": "adds a NOT NULL column without a default to files",
        "9004_retype": "changes a column type of files",
        "9005_required": "makes a column of groups NOT NULL",
        "9006_unique": "adds a unique constraint to users",
        "9007_purge": "removes rows of audit_log",
    }
    for revision, finding in expected.items():
        assert revision in wrong, (revision, done.stdout, done.stderr[-2000:])
        assert f"not additive and no REQUIRES_STOP: {finding}" in wrong[revision]
    assert "REQUIRES_STOP must be the reason" in wrong["9009_bare"]
    assert right["9008_told"].startswith("9008_told: requires a stop: the tickets go")
    assert right["9010_fine"] == "9010_fine: additive: safe while old nodes run"
    assert set(wrong) == {*expected, "9009_bare"}
