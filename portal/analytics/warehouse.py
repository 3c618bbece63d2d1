"""Loading a warehouse run into the tables the admin pages read (``flask analytics load``).

The PySpark job (spark_job.py) writes, besides ``file_days``, the portal's own rollup
tables as Parquet: ``rollups`` (analytics_rollups: hourly and daily, per file and ALL_FILES,
everyone and each group), ``user_days`` and ``file_details``, and ``_job/`` (its rules and
the newest response it saw). This module puts them in SQL, so that the analytics pages show
what the cluster computed over the whole history, including days whose raw events SQL has
purged.

What is replaced: every row of those three tables *before a local day* (``before``; by
default the day of the newest exported response, which may still be incomplete in the
export), in one transaction; from that day on SQL keeps its own rows, which the flusher
goes on adding to. ``analytics_file_users`` and ``analytics_user_gaps`` are then derived
afresh from the user-days. The logical downloads stay SQL's own: the flusher continues the
recent ones, and the pages do not read older ones.

A logical download that counts before the cut-off day but completes after it (a resume a
day later) is counted complete in that earlier day only if the job saw the resume: a run's
edge is as fresh as its export. The job's rules must be the portal's (ANALYTICS_* settings),
or the two halves would count differently: a mismatch is refused.

Nothing is taken on the run's word (loadcheck.py): the cut-off is bounded by the newest
response SQL holds and by today, and every row to be loaded is checked (types, ranges, the
files, versions, users and groups SQL knows) before a row is deleted; a run that fails is
refused in one line and the tables stay as they were.

The run is read from a folder or from ``s3://bucket/prefix`` (where a cluster's job writes
it), through pyarrow's filesystems: S3 with the endpoint and keys the S3 storage backend
uses (the usual AWS variables, read by boto3).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, delete
from sqlalchemy.exc import DBAPIError

from . import spans
from .loadcheck import LoadError, RunCheck, newest_of
from .materialise import Settings, day_bucket, serialise_writers
from .models import FileDetailDay, Rollup, UserDay
from .sqlbatch import insert_in_batches

#: Table written by the job -> (model, its time column).
TABLES = {"rollups": (Rollup, "bucket"), "user_days": (UserDay, "day"),
          "file_details": (FileDetailDay, "day")}
BATCH = 50_000

if TYPE_CHECKING:
    import pyarrow.dataset
    from pyarrow.fs import FileSystem


@dataclass
class LoadReport:
    """What a load did."""

    before: datetime  # rows before this instant (a local midnight) were replaced
    rows: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Run:
    """Where a job's output lies: a pyarrow filesystem and the root path in it."""

    fs: FileSystem
    root: str
    name: str  # as the operator gave it, for messages

    def path(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    def exists(self, *parts: str) -> bool:
        from pyarrow.fs import FileType

        return self.fs.get_file_info(self.path(*parts)).type != FileType.NotFound


def s3_filesystem():
    """pyarrow's S3 filesystem with boto3's view of the endpoint, region and keys (the
    variables and files the S3 storage backend reads)."""
    import boto3
    from pyarrow.fs import S3FileSystem

    from ..storage.s3 import client_config

    session = boto3.session.Session()
    client = session.client("s3", config=client_config())
    credentials = session.get_credentials()
    keys = credentials.get_frozen_credentials() if credentials else None
    scheme, _, host = client.meta.endpoint_url.partition("://")
    return S3FileSystem(access_key=keys.access_key if keys else None,
                        secret_key=keys.secret_key if keys else None,
                        session_token=keys.token if keys else None,
                        region=client.meta.region_name or "us-east-1",
                        endpoint_override=host, scheme=scheme)


def open_run(source: str) -> Run:
    """The run at ``source``: a folder, or s3://bucket/prefix (s3a:// as Spark names it)."""
    from pyarrow.fs import LocalFileSystem

    scheme, sep, rest = source.partition("://")
    if not sep:
        return Run(LocalFileSystem(), str(Path(source).resolve()), source)
    if scheme not in ("s3", "s3a"):
        raise LoadError(f"{source}: give a folder or s3://bucket/prefix")
    if not rest.split("/", 1)[0]:
        raise LoadError(f"{source}: an S3 source needs a bucket: s3://bucket/prefix")
    try:
        return Run(s3_filesystem(), rest.strip("/"), source)
    except Exception as exc:  # botocore's configuration errors, pyarrow's ArrowInvalid
        raise LoadError(f"cannot configure S3 for {source}: {exc}") from exc


def read_job(run: Run) -> dict:
    """The run's ``_job`` line: rules, events, newest_started_at."""
    from pyarrow.fs import FileSelector

    try:
        parts = sorted(info.path for info in run.fs.get_file_info(
            FileSelector(run.path("_job"), allow_not_found=True))
            if info.base_name.startswith("part-"))
        if not parts:
            raise LoadError(f"{run.name} is not a spark_job.py output (no _job/ in it)")
        with run.fs.open_input_stream(parts[0]) as stream:
            text = stream.read().decode()
    except OSError as exc:
        raise LoadError(f"cannot read {run.name}/_job: {exc}") from exc
    try:
        job = json.loads((text.strip().splitlines() or [""])[0])
    except ValueError:
        job = None
    if not isinstance(job, dict):
        raise LoadError(f"{run.name}/_job is not a spark_job.py line (one JSON object)")
    return job


def job_rules(settings: Settings) -> dict:
    """The portal's counting rules as a run's ``_job`` line names them."""
    rules = settings.rules
    return {"idle_minutes": rules.idle.total_seconds() / 60,
            "probe_max_bytes": rules.probe_max_bytes, "min_bytes": rules.min_bytes,
            "complete_ratio": rules.complete_ratio, "timezone": settings.tz.key}


def check_rules(job: dict, settings: Settings) -> None:
    """Refuse a run made with other counting rules than the portal's."""
    ours = job_rules(settings)
    theirs = job.get("rules")
    theirs = theirs if isinstance(theirs, dict) else {}
    differ = [f"{k}={theirs.get(k)!r} (the portal's: {v!r})" for k, v in ours.items()
              if theirs.get(k) != v]
    if differ:
        raise LoadError("the job ran with other rules than the portal counts with: "
                        + ", ".join(differ))


def cut_off(job: dict, settings: Settings, before: date | None) -> datetime:
    """The local midnight (as UTC) before which the run's rows replace SQL's."""
    if before is None:
        newest = newest_of(job)
        if newest is None:
            raise LoadError("the job saw no events: nothing to load")
        return day_bucket(newest, settings.tz)
    return day_bucket(datetime.combine(before, time(), settings.tz), settings.tz)


def dataset_of(run: Run, name: str) -> pyarrow.dataset.Dataset:
    """One table of the run, as a pyarrow dataset."""
    import pyarrow.dataset as ds

    if not run.exists(name):
        raise LoadError(f"{run.name}/{name} is missing: run spark_job.py with --tables "
                        f"including {name}")
    return ds.dataset(run.path(name), filesystem=run.fs, format="parquet")


def arrow_batches(dataset: pyarrow.dataset.Dataset, model, column: str, before: datetime):
    """The Arrow batches of the rows with ``column`` before ``before``, in the SQL table's
    columns (only those)."""
    import pyarrow.dataset as ds

    kind = dataset.schema.field(column).type
    edge = before if kind.tz else before.astimezone(UTC).replace(tzinfo=None)
    yield from dataset.to_batches(columns=[c.name for c in model.__table__.columns],
                                  filter=ds.field(column) < edge, batch_size=BATCH)


def batches(dataset: pyarrow.dataset.Dataset, model, column: str, before: datetime):
    """The rows of one table with ``column`` before ``before``, as lists of dicts (instants
    aware UTC: Spark writes them as UTC microseconds)."""
    for batch in arrow_batches(dataset, model, column, before):
        rows = batch.to_pylist()
        for row in rows:
            for key, value in row.items():
                if isinstance(value, datetime) and value.tzinfo is None:
                    row[key] = value.replace(tzinfo=UTC)
        yield rows


def load(conn: Connection, source: str, settings: Settings, *, now: datetime,
         before: date | None = None) -> LoadReport:
    """Replace the rollups, user-days and file details before the cut-off day by the run's
    in ``source`` (a folder or s3://bucket/prefix), in the caller's transaction, once the
    cut-off and every row to load have passed loadcheck.py at ``now``; see the module
    docstring."""
    import pyarrow as pa

    run = open_run(source)
    job = read_job(run)
    check_rules(job, settings)
    report = LoadReport(before=cut_off(job, settings, before))
    check = RunCheck(conn, settings.tz)
    check.cut_off(report.before, newest_of(job), now)
    datasets = {}
    for name, (model, column) in TABLES.items():
        where = f"{run.name}/{name}"
        try:
            datasets[name] = dataset = dataset_of(run, name)
            check.schema(where, model, dataset.schema)
            for batch in arrow_batches(dataset, model, column, report.before):
                check.rows(where, model, batch)
        except (OSError, pa.ArrowException) as exc:  # pyarrow's S3, file and Parquet errors
            raise LoadError(f"cannot read {where}: {exc}") from exc
    serialise_writers(conn)
    for name, (model, column) in TABLES.items():
        table = model.__table__
        conn.execute(delete(table).where(table.c[column] < report.before))
        report.rows[name] = 0
        try:
            for rows in batches(datasets[name], model, column, report.before):
                insert_in_batches(conn, table.insert(), rows)
                report.rows[name] += len(rows)
        except (OSError, pa.ArrowException) as exc:  # the transaction rolls back
            raise LoadError(f"cannot read {run.name}/{name}: {exc}") from exc
        except DBAPIError as exc:  # two rows of one key: the transaction rolls back
            first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise LoadError(f"{run.name}/{name}: SQL refused its rows ({first}); "
                            "nothing loaded") from exc
    spans.derive_from_user_days(conn)
    return report
