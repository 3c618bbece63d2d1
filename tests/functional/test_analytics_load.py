"""``flask analytics load`` takes nothing on a run's word: a run whose ``_job`` claims a
future cut-off, or whose rows have other types, negative counts or ids the portal does not
know, is refused in one line and every table the pages read stays as it was (live days
included); an honest run still loads. The runs are written from SQL's own rollup tables
in the layout spark_job.py writes (tests/helpers.write_run), without Spark."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from portal.analytics import materialise
from tests.helpers import (
    analytics_tables,
    store_event,
    wipe_analytics_tables,
    write_run,
)

pytestmark = pytest.mark.databases  # rows loaded with each dialect's upsert


@pytest.fixture
def history(app, runner):
    """Six simulated days of downloads, then one live download after them."""
    result = runner.invoke(args=["analytics", "simulate", "--events", "400", "--days", "6",
                                 "--users", "8", "--files", "3", "--seed", "7"])
    assert result.exit_code == 0, result.output
    return app


def live_download(app) -> dict[str, set]:
    """A download now, after the run was written (today's rows change); the tables then."""
    store_event(app, datetime.now(UTC) - timedelta(seconds=5))
    return analytics_tables(app)


def load(runner, out, *args):
    return runner.invoke(args=["analytics", "load", str(out), *args])


def refused(result, said: str) -> None:
    """Refused in one line naming the problem, no traceback."""
    assert result.exit_code != 0, result.output
    assert said in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert "Traceback" not in result.output


def test_an_honest_run_loads(history, runner, tmp_path):
    """The run's rows replace SQL's before the day of its newest response; from that day
    on SQL's own rows, the live download's too, stay."""
    app = history
    out = write_run(app, tmp_path / "run")
    before_run = analytics_tables(app)
    made = live_download(app)
    wipe_analytics_tables(app)
    result = load(runner, out)
    assert result.exit_code == 0, result.output
    assert "loaded" in result.output
    loaded = analytics_tables(app)
    settings = materialise.Settings.from_config(app.config)
    with app.app_context():
        from portal.analytics import warehouse

        cut = warehouse.cut_off(warehouse.read_job(warehouse.open_run(str(out))), settings,
                                None)
    time_of = {"analytics_rollups": 1, "analytics_user_days": 0, "analytics_file_details": 1}
    for name, at in time_of.items():
        assert loaded[name] == {row for row in before_run[name] if row[at] < cut}, name
        assert loaded[name], name
    assert made != before_run  # the live download changed today's rows


TODAY = datetime.now(UTC)


@pytest.mark.parametrize(("tamper", "said"), [
    ({"job": {"newest_started_at": (TODAY + timedelta(days=30)).isoformat()}},
     "after the newest SQL holds"),
    ({"job": {"newest_started_at": "next week"}}, "must be an ISO instant"),
    ({"job": {"newest_started_at": 1767225600}}, "must be an ISO instant"),
    ({"types": {("rollups", "requests"): pa.string()}}, "requests must be int, not string"),
    ({"types": {("user_days", "file_id"): pa.float64()}}, "file_id must be int, not double"),
    ({"types": {("file_details", "day"): pa.string()}}, "day must be time, not string"),
    ({"rows": lambda name, rows: [{**rows[0], "requests": -5}, *rows[1:]]
      if name == "rollups" else rows}, "requests must be 0 or more, not -5"),
    ({"rows": lambda name, rows: [{**rows[0], "downloads": -1}, *rows[1:]]
      if name == "file_details" else rows}, "downloads must be 0 or more, not -1"),
    ({"rows": lambda name, rows: [{**rows[0], "file_id": 987654}, *rows[1:]]
      if name == "rollups" else rows}, "file 987654 is not a file of this portal"),
    ({"rows": lambda name, rows: [{**rows[0], "user_id": 987654, "user_key": "u:987654"},
                                  *rows[1:]]
      if name == "user_days" else rows}, "user 987654 is not a user of this portal"),
    ({"rows": lambda name, rows: [{**rows[0], "user_key": "u:1", "user_id": None}, *rows[1:]]
      if name == "user_days" else rows}, "user_key 'u:1' does not name user None"),
    ({"rows": lambda name, rows: [{**rows[0], "version_id": 987654}, *rows[1:]]
      if name == "file_details" else rows}, "version 987654 is not a version of file"),
    ({"rows": lambda name, rows: [{**rows[0], "grp": "nobody-made-this"}, *rows[1:]]
      if name == "rollups" else rows}, "group 'nobody-made-this' is not a group"),
    ({"rows": lambda name, rows: [{**rows[0], "decile": 12}, *rows[1:]]
      if name == "file_details" else rows}, "decile must be at most 9, not 12"),
    ({"rows": lambda name, rows: [{**rows[0], "grain": "w"}, *rows[1:]]
      if name == "rollups" else rows}, "grain must be one of h, d, not 'w'"),
    ({"rows": lambda name, rows: [{**rows[0], "day": rows[0]["day"] + timedelta(hours=5)},
                                  *rows[1:]]
      if name == "user_days" else rows}, "day must be a local midnight"),
], ids=["future-cut-off", "cut-off-text", "cut-off-number", "text-counts", "float-ids",
        "text-days", "negative-requests", "negative-downloads", "unknown-file",
        "unknown-user", "key-of-another-user", "unknown-version", "unknown-group",
        "decile", "grain", "day-not-midnight"])
def test_a_tampered_run_is_refused_and_changes_nothing(history, runner, tmp_path, tamper,
                                                       said):
    app = history
    out = write_run(app, tmp_path / "run", **tamper)
    made = live_download(app)
    refused(load(runner, out), said)
    assert analytics_tables(app) == made


def test_a_cut_off_past_today_is_refused(history, runner, tmp_path):
    """``--before`` later than today, or than the day after the run's newest response,
    would replace the live days with the run's: refused, nothing changes."""
    app = history
    out = write_run(app, tmp_path / "run")
    made = live_download(app)
    tz = materialise.Settings.from_config(app.config).tz
    tomorrow = (datetime.now(tz) + timedelta(days=1)).date()
    refused(load(runner, out, "--before", tomorrow.isoformat()), "nothing loaded")
    assert analytics_tables(app) == made
    # Today is the latest cut-off: the days before it are over and the run saw them.
    result = load(runner, out, "--before", datetime.now(tz).date().isoformat())
    assert result.exit_code == 0, result.output


def test_a_run_that_is_not_json_is_refused(history, runner, tmp_path):
    app = history
    out = write_run(app, tmp_path / "run")
    (out / "_job" / "part-00000.txt").write_text("{not json\n")
    made = analytics_tables(app)
    refused(load(runner, out), "is not a spark_job.py line")
    assert analytics_tables(app) == made
