"""``flask --app wsgi uploads purge``: remove abandoned uploads (run it from cron)."""

from __future__ import annotations

from datetime import timedelta

import click
from flask import current_app

from ..config import settings
from ..extensions import db
from ..storage import get_storage
from . import bp, service


@bp.cli.command("purge")
@click.option("--older-than-hours", type=click.IntRange(min=1), default=48, show_default=True,
              help="Remove uploads not written to for this long.")
def purge(older_than_hours: int) -> None:
    """Remove unfinished uploads nobody has continued, and orphaned data files."""
    area = service.upload_area(get_storage(), settings().upload_dir,
                               current_app.instance_path)
    removed = service.purge_stale(db.session, area, older_than=timedelta(hours=older_than_hours))
    click.echo(f"removed {removed} stale upload(s)")
