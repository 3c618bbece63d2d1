"""The warehouse paths agree with the SQL path: on one simulated term (plus the rules' edge
cases through the flusher's path), exported to Parquet, the PySpark job (local[2], a real
JVM), the DuckDB query and the SQL rollups give the same requests, bytes, logical
downloads, completed downloads and distinct users per file and local day."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

import hadoop_aws
import pytest
import s3server
from sqlalchemy import func, select

from portal.analytics import duckdb_rollups, logical, materialise, spark_job
from portal.analytics.models import ALL_FILES, ALL_USERS, LogicalDownload, Rollup, UserDay
from portal.extensions import db
from portal.models import DownloadEvent
from tests.helpers import analytics_tables, require_tool, wipe_analytics_tables

# A Spark JVM and a real S3 server; PostgreSQL too: the SQL path the warehouse is held to
pytestmark = [pytest.mark.slow, pytest.mark.databases]

s3_server = s3server.s3_server  # the fixtures, used by name
s3_env = s3server.s3_env

COUNTERS = ("requests", "bytes_served", "downloads", "completed", "users")


@pytest.fixture(scope="module")
def spark():
    """One local Spark (two cores) for the module: starting a JVM takes seconds."""
    if not os.environ.get("JAVA_HOME"):
        require_tool("java")
    session = spark_job.session("local[2]", "portal-tests", {
        "spark.sql.shuffle.partitions": "4", "spark.ui.enabled": "false"})
    yield session
    session.stop()


def test_job_defaults_are_the_portals(app):
    rules = logical.Rules()
    job = spark_job.JobRules()
    assert job.idle_minutes * 60 == rules.idle.total_seconds()
    assert (job.probe_max_bytes, job.min_bytes, job.complete_ratio) == (
        rules.probe_max_bytes, rules.min_bytes, rules.complete_ratio)
    assert job.timezone == app.config["ANALYTICS_TIMEZONE"]
    assert (spark_job.ALL_USERS, spark_job.ALL_FILES) == (ALL_USERS, ALL_FILES)


def test_s3a_settings_follow_the_portals_aws_variables():
    """The job reads s3:// through S3A, pointed where boto3 would go; nothing set, nothing
    overridden (a cluster's instance role and core-site.xml apply)."""
    assert spark_job.s3a("s3://lake/events") == "s3a://lake/events"
    assert [spark_job.s3a(p) for p in ("/data/lake", "hdfs://nn/lake", "s3a://l/e")] == [
        "/data/lake", "hdfs://nn/lake", "s3a://l/e"]
    assert spark_job.s3a_conf({}) == {}
    conf = spark_job.s3a_conf({"AWS_ENDPOINT_URL": "https://minio.campus:9000",
                               "AWS_REGION": "cn-north-1", "AWS_ACCESS_KEY_ID": "k",
                               "AWS_SECRET_ACCESS_KEY": "s", "AWS_SESSION_TOKEN": "t"})
    prefix = "spark.hadoop.fs.s3a."
    assert {k.removeprefix(prefix): v for k, v in conf.items()} == {
        "endpoint": "https://minio.campus:9000", "path.style.access": "true",
        "connection.ssl.enabled": "true", "endpoint.region": "cn-north-1",
        "aws.credentials.provider": "org.apache.hadoop.fs.s3a.TemporaryAWSCredentialsProvider",
        "access.key": "k", "secret.key": "s", "session.token": "t"}
    s3_only = spark_job.s3a_conf({"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9000",
                                  "AWS_ENDPOINT_URL": "https://elsewhere"})
    assert s3_only[prefix + "endpoint"] == "http://127.0.0.1:9000"
    assert s3_only[prefix + "connection.ssl.enabled"] == "false"
    assert prefix + "access.key" not in s3_only


def _edge_events(app) -> None:
    """Responses the rules treat specially, stored through the flusher's path: an orphan,
    unknown bytes (nginx), HEAD, 304, probes, a multi-range 206 cut short, overlapping
    connections, a pause past the idle window, an anonymous client and a signed link."""
    with app.app_context(), db.engine.begin() as conn:
        base = conn.execute(select(DownloadEvent.__table__)
                            .where(DownloadEvent.size > 10_000).limit(1)).mappings().one()
        size = base["size"]
        t0 = (conn.execute(select(func.max(DownloadEvent.started_at))).scalar()
              + timedelta(hours=2))

        def row(at, *, status=206, ranges="", sent=None, method="GET", seconds=3, user=True,
                link=None, ip="10.1.2.0/24", ua="aria2/1.37"):
            start = t0 + at
            return {"event_key": uuid.uuid4().hex, "file_id": base["file_id"],
                    "version_id": base["version_id"],
                    "user_id": base["user_id"] if user else None, "via_link": bool(link),
                    "link_id": link, "method": method, "status": status,
                    "range_header": "", "served_ranges": ranges, "size": size,
                    "bytes_sent": size if sent is None else sent, "client_ip": ip,
                    "user_agent": ua, "ua_class": "manager", "referrer": "",
                    "served_from": "origin", "started_at": start,
                    "ended_at": None if seconds is None else start + timedelta(seconds=seconds)}

        m = timedelta(minutes=1)
        half = size // 2
        rows = [
            row(0 * m, ranges="0-1", sent=2),  # a probe: no download by itself
            row(0 * m, method="HEAD", status=200, sent=0),
            row(1 * m, ranges=f"0-{half - 1}", sent=half),
            row(1 * m, ranges=f"{half - 100}-{size - 1}", sent=size - half + 100),  # overlaps
            row(2 * m, status=304, sent=0),
            row(60 * m, ranges=f"0-99,200-{size - 1}", sent=150),  # past idle: a new one, cut
            row(62 * m, status=200, sent=-1, seconds=1),  # nginx: the plan counts
            row(200 * m, status=200, sent=-1, seconds=None),  # an orphan: counts, 0 bytes
            row(300 * m, status=200, sent=size, user=False),  # anonymous
            row(301 * m, status=200, sent=size // 3, user=False, ua="Wget/1.21"),
            row(400 * m, status=200, sent=size, user=False, link="nonce-1"),  # a signed link
            row(401 * m, ranges="0-0", sent=1, user=False, link="nonce-1"),
            row(23 * 60 * m, status=200, sent=size),  # most likely the next local day
        ]
        settings = materialise.Settings.from_config(app.config)
        assert materialise.store(conn, rows, settings) == len(rows)


def _sql_path(app) -> dict[tuple, tuple]:
    """{(file, local date): counters} as the admin pages read them: daily rollups of
    everyone and the user-days."""
    tz = materialise.Settings.from_config(app.config).tz
    out: dict[tuple, dict] = defaultdict(lambda: dict.fromkeys(COUNTERS, 0))
    with app.app_context(), db.engine.connect() as conn:
        for r in conn.execute(select(Rollup.__table__).where(
                Rollup.grain == "d", Rollup.grp == ALL_USERS, Rollup.file_id != ALL_FILES)):
            cell = out[(r.file_id, r.bucket.astimezone(tz).date())]
            for name in ("requests", "bytes_served", "downloads", "completed"):
                cell[name] = getattr(r, name)
        for file_id, day, n in conn.execute(
                select(UserDay.file_id, UserDay.day, func.count())
                .where(UserDay.file_id != ALL_FILES).group_by(UserDay.file_id, UserDay.day)):
            out[(file_id, day.astimezone(tz).date())]["users"] = n
    return {k: tuple(v[c] for c in COUNTERS) for k, v in out.items()}


def _recomputed(app) -> dict[tuple, tuple]:
    """The same from the Python rules afresh (materialise.recompute)."""
    tz = materialise.Settings.from_config(app.config).tz
    with app.app_context(), db.engine.connect() as conn:
        rollups, user_days, _ = materialise.recompute(
            conn, materialise.Settings.from_config(app.config))
    users = defaultdict(int)
    for day, file_id, _key in user_days:
        if file_id != ALL_FILES:
            users[(file_id, day.astimezone(tz).date())] += 1
    return {(f, bucket.astimezone(tz).date()):
            (v["requests"], v["bytes_served"], v["downloads"], v["completed"],
             users[(f, bucket.astimezone(tz).date())])
            for (grain, bucket, f, grp), v in rollups.items()
            if grain == "d" and grp == ALL_USERS and f != ALL_FILES}


def _rows(rows) -> dict[tuple, tuple]:
    return {(r[0], r[1]): tuple(int(x) for x in r[2:]) for r in rows}


def test_spark_duckdb_and_sql_agree_per_file_and_day(app, runner, tmp_path, spark):
    result = runner.invoke(args=["analytics", "simulate", "--events", "3000", "--days", "21",
                                 "--users", "60", "--files", "12", "--seed", "7"])
    assert result.exit_code == 0, result.output
    _edge_events(app)
    lake = tmp_path / "lake"
    result = runner.invoke(args=["analytics", "export", "--to", str(lake)])
    assert result.exit_code == 0, result.output

    sql = _sql_path(app)
    assert sum(v[2] for v in sql.values()) > 200  # a real term, not an empty comparison
    assert _recomputed(app) == sql

    ducks = _rows(duckdb_rollups.file_days(str(lake)))
    assert ducks == sql

    days, downloads = spark_job.run(spark, str(lake))
    sparks = _rows(days.select("file_id", "day", *COUNTERS).collect())
    assert sparks == sql

    # The logical downloads themselves: as many, as many counted and completed, as SQL's.
    with app.app_context(), db.engine.connect() as conn:
        stored = conn.execute(select(
            func.count(), func.sum(LogicalDownload.counted.cast(db.Integer)),
            func.sum(LogicalDownload.completed.cast(db.Integer)),
            func.sum(LogicalDownload.covered))).one()
    got = downloads.selectExpr("count(*)", "sum(cast(counted AS int))",
                               "sum(cast(completed AS int))", "sum(covered)").first()
    assert tuple(int(x) for x in got) == tuple(int(x) for x in stored)


def _spark_submit(cwd: Path, *job_args: str, jars: tuple[Path, ...] | list[Path] = (),
                  conf: dict[str, str] | None = None) -> None:
    """Run spark_job.py as a cluster does: spark-submit (the pyspark wheel's), the file alone."""
    import pyspark

    options = ["--master", "local[1]", "--conf", "spark.ui.enabled=false",
               "--conf", "spark.sql.shuffle.partitions=2"]
    for name, value in (conf or {}).items():
        options += ["--conf", f"{name}={value}"]
    if jars:
        options += ["--jars", ",".join(str(jar) for jar in jars)]
    submit = Path(sys.executable).parent / "spark-submit"
    done = subprocess.run(
        [str(submit), *options, spark_job.__file__, *job_args],
        capture_output=True, text=True, timeout=300, cwd=cwd,
        # The wheel's spark-submit finds its Spark and Python through these.
        env={**os.environ, "SPARK_HOME": os.path.dirname(pyspark.__file__),
             "PYSPARK_PYTHON": sys.executable,
             "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    assert done.returncode == 0, done.stderr[-3000:]


# Once (SQLite): a second JVM costs tens of seconds, and the database is not what it tests.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_spark_submit_writes_parquet(app, runner, tmp_path):
    """The job as a cluster runs it: spark-submit (the pyspark wheel's) with the file alone."""
    import pyarrow.dataset as ds

    result = runner.invoke(args=["analytics", "simulate", "--events", "600", "--days", "5",
                                 "--users", "20", "--files", "4", "--seed", "2"])
    assert result.exit_code == 0, result.output
    lake, out = tmp_path / "lake", tmp_path / "out"
    assert runner.invoke(args=["analytics", "export", "--to", str(lake)]).exit_code == 0
    _spark_submit(tmp_path, "--events", str(lake), "--out", str(out))
    written = ds.dataset(out / "file_days", format="parquet").to_table().to_pylist()
    assert _rows([(r["file_id"], r["day"], *(r[c] for c in COUNTERS)) for r in written]) \
        == _sql_path(app)
    downloads = ds.dataset(out / "logical_downloads", format="parquet").to_table()
    with app.app_context(), db.engine.connect() as conn:
        assert downloads.num_rows == conn.execute(
            select(func.count()).select_from(LogicalDownload)).scalar()


def _load_after_it(app, out, before=None):
    """``analytics load`` of the run, as run two days after the history's newest response
    (the simulated history runs up to now, the edge cases into tomorrow: days a load run
    today must leave alone)."""
    from portal.analytics import warehouse

    settings = materialise.Settings.from_config(app.config)
    with app.app_context(), db.engine.begin() as conn:
        newest = conn.execute(select(func.max(DownloadEvent.started_at))).scalar()
        return warehouse.load(conn, str(out), settings, now=newest + timedelta(days=2),
                              before=before)


def test_a_spark_run_loads_into_the_tables_the_pages_read(app, runner, tmp_path, spark):
    """``flask analytics load``: the job's rollups (hourly and daily, per group and of every
    file), user-days and file details put in SQL give back every row the SQL path had made,
    and the first-and-last days and gaps derived from them; by default only the days
    before the newest one are replaced."""
    from datetime import timedelta

    from portal.analytics import warehouse

    result = runner.invoke(args=["analytics", "simulate", "--events", "2500", "--days", "21",
                                 "--users", "50", "--files", "10", "--seed", "11"])
    assert result.exit_code == 0, result.output
    _edge_events(app)
    lake, out = tmp_path / "lake", tmp_path / "run"
    assert runner.invoke(args=["analytics", "export", "--to", str(lake)]).exit_code == 0
    made = analytics_tables(app)
    assert any(row[3] != ALL_USERS for row in made["analytics_rollups"])  # groups too
    assert made["analytics_user_gaps"] and made["analytics_file_details"]

    spark_job.write_all(spark, str(lake), str(out))

    # The default cut-off: the days before the newest response's day.
    wipe_analytics_tables(app)
    _load_after_it(app, out)
    job = warehouse.read_job(warehouse.open_run(str(out)))
    settings = materialise.Settings.from_config(app.config)
    cut = warehouse.cut_off(job, settings, None)
    loaded = analytics_tables(app)
    time_of = {"analytics_rollups": 1, "analytics_user_days": 0, "analytics_file_details": 1}
    for name, at in time_of.items():
        assert loaded[name] == {row for row in made[name] if row[at] < cut}, name
        assert loaded[name], name

    # Everything, into what SQL had made: the same rows, every table.
    wipe_analytics_tables(app)
    last = max(row[1] for row in made["analytics_rollups"]).astimezone(settings.tz).date()
    _load_after_it(app, out, before=last + timedelta(days=1))
    assert analytics_tables(app) == made


def test_a_run_with_other_rules_is_refused(app, runner, tmp_path):
    """A run counted with another idle window would not match what the flusher adds."""
    out = tmp_path / "run"
    (out / "_job").mkdir(parents=True)
    rules = {"idle_minutes": 45.0, "probe_max_bytes": 2, "min_bytes": 1,
             "complete_ratio": 0.99, "timezone": app.config["ANALYTICS_TIMEZONE"]}
    (out / "_job" / "part-00000.txt").write_text(
        '{"newest_started_at": "2026-11-30T08:00:00+00:00", "events": 3, "rules": '
        + __import__("json").dumps(rules) + "}\n")
    result = runner.invoke(args=["analytics", "load", str(out)])
    assert result.exit_code != 0
    assert "idle_minutes=45.0 (the portal's: 30.0)" in result.output


# Once (SQLite), as the other spark-submit test.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_warehouse_round_trip_through_s3(app, runner, tmp_path, s3_env, monkeypatch):
    """Export to a bucket, spark-submit reading it as s3:// (S3A, a real rclone S3 server),
    the run in the bucket, ``flask analytics load s3://...``: the same rows the SQL path
    made, in every table the pages read."""
    import boto3
    import pyarrow.dataset as ds

    from portal.storage.s3 import client_config

    result = runner.invoke(args=["analytics", "simulate", "--events", "800", "--days", "6",
                                 "--users", "20", "--files", "5", "--seed", "5"])
    assert result.exit_code == 0, result.output
    lake, run = f"{s3_env['url']}/lake", f"{s3_env['url']}/run"
    result = runner.invoke(args=["analytics", "export", "--to", lake])
    assert result.exit_code == 0, result.output
    made = analytics_tables(app)

    out = tmp_path / "run"
    _spark_submit(tmp_path, "--events", lake, "--out", str(out), jars=hadoop_aws.jars(),
                  conf=hadoop_aws.OLD_JAR_CONF)
    written = ds.dataset(out / "file_days", format="parquet").to_table().to_pylist()
    assert _rows([(r["file_id"], r["day"], *(r[c] for c in COUNTERS)) for r in written]) \
        == _sql_path(app)

    # The run goes into the bucket as a cluster's job leaves it there. Uploaded here, not
    # written by the job: rclone serve s3 keeps objects as files and folders, so S3A's
    # directory markers (empty "run/x/" objects) collide with the files under them.
    client = boto3.session.Session().client("s3", config=client_config())
    prefix = run.removeprefix(f"s3://{s3_env['bucket']}/")
    for path in out.rglob("*"):
        if path.is_file() and not path.name.endswith(".crc"):
            client.upload_file(str(path), s3_env["bucket"],
                               f"{prefix}/{path.relative_to(out).as_posix()}")
    client.close()

    wipe_analytics_tables(app)
    last = max(row[1] for row in made["analytics_rollups"]).astimezone(
        materialise.Settings.from_config(app.config).tz).date()
    _load_after_it(app, run, before=last + timedelta(days=1))
    assert analytics_tables(app) == made

    # A prefix with no run in it, and no bucket at all: one line each, nothing loaded.
    for source, said in ((f"{s3_env['url']}/nothing", "is not a spark_job.py output"),
                         ("s3:///run", "needs a bucket"), ("ftp://host/run", "give a folder")):
        result = runner.invoke(args=["analytics", "load", source])
        assert result.exit_code != 0 and said in result.output, (source, result.output)
        assert "Traceback" not in result.output
    # The endpoint down: the same.
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3",
                       f"http://127.0.0.1:{s3server.free_port_for_dead_endpoint()}")
    result = runner.invoke(args=["analytics", "load", run])
    assert result.exit_code != 0 and f"cannot read {run}/_job" in result.output, result.output
    assert analytics_tables(app) == made
