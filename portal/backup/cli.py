"""``flask --app wsgi backup create|verify|restore`` (docs/operations.md)."""

from __future__ import annotations

from pathlib import Path

import click
from flask import current_app
from flask.cli import AppGroup

from ..config import settings
from ..extensions import db
from ..storage import get_storage
from .place import BackupError, Place, place_of

backup_cli = AppGroup("backup", help="Back up, check and restore the database and the files.")

_PG_BIN = click.option("--pg-bin", metavar="DIR",
                       help="Folder of pg_dump and pg_restore [default: the server's major "
                            "version's, found under /usr/lib/postgresql or on PATH].")
_WHERE = "DIR|s3://BUCKET/PREFIX"


def _upload_area() -> Path:
    from ..uploads.service import upload_area

    return upload_area(get_storage(), settings().upload_dir, current_app.instance_path)


def _place(where: str) -> Place:
    try:
        return place_of(where)
    except BackupError as exc:
        raise click.ClickException(str(exc)) from exc


@backup_cli.command("create")
@click.option("--to", "where", required=True, metavar=_WHERE,
              help="A new (or empty) folder or S3 prefix for this backup.")
@click.option("--objects/--no-objects", default=None,
              help="Copy the stored objects into the backup [default: yes for file:// "
                   "storage; for s3:// storage only their keys and SHA-256 are listed].")
@click.option("--uploads", is_flag=True, help="Also keep unfinished uploads, to resume them.")
@_PG_BIN
def create_command(where, objects, uploads, pg_bin):
    """Back up while the portal serves: the database snapshot first, then every object it
    references, the configuration without secrets, and a manifest of checksums."""
    from .create import create_backup

    storage_url = settings().storage_url
    if objects is None:
        objects = not storage_url.startswith("s3://")
    place = _place(where)
    try:
        created = create_backup(db.engine, get_storage(), storage_url, _upload_area(), place,
                                copy_objects=objects, uploads=uploads, pg_bin=pg_bin)
    except BackupError as exc:
        raise click.ClickException(f"backup failed: {exc}") from exc
    finally:
        place.close()
    click.echo(created.summary())


@backup_cli.command("verify")
@click.argument("where", metavar=_WHERE)
@_PG_BIN
def verify_command(where, pg_bin):
    """Check a backup without restoring it: checksums, every object's SHA-256, the
    database snapshot readable. Exit 1 with each problem when anything is wrong."""
    from .verify import verify_backup

    place = _place(where)
    try:
        checked = verify_backup(place, get_storage(), pg_bin)
    except BackupError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        place.close()
    for problem in checked.problems:
        click.echo(problem, err=True)
    click.echo(checked.summary())
    if checked.problems:
        raise click.exceptions.Exit(1)


@backup_cli.command("restore")
@click.argument("where", metavar=_WHERE)
@_PG_BIN
def restore_command(where, pg_bin):
    """Restore a backup into this instance's empty database and its storage, migrate it to
    this portal's schema, give it a new identity and end every session and signed link."""
    from .restore import restore_backup

    place = _place(where)
    try:
        restored = restore_backup(db.engine, get_storage(), _upload_area(), place,
                                  current_app.extensions["migrate"].directory, pg_bin=pg_bin)
    except BackupError as exc:
        raise click.ClickException(f"restore failed: {exc}") from exc
    finally:
        place.close()
    click.echo(restored.summary())
