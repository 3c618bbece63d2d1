"""The logical-download rules and the per-file, per-day rollups as a PySpark job over the
Parquet export (``flask analytics export``), for histories past one SQL database.

    spark-submit --packages org.apache.hadoop:hadoop-aws:3.5.0 \\
        portal/analytics/spark_job.py --events s3://lake/events \\
        --out s3://lake/rollups [--timezone Asia/Shanghai] [--idle-minutes 30] ...

(``--master local[2]`` runs it on one machine; folders work as well as buckets.) ``s3://``
paths are read and written through Spark's S3A connector, hadoop-aws, whose version must be
the Hadoop Spark runs on (3.5.0 for the pyspark 4.3 wheel); endpoint and keys come from the
AWS variables the portal reads (``s3a_conf``).

It writes, as Parquet, ``OUT/file_days`` (one row per file and local day: requests,
bytes_served, downloads, completed, users), ``OUT/logical_downloads`` (one row per logical
download) and the portal's own tables with their SQL columns, ``OUT/rollups``,
``OUT/user_days`` and ``OUT/file_details``, which ``flask analytics load`` (warehouse.py)
puts back into SQL for the admin pages.

The rules are those of ``logical.py`` (docs/analytics.md, "The rules"), restated for a
cluster: this file imports nothing of the portal so that ``spark-submit`` can ship it
alone. Where the Python walks events in time order, here windows do the same:

* grouping: per ``who`` and version, in (start, end, id) order, an event opens a new
  logical download when it starts more than ``idle`` after the latest end of every earlier
  event of that who and version (the Sessionizer can only ever join the newest download:
  an older one ended more than ``idle`` before the newer one began);
* delivered intervals: a 200 ``[0, size)``, a 206 its served ranges in order, each cut
  after ``bytes_sent`` bytes of payload (all of the plan when the count is unknown, -1),
  nothing for an orphan (no end) or any other status;
* covered bytes: the union of a download's intervals, in one window pass (sorted by start,
  each interval adds what reaches past the furthest end before it);
* counted: some non-probe response (GET, 200 or 206, more than ``probe_max_bytes`` asked
  unless the file is that small) delivered ``min_bytes`` or is an orphan; it counts in the
  local day of the first such response's start; completed: counted and covered at least
  ``complete_ratio`` of the size (or the file is empty);
* bytes_served and requests: every response, in the local day of its start; ``sent`` is
  bytes_sent, or the plan when unknown, 0 for an orphan.

``tests/functional/test_analytics_warehouse.py`` checks that this job (local[2]), the SQL
rollups and the DuckDB query (duckdb_rollups.py) agree on a simulated term.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

#: The defaults of logical.Rules and ANALYTICS_TIMEZONE (a test keeps them equal).
IDLE_MINUTES = 30.0
PROBE_MAX_BYTES = 2
MIN_BYTES = 1
COMPLETE_RATIO = 0.99
TIMEZONE = "Asia/Shanghai"


@dataclass(frozen=True)
class JobRules:
    """The counting rules and the time zone of the local days."""

    idle_minutes: float = IDLE_MINUTES
    probe_max_bytes: int = PROBE_MAX_BYTES
    min_bytes: int = MIN_BYTES
    complete_ratio: float = COMPLETE_RATIO
    timezone: str = TIMEZONE


def read_events(spark, path: str):
    """The exported events (every ``day=`` partition under ``path``)."""
    return spark.read.option("basePath", path).parquet(path)


def served_parts(events):
    """One row per well-formed served range of an event, in order: (id, pos, a, b), half-open
    (parsed as logical.parse_ranges does: malformed parts and last < first are skipped)."""
    from pyspark.sql import functions as F

    return (events.select("id", F.posexplode(F.split(F.col("served_ranges"), ","))
                          .alias("pos", "part"))
            .withColumn("part", F.trim("part"))
            .where(F.col("part").rlike(r"^[0-9]+-[0-9]+$"))
            .select("id", "pos",
                    F.regexp_extract("part", r"^([0-9]+)-", 1).cast("long").alias("a"),
                    (F.regexp_extract("part", r"-([0-9]+)$", 1).cast("long") + 1).alias("b"))
            .where(F.col("b") > F.col("a")))


def with_asked(events, parts):
    """Events with ``asked``: the bytes their served ranges name (probes, sent bytes)."""
    from pyspark.sql import functions as F

    asked = parts.groupBy("id").agg(F.sum(F.col("b") - F.col("a")).alias("asked"))
    return events.join(asked, "id", "left").fillna({"asked": 0})


def intervals_of(events, parts):
    """One row per byte interval an event delivered: (id, a, b), half-open."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    done = events.where(F.col("ended_at").isNotNull())
    ranged = (parts.join(done.where(F.col("status") == 206).select("id", "bytes_sent"), "id")
              .select("id", "bytes_sent", "pos", "a", "b"))
    whole = (done.where(F.col("status") == 200)
             .select("id", "bytes_sent", F.lit(0).alias("pos"), F.lit(0).cast("long").alias("a"),
                     F.col("size").alias("b")))
    plan = ranged.unionByName(whole)
    before = Window.partitionBy("id").orderBy("pos").rowsBetween(Window.unboundedPreceding, -1)
    plan = plan.withColumn("prior", F.coalesce(F.sum(F.col("b") - F.col("a")).over(before),
                                               F.lit(0)))
    take = F.when(F.col("bytes_sent") == -1, F.col("b") - F.col("a")).otherwise(
        F.least(F.col("b") - F.col("a"),
                F.greatest(F.lit(0), F.greatest(F.col("bytes_sent"), F.lit(0)) - F.col("prior"))))
    return (plan.withColumn("take", take).where(F.col("take") > 0)
            .select("id", "a", (F.col("a") + F.col("take")).alias("b")))


def logical_downloads(events, parts, rules: JobRules):
    """One row per logical download: who, file_id, version_id, size, user_id, ua_class,
    started_at, last_at, events, covered, counted, counted_at, completed, completion
    (``events`` with_asked)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    events = events.withColumn("last_at", F.coalesce("ended_at", "started_at"))
    pieces = intervals_of(events, parts)
    got = pieces.groupBy("id").agg(F.sum(F.col("b") - F.col("a")).alias("got"))
    events = events.join(got, "id", "left").fillna({"got": 0})

    order = ["started_at", "last_at", "id"]
    who = Window.partitionBy("who", "version_id").orderBy(*order)
    earlier = who.rowsBetween(Window.unboundedPreceding, -1)
    idle = F.expr(f"INTERVAL {int(rules.idle_minutes * 60_000_000)} MICROSECONDS")
    opens = F.max("last_at").over(earlier)
    events = (events
              .withColumn("opens", (opens.isNull() | (F.col("started_at") > opens + idle))
                          .cast("int"))
              .withColumn("session", F.sum("opens").over(
                  who.rowsBetween(Window.unboundedPreceding, 0))))
    probe = ((F.col("method") != "GET") | ~F.col("status").isin(200, 206)
             | ((F.col("status") == 206) & (F.col("asked") <= rules.probe_max_bytes)
                & (F.col("asked") < F.col("size"))))
    counts = ~probe & (F.col("ended_at").isNull() | (F.col("got") >= rules.min_bytes))
    events = events.withColumn("counts", counts)

    key = ["who", "version_id", "session"]
    spans = (pieces.join(events.select("id", *key), "id")
             .withColumn("reach", F.max("b").over(
                 Window.partitionBy(*key).orderBy("a", "b")
                 .rowsBetween(Window.unboundedPreceding, -1)))
             .select(*key, F.greatest(F.lit(0), F.col("b") - F.greatest(
                 "a", F.coalesce("reach", F.lit(-1)))).alias("adds"))
             .groupBy(*key).agg(F.sum("adds").alias("covered")))
    first = F.struct(*order)
    events = events.withColumn("ua_class", F.when(F.coalesce("ua_class", F.lit("")) == "",
                                                  "other").otherwise(F.col("ua_class")))
    sessions = (events.groupBy(*key).agg(
        F.min_by("file_id", first).alias("file_id"), F.min_by("size", first).alias("size"),
        # the first user id seen; the client class of the response that made it count
        F.min_by("user_id", F.when(F.col("user_id").isNotNull(), first)).alias("user_id"),
        F.coalesce(F.min_by("ua_class", F.when(F.col("counts"), first)),
                   F.min_by("ua_class", first)).alias("ua_class"),
        F.min("started_at").alias("started_at"), F.max("last_at").alias("last_at"),
        F.count("*").alias("events"),
        F.min(F.when(F.col("counts"), F.col("started_at"))).alias("counted_at"))
        .join(spans, key, "left").fillna({"covered": 0})
        .withColumn("counted", F.col("counted_at").isNotNull()))
    completed = F.col("counted") & ((F.col("size") <= 0)
                                    | (F.col("covered") >= F.col("size") * rules.complete_ratio))
    completion = (F.when(F.col("size") <= 0, F.when(F.col("counted"), 1.0).otherwise(0.0))
                  .otherwise(F.least(F.lit(1.0), F.col("covered") / F.col("size"))))
    return (sessions.withColumn("completed", completed)
            .withColumn("completion", completion).drop("session"))


def local_day(column, timezone: str):
    """The local date (in ``timezone``) of a UTC instant (the session time zone is UTC)."""
    from pyspark.sql import functions as F

    return F.to_date(F.from_utc_timestamp(column, timezone))


def sent_bytes():
    """What a response counts in bytes_served: bytes_sent, else (unknown) its plan, 0 for an
    orphan (``events`` with_asked)."""
    from pyspark.sql import functions as F

    return (F.when(F.col("bytes_sent") != -1, F.col("bytes_sent"))
            .when(F.col("ended_at").isNull(), F.lit(0))
            .when(F.col("status") == 200, F.col("size"))
            .otherwise(F.col("asked")))


def local_midnight(column, timezone: str):
    """The start of an instant's local day, as a UTC instant (materialise.day_bucket)."""
    from pyspark.sql import functions as F

    return F.to_utc_timestamp(F.date_trunc("day", F.from_utc_timestamp(column, timezone)),
                              timezone)


def file_days(events, downloads, rules: JobRules):
    """Per file and local day: requests, bytes_served (responses, by their start; ``events``
    with_asked), downloads, completed, users (logical downloads that count, by the start of
    the response that made them count; users are distinct ``who``)."""
    from pyspark.sql import functions as F

    sent = sent_bytes()
    served = (events.withColumn("day", local_day("started_at", rules.timezone))
              .groupBy("file_id", "day")
              .agg(F.count("*").alias("requests"), F.sum(sent).alias("bytes_served")))
    counted = (downloads.where("counted")
               .withColumn("day", local_day("counted_at", rules.timezone))
               .groupBy("file_id", "day")
               .agg(F.count("*").alias("downloads"),
                    F.sum(F.col("completed").cast("long")).alias("completed"),
                    F.countDistinct("who").alias("users")))
    return (served.join(counted, ["file_id", "day"], "full")
            .fillna({"requests": 0, "bytes_served": 0, "downloads": 0, "completed": 0,
                     "users": 0}))


# ---------------------------------------------------------------------------
# The portal's own rollup tables (``flask analytics load`` puts them in SQL)
# ---------------------------------------------------------------------------

#: models.ALL_USERS and models.ALL_FILES (a test keeps them equal).
ALL_USERS, ALL_FILES = "", 0
COUNTERS = ("requests", "bytes_served", "cache_hits", "downloads", "completed")


def rollups(events, downloads, groups, rules: JobRules):
    """analytics_rollups as materialise.Deltas makes it: per grain ("h": the UTC hour, "d":
    the local day), bucket, file (and ALL_FILES), group (ALL_USERS and each group of the
    user; ``groups`` is (user_id, grp), None for none) the responses' requests,
    bytes_served and cache_hits by their start, and the logical downloads that count and
    complete by the start of the response that made them count (their user's groups)."""
    from pyspark.sql import functions as F

    zero = F.lit(0).cast("long")
    served = (events.select(
        "file_id", "user_id", F.col("started_at").alias("at"), zero.alias("downloads"),
        zero.alias("completed"), F.lit(1).cast("long").alias("requests"),
        sent_bytes().cast("long").alias("bytes_served"),
        (F.coalesce("served_from", F.lit("")) == "cache").cast("long").alias("cache_hits")))
    counted = downloads.where("counted").select(
        "file_id", "user_id", F.col("counted_at").alias("at"),
        F.lit(1).cast("long").alias("downloads"),
        F.col("completed").cast("long").alias("completed"), zero.alias("requests"),
        zero.alias("bytes_served"), zero.alias("cache_hits"))
    both = (served.unionByName(counted)
            .groupBy("file_id", "user_id", F.date_trunc("hour", "at").alias("h"),
                     local_midnight("at", rules.timezone).alias("d"))
            .agg(*(F.sum(c).alias(c) for c in COUNTERS)))
    cells = _cells(both)
    everyone = cells.withColumn("grp", F.lit(ALL_USERS))
    if groups is not None:
        everyone = everyone.unionByName(
            cells.join(F.broadcast(groups.select("user_id", "grp")), "user_id"))
    out = (everyone.groupBy("grain", "bucket", "file_id", "grp")
           .agg(*(F.sum(c).alias(c) for c in COUNTERS)))
    return out.where(" OR ".join(f"{c} != 0" for c in COUNTERS))


def _cells(both):
    """Each (file, user, hour, day) sum under its two grains and its file and ALL_FILES."""
    from pyspark.sql import functions as F

    grains = both.select(
        "file_id", "user_id", *COUNTERS,
        F.explode(F.array(F.struct(F.lit("h").alias("grain"), F.col("h").alias("bucket")),
                          F.struct(F.lit("d").alias("grain"), F.col("d").alias("bucket"))))
        .alias("g"))
    return grains.select(
        F.col("g.grain").alias("grain"), F.col("g.bucket").alias("bucket"), "user_id",
        *COUNTERS, F.explode(F.array(F.col("file_id").cast("long"),
                                     F.lit(ALL_FILES).cast("long"))).alias("file_id"))


def user_days(downloads, rules: JobRules):
    """analytics_user_days: each person (``who``) with a counted download of a file (and of
    ALL_FILES) on a local day."""
    from pyspark.sql import functions as F

    counted = downloads.where("counted").select(
        local_midnight("counted_at", rules.timezone).alias("day"), F.col("who").alias("user_key"),
        "user_id", F.explode(F.array(F.col("file_id").cast("long"),
                                     F.lit(ALL_FILES).cast("long"))).alias("file_id"))
    return (counted.groupBy("day", "file_id", "user_key")
            .agg(F.max("user_id").alias("user_id")))


def file_details(downloads, rules: JobRules):
    """analytics_file_details: counted logical downloads per file, local day, version, client
    class, completion decile (9 for 90-100 %) and completed (materialise.detail_key)."""
    from pyspark.sql import functions as F

    decile = (F.when(F.col("completion") >= 1.0, 9)
              .otherwise(F.floor(F.col("completion") * 10)).cast("int"))
    return (downloads.where("counted")
            .select("file_id", local_midnight("counted_at", rules.timezone).alias("day"),
                    "version_id", "ua_class", decile.alias("decile"), "completed")
            .groupBy("file_id", "day", "version_id", "ua_class", "decile", "completed")
            .agg(F.count("*").alias("downloads")))


def read_groups(spark, events_path: str):
    """The export's group memberships (export.GROUPS_FILE), None in an export without."""
    try:
        return spark.read.parquet(f"{events_path.rstrip('/')}/_groups")
    except Exception as exc:  # AnalysisException: an export written before there were any
        if "PATH_NOT_FOUND" in str(exc) or "Path does not exist" in str(exc):
            return None
        raise


TABLES = ("file_days", "logical_downloads", "rollups", "user_days", "file_details")


def write_all(spark, events_path: str, out: str, rules: JobRules | None = None, *,
              tables: tuple[str, ...] = TABLES) -> None:
    """Run the job on the export at ``events_path`` and write ``tables`` under ``out`` as
    Parquet (each overwritten), and ``_job/`` (one JSON line: the rules, the number of
    events and the newest response start, which ``flask analytics load`` reads)."""
    import json

    from pyspark.sql import functions as F

    rules = rules or JobRules()
    days, downloads, events = _run(spark, events_path, rules)
    made = {"file_days": lambda: days, "logical_downloads": lambda: downloads,
            "rollups": lambda: rollups(events, downloads, read_groups(spark, events_path),
                                       rules),
            "user_days": lambda: user_days(downloads, rules),
            "file_details": lambda: file_details(downloads, rules)}
    root = out.rstrip("/")
    for name in tables:
        made[name]().write.mode("overwrite").parquet(f"{root}/{name}")
    newest, count = events.agg(F.max("started_at"), F.count("*")).first()
    job = {"newest_started_at": newest.isoformat() if newest else None, "events": count,
           "rules": {"idle_minutes": rules.idle_minutes, "probe_max_bytes": rules.probe_max_bytes,
                     "min_bytes": rules.min_bytes, "complete_ratio": rules.complete_ratio,
                     "timezone": rules.timezone}}
    spark.createDataFrame([(json.dumps(job),)], "value string").coalesce(1) \
        .write.mode("overwrite").text(f"{root}/_job")


def run(spark, events_path: str, rules: JobRules | None = None):
    """(file_days, logical_downloads) DataFrames of the export at ``events_path``."""
    days, downloads, _ = _run(spark, events_path, rules or JobRules())
    return days, downloads


def _run(spark, events_path: str, rules: JobRules):
    """(file_days, logical_downloads, events with_asked), the last two kept."""
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    # Timestamps as Parquet's UTC microseconds (not Spark's legacy INT96): what pyarrow and
    # the loader read as instants.
    spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    # Every join here is events with events (or their parts): broadcasting one side ran the
    # driver out of heap at 10 M events (bench/run_spark_bench.py); sort-merge joins spill.
    spark.conf.set("spark.sql.autoBroadcastJoinThreshold", "-1")
    spark.conf.set("spark.sql.adaptive.autoBroadcastJoinThreshold", "-1")
    from pyspark import StorageLevel

    # Kept because several branches read them: without it every branch re-reads and
    # re-parses the Parquet. On local disk only: kept in memory and disk, a block that had
    # gone to disk was read back into one heap buffer of its size, which ran a 4 GiB
    # driver out of heap at 48 M events (bench/run_spark_bench.py); the page cache keeps
    # the disk copy fast while memory lasts.
    keep = StorageLevel.DISK_ONLY
    events = read_events(spark, events_path).drop("day")
    parts = served_parts(events).persist(keep)
    events = with_asked(events, parts).persist(keep)
    downloads = logical_downloads(events, parts, rules).persist(keep)
    return file_days(events, downloads, rules), downloads, events


def session(master: str | None = None, app_name: str = "portal-analytics",
            conf: dict[str, str] | None = None):
    """A SparkSession (``master`` for local runs; spark-submit gives its own)."""
    from pyspark.sql import SparkSession

    builder = (SparkSession.builder.appName(app_name)
               .config("spark.sql.session.timeZone", "UTC")
               .config("spark.ui.showConsoleProgress", "false"))
    for name, value in (conf or {}).items():
        builder = builder.config(name, value)
    if master:
        builder = builder.master(master)
    return builder.getOrCreate()


def s3a(path: str) -> str:
    """``s3://bucket/key`` as Spark's S3A connector (hadoop-aws) names it; others as given."""
    return "s3a://" + path.removeprefix("s3://") if path.startswith("s3://") else path


def s3a_conf(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Spark settings that send S3A where the portal's own S3 clients go: the endpoint of
    AWS_ENDPOINT_URL_S3 (else AWS_ENDPOINT_URL), path-style as the portal addresses
    buckets, and the keys of AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (with
    AWS_SESSION_TOKEN, temporary ones). What is unset is left to the cluster's own settings
    (an instance role, core-site.xml); what is set wins over them."""
    conf: dict[str, str] = {}
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        conf |= {"endpoint": endpoint, "path.style.access": "true",
                 "connection.ssl.enabled": str(endpoint.startswith("https:")).lower(),
                 "endpoint.region": (env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
                                     or "us-east-1")}
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        provider = "Temporary" if env.get("AWS_SESSION_TOKEN") else "Simple"
        conf |= {"aws.credentials.provider":
                 f"org.apache.hadoop.fs.s3a.{provider}AWSCredentialsProvider",
                 "access.key": env["AWS_ACCESS_KEY_ID"],
                 "secret.key": env["AWS_SECRET_ACCESS_KEY"]}
        if env.get("AWS_SESSION_TOKEN"):
            conf["session.token"] = env["AWS_SESSION_TOKEN"]
    return {f"spark.hadoop.fs.s3a.{name}": value for name, value in conf.items()}


def main(argv: list[str] | None = None) -> int:
    """spark-submit entry: read the export, write the rollups and logical downloads."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", required=True,
                        help="the export's root (DIR, s3://bucket/prefix, hdfs://...)")
    parser.add_argument("--out", required=True, help="where to write the tables "
                        "(Parquet, overwritten; DIR, s3://..., hdfs://...)")
    parser.add_argument("--master", default=None, help="e.g. local[2]; spark-submit's own "
                        "--master wins when omitted")
    parser.add_argument("--timezone", default=TIMEZONE)
    parser.add_argument("--idle-minutes", type=float, default=IDLE_MINUTES)
    parser.add_argument("--probe-max-bytes", type=int, default=PROBE_MAX_BYTES)
    parser.add_argument("--min-bytes", type=int, default=MIN_BYTES)
    parser.add_argument("--complete-ratio", type=float, default=COMPLETE_RATIO)
    parser.add_argument("--tables", default=",".join(TABLES),
                        help=f"which to write, comma-separated [default: {','.join(TABLES)}]")
    parser.add_argument("--no-logical", action="store_true",
                        help="leave logical_downloads out")
    args = parser.parse_args(argv)
    rules = JobRules(args.idle_minutes, args.probe_max_bytes, args.min_bytes,
                     args.complete_ratio, args.timezone)
    tables = tuple(t for t in args.tables.split(",") if t)
    unknown = set(tables) - set(TABLES)
    if unknown:
        parser.error(f"unknown table(s): {', '.join(sorted(unknown))}")
    if args.no_logical:
        tables = tuple(t for t in tables if t != "logical_downloads")
    events, out = s3a(args.events), s3a(args.out)
    on_s3 = any(path.startswith("s3a://") for path in (events, out))
    spark = session(args.master, conf=s3a_conf() if on_s3 else None)
    try:
        write_all(spark, events, out, rules, tables=tables)
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
