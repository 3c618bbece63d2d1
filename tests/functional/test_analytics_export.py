"""`flask analytics export`: raw events to hive-partitioned Parquet in a folder and on a
real S3 server (rclone serve s3), incremental and idempotent."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import s3server
from sqlalchemy import func, select

from portal.analytics import clients
from portal.analytics.export import MANIFEST
from portal.extensions import db
from portal.models import DownloadEvent
from tests.helpers import store_event

pytestmark = pytest.mark.databases  # raw events read by each dialect's SQL

s3_server = s3server.s3_server  # the fixtures, used by name
s3_env = s3server.s3_env


def _simulate(runner) -> None:
    result = runner.invoke(args=["analytics", "simulate", "--events", "1500", "--days", "6",
                                 "--users", "40", "--files", "8", "--seed", "3"])
    assert result.exit_code == 0, result.output


def _export(runner, *args) -> str:
    result = runner.invoke(args=["analytics", "export", *args])
    assert result.exit_code == 0, result.output
    return result.output


def _stored(app) -> dict[str, dict]:
    with app.app_context(), db.engine.connect() as conn:
        rows = conn.execute(select(DownloadEvent.__table__)).mappings().all()
    return {r["event_key"]: dict(r) for r in rows}


def _check_same(table, stored: dict[str, dict]) -> None:
    """Every stored event is in the Parquet once, with its values, day and who-key."""
    got = table.to_pylist()
    assert len(got) == len(stored)
    assert {r["event_key"] for r in got} == set(stored)
    for row in got:
        want = stored[row["event_key"]]
        for name in ("id", "file_id", "version_id", "user_id", "status", "size",
                     "bytes_sent", "served_ranges", "method", "started_at", "ended_at"):
            assert row[name] == want[name], name
        assert row["who"] == clients.who_key(want["user_id"], want["link_id"],
                                             want["client_ip"], want["user_agent"])
        assert str(row["day"]) == want["started_at"].astimezone(UTC).date().isoformat()


def test_export_to_a_folder_is_incremental_and_idempotent(app, runner, tmp_path):
    _simulate(runner)
    out = tmp_path / "lake"
    first = _export(runner, "--to", str(out))
    stored = _stored(app)
    assert f"exported {len(stored)} event(s)" in first
    dataset = ds.dataset(out, format="parquet", partitioning="hive")
    _check_same(dataset.to_table(), stored)
    files = sorted(out.glob("day=*/events.parquet"))
    assert len(files) >= 5
    stamps = {f: f.stat().st_mtime_ns for f in files}

    # Nothing new: nothing written, no file touched.
    assert "exported 0 event(s) in 0 day(s)" in _export(runner, "--to", str(out))
    assert {f: f.stat().st_mtime_ns for f in files} == stamps

    # A late event rewrites its day only, whole.
    oldest = files[0]
    day = datetime.fromisoformat(oldest.parent.name.removeprefix("day=")).replace(
        hour=12, tzinfo=UTC)
    key = store_event(app, day)  # a late event
    assert "exported" in _export(runner, "--to", str(out))
    changed = [f for f in files if f.stat().st_mtime_ns != stamps[f]]
    assert changed == [oldest]
    assert key in pq.read_table(oldest).column("event_key").to_pylist()
    _check_same(ds.dataset(out, format="parquet", partitioning="hive").to_table(), _stored(app))
    assert not list(out.rglob(".*"))  # no temporary file left behind
    assert (out / MANIFEST).is_file()


def test_export_since_skips_older_days(app, runner, tmp_path):
    _simulate(runner)
    with app.app_context(), db.engine.connect() as conn:
        newest = conn.execute(select(func.max(DownloadEvent.started_at))).scalar()
    since = newest.astimezone(UTC).date()
    out = tmp_path / "recent"
    _export(runner, "--to", str(out), "--since", since.isoformat())
    assert [p.name for p in out.glob("day=*")] == [f"day={since.isoformat()}"]


def test_export_to_s3(app, runner, s3_env):
    import boto3

    from portal.storage.s3 import client_config

    _simulate(runner)
    first = _export(runner, "--to", s3_env["url"])
    stored = _stored(app)
    assert f"exported {len(stored)} event(s)" in first
    client = boto3.session.Session().client("s3", config=client_config())
    keys = [o["Key"] for o in client.list_objects_v2(
        Bucket=s3_env["bucket"], Prefix="portal/")["Contents"]]
    assert "portal/_manifest.json" in keys
    parts = sorted(k for k in keys if k.endswith("/events.parquet"))
    assert parts and all(k.startswith("portal/day=") for k in parts)
    tables = []
    for key in parts:
        body = client.get_object(Bucket=s3_env["bucket"], Key=key)["Body"].read()
        table = pq.read_table(io.BytesIO(body))
        day = key.split("day=")[1].split("/")[0]
        tables.append(table.append_column("day", pa.array([day] * len(table))))
    _check_same(pa.concat_tables(tables), stored)
    assert "exported 0 event(s) in 0 day(s)" in _export(runner, "--to", s3_env["url"])


@pytest.mark.parametrize("where", ["ftp://host/x", "s3:///nobucket"])
def test_export_refuses_a_bad_target_in_one_line(app, runner, where):
    result = runner.invoke(args=["analytics", "export", "--to", where])
    assert result.exit_code == 1
    assert "Error:" in result.output and "Traceback" not in result.output
