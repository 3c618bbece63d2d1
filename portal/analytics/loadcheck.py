"""What a warehouse run may put in SQL, judged before ``flask analytics load`` deletes a row.

A run is files in a folder or a bucket, which more people and jobs can write than the
portal's database, and a load deletes SQL's rows before its cut-off to put the run's in
their place. So neither the cut-off nor a row is taken on the run's word:

- the ``_job`` line's newest response may not be later than the newest SQL holds (the
  run's events are an export of SQL's), nor than now when SQL holds none;
- the cut-off (that response's local day, or ``--before``) is never past today's local
  midnight, nor past the midnight after that newest response: the days SQL is still
  adding to, and days the run never saw, stay SQL's;
- every row to be loaded has the columns of its SQL table, with Arrow types of the same
  kind, no null where SQL allows none, whole numbers from 0 to the column's largest, text
  no longer than the column, hours and local midnights where the buckets are, the grains,
  client classes and deciles there are, and only files, versions of those files, users and
  groups SQL knows.

Anything else is a LoadError of one line, raised before anything is deleted.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import BigInteger, Boolean, Connection, Integer, String, func, select

from ..models import DownloadEvent, File, FileVersion, Group, User, UTCDateTime
from . import clients
from .materialise import day_bucket, hour_bucket
from .models import ALL_FILES, ALL_USERS, FileDetailDay, Rollup
from .sqlbatch import IN_LIST, chunks

#: Columns whose values are one of a few.
CHOICES = {"grain": ("h", "d"), "ua_class": clients.CLASSES}
#: Whole-number columns with a smaller largest value than their SQL type's.
LARGEST = {"decile": 9}
#: Whom a row counts: a user (``u:<id>``, its user_id), a signed link, an anonymous client.
USER_KEY = re.compile(r"u:(\d+)|l:\S+|a:[0-9a-f]{16}")


class LoadError(Exception):
    """The run cannot be loaded: one line for the operator."""


def kind_of(column) -> str:
    """int, text, bool or time: what an SQL column holds, as the run's Arrow type must."""
    kind = column.type
    if isinstance(kind, UTCDateTime):
        return "time"
    if isinstance(kind, Boolean):
        return "bool"
    if isinstance(kind, Integer):
        return "int"
    if isinstance(kind, String):
        return "text"
    raise TypeError(f"no Arrow kind for {column}")  # a column added to a loaded table


def largest_of(column) -> int:
    """The largest whole number the column takes in SQL (PostgreSQL's integer widths)."""
    if column.name in LARGEST:
        return LARGEST[column.name]
    return 2**63 - 1 if isinstance(column.type, BigInteger) else 2**31 - 1


def next_midnight(moment: datetime, tz: ZoneInfo) -> datetime:
    """The local midnight after a moment's local day (as UTC; 23- and 25-hour days too)."""
    return day_bucket(day_bucket(moment, tz) + timedelta(hours=36), tz)


def newest_of(job: dict) -> datetime | None:
    """The ``_job`` line's newest response start (None: the job saw no events)."""
    newest = job.get("newest_started_at")
    if newest is None:
        return None
    try:
        moment = datetime.fromisoformat(newest)
    except (TypeError, ValueError):
        raise LoadError(f"_job: newest_started_at must be an ISO instant, not {newest!r}; "
                        "nothing loaded") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def pairs(batch, first: str, second: str) -> list[tuple]:
    """The distinct (first, second) values of a batch's rows."""
    import pyarrow as pa

    found = (pa.Table.from_batches([batch.select([first, second])])
             .group_by([first, second]).aggregate([]))
    return list(zip(found.column(first).to_pylist(), found.column(second).to_pylist(),
                    strict=True))


class RunCheck:
    """A run judged against what SQL holds now (read once, before anything is deleted)."""

    def __init__(self, conn: Connection, tz: ZoneInfo) -> None:
        self.conn, self.tz = conn, tz
        self.newest = conn.execute(select(func.max(DownloadEvent.started_at))).scalar()
        self.files = frozenset(conn.execute(select(File.id)).scalars())
        self.versions = frozenset(conn.execute(select(FileVersion.file_id, FileVersion.id)))
        self.users = frozenset(conn.execute(select(User.id)).scalars())
        self.groups = frozenset(conn.execute(select(Group.name)).scalars())

    def cut_off(self, cut: datetime, newest: datetime | None, now: datetime) -> None:
        """Refuse a cut-off past what the run saw, what SQL holds, or today."""
        if newest is None:
            raise LoadError("the job saw no events: nothing to load")
        held = self.newest if self.newest is not None else now
        if newest > held:
            said = "the newest SQL holds" if self.newest is not None else "now"
            raise LoadError(f"the run's _job says its newest response started at "
                            f"{newest.isoformat()}, after {said} ({held.isoformat()}): not a "
                            "run of this portal's export, or its _job was changed; "
                            "nothing loaded")
        limit = min(day_bucket(now, self.tz), next_midnight(newest, self.tz))
        if cut > limit:
            raise LoadError(f"the cut-off {self._day(cut)} is past {self._day(limit)}: the "
                            "days from then on are still being counted or were not seen by "
                            "the run; nothing loaded")

    def schema(self, where: str, model, schema) -> None:
        """Refuse a table without the SQL table's columns, or of other kinds."""
        import pyarrow as pa

        fits = {"int": pa.types.is_integer, "bool": pa.types.is_boolean,
                "time": pa.types.is_timestamp,
                "text": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)}
        for column in model.__table__.columns:
            if column.name not in schema.names:
                raise LoadError(f"{where}: no column {column.name}; nothing loaded")
            given = schema.field(column.name).type
            if not (fits[kind_of(column)](given)
                    or (column.nullable and pa.types.is_null(given))):
                raise LoadError(f"{where}: {column.name} must be {kind_of(column)}, not "
                                f"{given}; nothing loaded")

    def rows(self, where: str, model, batch) -> None:
        """Refuse a batch of rows with a value SQL would not hold or does not know."""
        import pyarrow.compute as pc

        for column in model.__table__.columns:
            values = batch.column(column.name)
            if values.null_count == len(values):
                if values.null_count and not column.nullable:
                    self._refuse(where, f"{column.name} is empty")
                continue
            if values.null_count and not column.nullable:
                self._refuse(where, f"{column.name} is empty in {values.null_count} row(s)")
            kind = kind_of(column)
            if kind == "int":
                bounds = pc.min_max(values)
                low, high = bounds["min"].as_py(), bounds["max"].as_py()
                if low < 0:
                    self._refuse(where, f"{column.name} must be 0 or more, not {low}")
                if high > largest_of(column):
                    self._refuse(where, f"{column.name} must be at most "
                                        f"{largest_of(column)}, not {high}")
            elif kind == "text":
                longest = pc.max(pc.utf8_length(values)).as_py()
                if column.type.length and longest > column.type.length:
                    self._refuse(where, f"{column.name} must be at most {column.type.length} "
                                        f"characters, not {longest}")
            if column.name in CHOICES:
                for value in pc.unique(values).to_pylist():
                    if value not in CHOICES[column.name]:
                        self._refuse(where, f"{column.name} must be one of "
                                            f"{', '.join(CHOICES[column.name])}, not {value!r}")
        self._times(where, model, batch)
        self._known(where, model, batch)

    def _times(self, where: str, model, batch) -> None:
        """Hourly buckets on a UTC hour; days and daily buckets on a local midnight."""
        if model is Rollup:
            moments = pairs(batch, "grain", "bucket")
            column = "bucket"
        else:
            import pyarrow.compute as pc

            moments = (("d", day) for day in pc.unique(batch.column("day")).to_pylist())
            column = "day"
        for grain, moment in moments:
            moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
            start = hour_bucket(moment) if grain == "h" else day_bucket(moment, self.tz)
            if moment != start:
                what = "a UTC hour" if grain == "h" else f"a local midnight ({self.tz.key})"
                self._refuse(where, f"{column} must be {what}, not {moment.isoformat()}")

    def _known(self, where: str, model, batch) -> None:
        """Only files, versions, users and groups SQL knows."""
        import pyarrow.compute as pc

        def unique(name: str) -> set:
            return set(pc.unique(batch.column(name)).to_pylist()) - {None}

        files = self.files if model is FileDetailDay else self.files | {ALL_FILES}
        if unknown := unique("file_id") - files:
            self._refuse(where, f"file {min(unknown)} is not a file of this portal")
        if "version_id" in batch.schema.names:
            for file_id, version_id in pairs(batch, "file_id", "version_id"):
                if (file_id, version_id) not in self.versions:
                    self._refuse(where, f"version {version_id} is not a version of file "
                                        f"{file_id}")
        if "user_id" in batch.schema.names:
            if unknown := unique("user_id") - self.users:
                self._refuse(where, f"user {min(unknown)} is not a user of this portal")
            for key, user_id in pairs(batch, "user_key", "user_id"):
                found = USER_KEY.fullmatch(key)
                if found is None or (found[1] is not None and int(found[1]) != user_id):
                    self._refuse(where, f"user_key {key!r} does not name user {user_id}")
        if "grp" in batch.schema.names:
            names = unique("grp") - self.groups - {ALL_USERS}
            for some in chunks(sorted(names), IN_LIST):  # groups deleted since: known
                names -= set(self.conn.execute(  # while SQL's own rollups name them
                    select(Rollup.grp).where(Rollup.grain == "d", Rollup.grp.in_(some))
                    .distinct()).scalars())
            if names:
                self._refuse(where, f"group {min(names)!r} is not a group of this portal")

    def _day(self, moment: datetime) -> str:
        return f"{moment.astimezone(self.tz):%Y-%m-%d}"

    @staticmethod
    def _refuse(where: str, problem: str):
        raise LoadError(f"{where}: {problem}; nothing loaded")
