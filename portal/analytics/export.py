"""Raw download events as Parquet, one file per UTC day: ``DIR/day=YYYY-MM-DD/events.parquet``
(hive-style, so Spark, DuckDB and Athena see ``day`` as a partition column).

The SQL database keeps the raw events for ``ANALYTICS_RETENTION_DAYS``; the Parquet copy is
what a warehouse (portal/analytics/spark_job.py, duckdb_rollups.py) reads past one database.

Incremental and idempotent: ``_manifest.json`` at the root holds the highest event id
exported and, per day, the rows and highest id written. A run exports only the days that
hold an event with an id above that mark, each day whole (a late event rewrites its day),
so a second run with nothing new writes nothing. The mark is sound because the analytics
writers take ids in commit order (``materialise.serialise_writers`` serialises them).
A day file is written aside and then put in place in one step (``os.replace`` on a folder;
one PUT or a completed multipart upload on S3, which readers see whole or not at all), and
the manifest is saved after each day, so a run stopped half-way is finished by the next.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

from sqlalchemy import Connection, func, literal_column, select

from ..models import DownloadEvent, Group, user_groups
from . import clients

MANIFEST = "_manifest.json"  # a leading underscore: Spark and Hive readers skip it
#: Who is in which group now (user_id, grp), rewritten by every run: the warehouse's
#: per-group rollups (spark_job.py) join it, as ``flask analytics rebuild`` reads them.
GROUPS_FILE = "_groups/groups.parquet"
DAY_FILE = "events.parquet"
BATCH = 50_000  # rows per Arrow batch (and Parquet row group): bounded memory per day

#: (column, Arrow type name, nullable) of every exported column, in file order; the
#: schema table in docs/analytics.md says what each holds. ``who`` is not stored in SQL:
#: it is ``clients.who_key`` (user, else link, else a blake2b of network and agent),
#: computed here because Spark and DuckDB have no blake2b and the grouping needs it.
COLUMNS = (
    ("id", "int64", False), ("event_key", "string", True), ("file_id", "int64", False),
    ("version_id", "int64", False), ("user_id", "int64", True), ("via_link", "bool", True),
    ("link_id", "string", True), ("who", "string", False), ("method", "string", False),
    ("status", "int32", False), ("range_header", "string", True),
    ("served_ranges", "string", True), ("size", "int64", False),
    ("bytes_sent", "int64", False), ("client_ip", "string", True),
    ("user_agent", "string", True), ("ua_class", "string", True),
    ("referrer", "string", True), ("served_from", "string", True),
    ("started_at", "timestamp", False), ("ended_at", "timestamp", True),
)


class ExportError(Exception):
    """The export cannot run (missing pyarrow, bad target): one line for the operator."""


def arrow():
    """pyarrow and pyarrow.parquet, or a clear error naming the extra that installs them."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ExportError("the Parquet export needs pyarrow: "
                          "pip install -e '.[analytics]' (or pip install pyarrow)") from exc
    return pa, pq


def schema():
    """The Arrow schema of a day file."""
    pa, _ = arrow()
    types = {"int64": pa.int64(), "int32": pa.int32(), "string": pa.string(),
             "bool": pa.bool_(), "timestamp": pa.timestamp("us", tz="UTC")}
    return pa.schema([pa.field(name, types[kind], nullable=nullable)
                      for name, kind, nullable in COLUMNS])


# ---------------------------------------------------------------------------
# Targets: a folder or s3://bucket/prefix
# ---------------------------------------------------------------------------


class FolderTarget:
    """A local (or mounted) folder."""

    def __init__(self, root: str) -> None:
        self.root = Path(root)

    def __str__(self) -> str:
        return str(self.root)

    def read_manifest(self) -> dict | None:
        """The saved manifest, or None before the first export."""
        try:
            return json.loads((self.root / MANIFEST).read_text())
        except FileNotFoundError:
            return None

    def write_manifest(self, manifest: dict) -> None:
        """Save the manifest in one step (write aside, then rename)."""
        self._put_bytes(MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())

    def put_file(self, local: str, key: str) -> None:
        """Put a finished local file at ``key``, replacing what was there in one step."""
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        # The temporary name starts with "." so readers listing the folder skip it.
        aside = path.parent / f".{path.name}.{os.getpid()}.tmp"
        with open(local, "rb") as src, open(aside, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(aside, path)

    def _put_bytes(self, key: str, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        aside = self.root / f".{key}.{os.getpid()}.tmp"
        aside.write_bytes(data)
        os.replace(aside, self.root / key)


class S3Target:
    """An S3 bucket and prefix; endpoint and keys from the usual AWS variables, as the S3
    storage backend reads them (``portal/storage/s3.py``)."""

    def __init__(self, url: str) -> None:
        import boto3

        from ..storage.s3 import ERRORS, client_config

        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not bucket:
            raise ExportError("an S3 export target needs a bucket: s3://bucket/prefix")
        self.bucket, self.prefix, self.errors = bucket, prefix.strip("/"), ERRORS
        try:
            self.client = boto3.session.Session().client("s3", config=client_config())
        except ERRORS as exc:
            raise ExportError(f"cannot configure S3: {exc}") from exc

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def key(self, name: str) -> str:
        """The object key of a name under the prefix."""
        return f"{self.prefix}/{name}" if self.prefix else name

    def read_manifest(self) -> dict | None:
        """The saved manifest, or None before the first export."""
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.key(MANIFEST))["Body"]
            return json.loads(body.read())
        except self.client.exceptions.NoSuchKey:
            return None
        except self.errors as exc:
            raise ExportError(f"cannot read {self}/{MANIFEST}: {exc}") from exc

    def write_manifest(self, manifest: dict) -> None:
        """Save the manifest (one PUT: readers see the old or the new one whole)."""
        data = json.dumps(manifest, indent=1, sort_keys=True).encode()
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.key(MANIFEST), Body=data)
        except self.errors as exc:
            raise ExportError(f"cannot write {self}/{MANIFEST}: {exc}") from exc

    def put_file(self, local: str, key: str) -> None:
        """Upload a finished file (multipart above 16 MiB: the object appears only once
        the upload completes, so a reader never sees half a day)."""
        from ..storage.s3 import TRANSFER

        try:
            self.client.upload_file(local, self.bucket, self.key(key), Config=TRANSFER)
        except self.errors as exc:
            raise ExportError(f"cannot upload {self}/{key}: {exc}") from exc


def target_of(where: str) -> FolderTarget | S3Target:
    """The export target named by ``--to``: a folder path or s3://bucket/prefix."""
    if where.startswith("s3://"):
        return S3Target(where)
    if "://" in where:
        raise ExportError(f"unknown export target {where!r}: give a folder or s3://bucket/prefix")
    return FolderTarget(where)


# ---------------------------------------------------------------------------
# The export
# ---------------------------------------------------------------------------


@dataclass
class Report:
    """What one export did."""

    written: dict[str, int] = field(default_factory=dict)  # day -> rows
    kept: list[str] = field(default_factory=list)  # days whose raw events were purged
    high_water: int = 0
    memberships: int = 0  # rows of GROUPS_FILE


def _utc_day(conn: Connection):
    """SQL for the UTC day (text YYYY-MM-DD) of an event's start."""
    started = DownloadEvent.__table__.c.started_at
    if conn.dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", started), literal_column("'YYYY-MM-DD'"))
    return func.date(started)  # SQLite stores UTC text: "YYYY-MM-DD HH:MM:SS..."


def touched_days(conn: Connection, after_id: int, since: date | None) -> list[str]:
    """The UTC days holding an event with an id above ``after_id`` (from ``since``)."""
    table = DownloadEvent.__table__
    day = _utc_day(conn)
    stmt = select(day).where(table.c.id > after_id).group_by(day)
    if since is not None:
        stmt = stmt.where(table.c.started_at >= datetime.combine(since, time(), UTC))
    return sorted(str(d) for (d,) in conn.execute(stmt))


def day_batches(conn: Connection, day: str) -> Iterator[dict[str, list]]:
    """The events that started on one UTC day, in id order, as column lists of BATCH rows."""
    table = DownloadEvent.__table__
    start = datetime.combine(date.fromisoformat(day), time(), UTC)
    stored = [name for name, _, _ in COLUMNS if name != "who"]
    result = conn.execution_options(stream_results=True, yield_per=BATCH).execute(
        select(*(table.c[name] for name in stored))
        .where(table.c.started_at >= start, table.c.started_at < start + timedelta(days=1))
        .order_by(table.c.id))
    for part in result.partitions():
        columns = {name: [row[i] for row in part] for i, name in enumerate(stored)}
        columns["who"] = [clients.who_key(u, link, ip, ua) for u, link, ip, ua in zip(
            columns["user_id"], columns["link_id"], columns["client_ip"],
            columns["user_agent"], strict=True)]
        for name in ("range_header", "served_ranges", "ua_class", "referrer"):
            columns[name] = [v or "" for v in columns[name]]
        yield columns


def write_day(conn: Connection, day: str, path: str) -> tuple[int, int]:
    """Write one day's events to a Parquet file; (rows, highest id)."""
    pa, pq = arrow()
    file_schema = schema()
    rows = top = 0
    with pq.ParquetWriter(path, file_schema, compression="zstd") as writer:
        for columns in day_batches(conn, day):
            batch = pa.Table.from_pydict(columns, schema=file_schema)
            writer.write_table(batch, row_group_size=BATCH)
            rows += batch.num_rows
            top = max(top, columns["id"][-1])
    return rows, top


def write_groups(conn: Connection, path: str) -> int:
    """Write every (user, group name) membership to a Parquet file; the number written."""
    pa, pq = arrow()
    rows = conn.execute(select(user_groups.c.user_id, Group.name)
                        .join(Group, Group.id == user_groups.c.group_id)
                        .order_by(user_groups.c.user_id, Group.name)).all()
    table = pa.table({"user_id": pa.array([r[0] for r in rows], pa.int64()),
                      "grp": pa.array([r[1] for r in rows], pa.string())})
    pq.write_table(table, path, compression="zstd")
    return len(rows)


def export(conn: Connection, target, *, since: date | None = None,
           log=lambda message: None) -> Report:
    """Export every day with new events to ``target``; see the module docstring."""
    arrow()  # fail before reading anything when pyarrow is missing
    manifest = target.read_manifest() or {"version": 1, "high_water": 0, "days": {}}
    table = DownloadEvent.__table__
    # The mark is read before the days, so an event written meanwhile is left for next time
    # rather than half-seen.
    mark = conn.execute(select(func.coalesce(func.max(table.c.id), 0))).scalar()
    report = Report(high_water=manifest["high_water"])
    days = touched_days(conn, manifest["high_water"], since)
    with tempfile.TemporaryDirectory(prefix="portal-export-") as scratch:
        for day in days:
            local = os.path.join(scratch, f"{day}.parquet")
            rows, top = write_day(conn, day, local)
            before = manifest["days"].get(day)
            if before and rows < before["rows"]:
                # Purged from SQL meanwhile: the export is now the only copy; keep it.
                report.kept.append(day)
                log(f"kept day={day}: {before['rows']} exported, {rows} still in SQL")
                continue
            target.put_file(local, f"day={day}/{DAY_FILE}")
            os.unlink(local)
            manifest["days"][day] = {"rows": rows, "max_id": top,
                                     "exported_at": datetime.now(UTC).isoformat()}
            target.write_manifest(manifest)
            report.written[day] = rows
            log(f"day={day}: {rows} events")
        local = os.path.join(scratch, "groups.parquet")
        report.memberships = write_groups(conn, local)
        target.put_file(local, GROUPS_FILE)
    manifest["high_water"] = max(manifest["high_water"], mark)
    target.write_manifest(manifest)
    report.high_water = manifest["high_water"]
    return report
