"""``flask --app wsgi analytics flush|purge|simulate|rebuild``."""

from __future__ import annotations

import signal
import sys
import time
from datetime import UTC, datetime, timedelta

import click
from flask import current_app
from flask.cli import AppGroup

from ..extensions import db
from . import materialise
from .recorder import recorder

analytics_cli = AppGroup("analytics", help="Download analytics: flush, purge, simulate.")


def _settings() -> materialise.Settings:
    return materialise.Settings.from_config(current_app.config)


@analytics_cli.command("flush")
@click.option("--follow", is_flag=True,
              help="Keep flushing every --interval seconds until stopped (SIGTERM, Ctrl-C).")
@click.option("--interval", type=click.FloatRange(min=0.1), default=None,
              help="Seconds between flushes when caught up [default: ANALYTICS_FLUSH_SECONDS].")
@click.option("--nginx/--no-nginx", default=True, show_default=True,
              help="Read nginx's event log (ANALYTICS_NGINX_LOG) too.")
@click.option("--quiet", is_flag=True, help="Print nothing while following.")
@click.option("--paced", is_flag=True,
              help="While the CPUs are busy, read nginx's log at most "
                   "ANALYTICS_NGINX_IMPORT_SHARE of the time (as the web workers' flusher).")
def flush_command(follow, interval, nginx, quiet, paced):
    """Write the events buffered in Redis, nginx's new log lines (ANALYTICS_NGINX_LOG) and
    orphaned responses to the database."""
    rec = recorder(current_app)
    if not follow:
        click.echo(f"flushed {rec.flush(nginx=nginx)} event(s)")
        return
    if interval is None:
        interval = float(current_app.config["ANALYTICS_FLUSH_SECONDS"])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            written = rec.flush(nginx=nginx, paced=paced)
            if written and not quiet:
                click.echo(f"{datetime.now(UTC):%H:%M:%S} flushed {written} event(s)")
            elif not written:
                time.sleep(interval)  # caught up: wait for more
    except KeyboardInterrupt:
        pass


@analytics_cli.command("purge")
@click.option("--days", type=int, default=None,
              help="Keep raw events this many days (default ANALYTICS_RETENTION_DAYS).")
def purge_command(days):
    """Delete raw events past their retention (logical downloads and hourly rollups too)."""
    config = current_app.config
    now = datetime.now(UTC)
    keep = config["ANALYTICS_RETENTION_DAYS"] if days is None else days
    with db.engine.begin() as conn:
        counts = materialise.purge(
            conn, events_before=now - timedelta(days=keep),
            logical_before=now - timedelta(days=config["ANALYTICS_LOGICAL_RETENTION_DAYS"]),
            hourly_before=now - timedelta(days=config["ANALYTICS_HOURLY_RETENTION_DAYS"]))
    click.echo("deleted " + ", ".join(f"{n} {name}" for name, n in counts.items()))


@analytics_cli.command("simulate")
@click.option("--events", type=int, default=100_000, show_default=True,
              help="About how many responses to generate.")
@click.option("--days", type=int, default=120, show_default=True, help="Over the last D days.")
@click.option("--new-users", "--users", "users", type=click.IntRange(min=0), default=0,
              show_default=True,
              help="Simulated users (sim…, no password) to create first, when fewer exist.")
@click.option("--new-files", "--files", "files", type=click.IntRange(min=0), default=0,
              show_default=True,
              help="Placeholder files to create first, when fewer exist: readable by the "
                   "simulated users and admins only (students never see them), content stored.")
@click.option("--seed", type=int, default=1, show_default=True)
def simulate_command(events, days, users, files, seed):
    """Generate realistic synthetic downloads straight into the tables and rollups: by the
    existing users over the existing files they may read, unless asked for more."""
    from ..storage import get_storage
    from .simulate import simulate

    began = time.monotonic()

    def progress(done, total, made):
        if done % 10 == 0 or done == total:
            click.echo(f"  day {done}/{total}: {made} events, "
                       f"{time.monotonic() - began:.0f}s", err=True)

    try:
        with db.engine.begin() as conn:
            report = simulate(conn, _settings(), events=events, days=days, users=users,
                              files=files, storage=get_storage() if files else None,
                              seed=seed, progress=progress)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(" ".join(f"{k}={v}" for k, v in report.items())
               + f" seconds={time.monotonic() - began:.1f}")


@analytics_cli.command("rebuild")
def rebuild_command():
    """Recompute logical downloads and rollups from the raw events (after a rule change;
    only right while no raw event has been purged)."""
    with db.engine.begin() as conn:
        n = materialise.rebuild(conn, _settings())
    click.echo(f"rebuilt {n} logical download(s)")


@analytics_cli.command("load")
@click.argument("source", metavar="DIR|s3://BUCKET/PREFIX")
@click.option("--before", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="Replace the rows of local days before this one (YYYY-MM-DD) [default: "
                   "the day of the newest event the job saw; at the latest today, or the "
                   "day after that event's].")
def load_command(source, before):
    """Put a spark_job.py run (its rollups, user_days and file_details) into the rollup
    tables the analytics pages read, for the days before the cut-off (portal/analytics/
    warehouse.py); a run whose cut-off or rows do not fit what SQL holds is refused in one
    line, the tables unchanged (loadcheck.py)."""
    from .warehouse import LoadError, load

    settings = materialise.Settings.from_config(current_app.config)
    try:
        with db.engine.begin() as conn:
            report = load(conn, source, settings, now=datetime.now(UTC),
                          before=before.date() if before else None)
    except LoadError as exc:
        raise click.ClickException(str(exc)) from exc
    rows = ", ".join(f"{n} {name}" for name, n in report.rows.items())
    local = report.before.astimezone(settings.tz)
    click.echo(f"loaded {rows} before {local:%Y-%m-%d %H:%M} {settings.tz.key}")


@analytics_cli.command("export")
@click.option("--to", "where", required=True, metavar="DIR|s3://BUCKET/PREFIX",
              help="Folder or S3 prefix of the Parquet copy (day=YYYY-MM-DD/ partitions).")
@click.option("--since", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="Export no day before this UTC date (YYYY-MM-DD).")
def export_command(where, since):
    """Copy the raw download events to Parquet, one file per UTC day; only days with new
    events are (re)written, so running it again exports nothing twice."""
    from .export import ExportError, export, target_of

    try:
        target = target_of(where)
        with db.engine.connect() as conn:
            report = export(conn, target, since=since.date() if since else None,
                            log=lambda line: click.echo(f"  {line}", err=True))
    except ExportError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"exported {sum(report.written.values())} event(s) in {len(report.written)} "
               f"day(s) to {target}; {len(report.kept)} purged day(s) kept; "
               f"high water id {report.high_water}")
