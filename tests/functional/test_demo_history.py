"""The demo's download history (``flask demo``) and ``analytics simulate``'s promise: by
default it invents history over what exists; placeholder files it is asked for are seen by
no student or staff member, and every one of them downloads (no 503)."""

from __future__ import annotations

import hashlib
from collections import Counter
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from portal import demo
from portal.access import can_read
from portal.analytics.materialise import Settings
from portal.analytics.simulate import term_weight
from portal.extensions import db
from portal.models import DownloadEvent, File, FileVersion, User
from portal.storage import get_storage

pytestmark = pytest.mark.databases  # history written in bulk, PostgreSQL's own way


def count(app, model) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(model))


def test_demo_seeds_a_term_of_history_the_pages_show(app, runner, client, login):
    result = runner.invoke(args=["demo", "--big-mb", "1"])
    assert result.exit_code == 0, result.output
    assert "download requests" in result.output
    events = count(app, DownloadEvent)
    assert 1500 <= events <= 8000
    with app.app_context():
        pairs = db.session.execute(select(DownloadEvent.user_id, DownloadEvent.file_id)
                                   .distinct()).all()
        users = {u.id: u for u in db.session.scalars(select(User))}
        files = {f.id: f for f in db.session.scalars(select(File))}
        # Everyone downloaded only what they may read, and many different people did.
        assert all(can_read(users[u], files[f]) for u, f in pairs)
        assert len({u for u, _ in pairs}) >= 40
        assert not any(f.title.startswith("模拟文件") for f in files.values())
    login("admin", demo.PASSWORD)
    overview = client.get("/api/analytics/overview?days=30").json["current"]
    assert overview["downloads"] > 400 and overview["unique_users"] >= 30
    top = client.get("/api/analytics/top-files?days=60").json
    assert len(top) >= 10 and top[0]["downloads"] > top[-1]["downloads"] > 0
    # A transcript is fetched by its one owner: never among the most downloaded.
    assert all(row["category"] != "成绩单" for row in top[:5])
    series = client.get("/api/analytics/series?days=60").json
    assert sum(1 for n in series["downloads"] if n) >= 50
    assert client.get("/admin/analytics/").status_code == 200
    login("student", demo.PASSWORD)
    page = client.get("/?sort=popular").get_data(as_text=True)
    assert "模拟文件" not in page
    before = count(app, DownloadEvent)
    assert runner.invoke(args=["demo", "--big-mb", "1"]).exit_code == 0  # once only
    assert count(app, DownloadEvent) == before


def test_demo_history_has_a_weekly_daily_and_exam_rhythm(app):
    """Fixed ``now`` (2 December): the window holds the mid-term weeks of November."""
    now = datetime(2026, 12, 2, 9, tzinfo=UTC)
    tz = ZoneInfo(app.config["ANALYTICS_TIMEZONE"])
    with app.app_context():
        demo.seed(db.session, get_storage(), big_file_mb=1)
        with db.engine.begin() as conn:
            demo.seed_history(conn, Settings.from_config(app.config), now=now)
        starts = [s.replace(tzinfo=UTC).astimezone(tz) if s.tzinfo is None else s.astimezone(tz)
                  for s in db.session.scalars(select(DownloadEvent.started_at))]
    assert min(starts) >= now - timedelta(days=demo.HISTORY_DAYS, hours=1)
    per_day = Counter(s.date() for s in starts)
    weekday = [n for d, n in per_day.items() if d.weekday() < 5 and term_weight(
        datetime(d.year, d.month, d.day)) == 1.0]
    weekend = [n for d, n in per_day.items() if d.weekday() >= 5 and term_weight(
        datetime(d.year, d.month, d.day)) == 0.6]
    exams = [n for d, n in per_day.items() if d.weekday() < 5 and term_weight(
        datetime(d.year, d.month, d.day)) == 2.0]
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    assert mean(weekend) < 0.85 * mean(weekday)
    assert mean(exams) > 1.4 * mean(weekday)
    per_hour = Counter(s.hour for s in starts)
    assert sum(per_hour[h] for h in (20, 21, 22)) > 4 * sum(per_hour[h] for h in (2, 3, 4))


def test_simulate_adds_nothing_students_see_and_placeholders_download(app, runner, client,
                                                                     login):
    assert runner.invoke(args=["demo", "--big-mb", "1", "--history", "0"]).exit_code == 0
    files, people = count(app, File), count(app, User)
    result = runner.invoke(args=["analytics", "simulate", "--events", "400", "--days", "5"])
    assert result.exit_code == 0, result.output
    assert (count(app, File), count(app, User)) == (files, people)  # over what exists
    result = runner.invoke(args=["analytics", "simulate", "--events", "600", "--days", "5",
                                 "--new-users", "20", "--new-files", "8"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        created = db.session.execute(
            select(FileVersion.file_id, FileVersion.number, FileVersion.size,
                   FileVersion.sha256).join(File).where(File.category.like("sim-%"))).all()
        downloaded = set(db.session.scalars(select(DownloadEvent.file_id)))
    new_ids = {row.file_id for row in created}
    assert len(new_ids) == 8 and count(app, File) == files + 8
    assert new_ids & downloaded  # the simulated users did download them
    for who in ("student", "2024015", "staff"):
        login(who, demo.PASSWORD)
        listed = client.get("/api/files?q=").json
        seen = {f["id"] for page in range(1, listed["pages"] + 1)
                for f in client.get(f"/api/files?page={page}").json["files"]}
        assert seen and not seen & new_ids, who
        for sort in ("newest", "popular"):
            assert "模拟文件" not in client.get(f"/?sort={sort}").get_data(as_text=True)
        for file_id in new_ids:
            assert client.get(f"/files/{file_id}").status_code == 404
            assert client.get(f"/files/{file_id}/download").status_code == 404
    login("admin", demo.PASSWORD)
    for row in created:  # every placeholder version answers its real bytes, none 503
        resp = client.get(f"/files/{row.file_id}/download?version={row.number}")
        assert resp.status_code == 200, (row, resp.status_code)
        body = resp.get_data()
        assert len(body) == row.size and hashlib.sha256(body).hexdigest() == row.sha256


def test_simulate_over_nothing_says_so(runner):
    result = runner.invoke(args=["analytics", "simulate", "--events", "100", "--days", "2"])
    assert result.exit_code != 0
    assert "nothing to simulate" in result.output and "Traceback" not in result.output
