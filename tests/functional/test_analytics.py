"""Analytics through the app: buffering and flushing, rollups, the API and the pages."""

import io
import itertools
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, inspect, select

from portal.analytics import eventrows, materialise, nginxlog, pacing
from portal.analytics import recorder as recorder_module
from portal.analytics.models import (
    FileDetailDay,
    FileUser,
    LogicalDownload,
    Rollup,
    UserDay,
    UserGap,
)
from portal.analytics.recorder import recorder
from portal.analytics.simulate import SIM_GROUP, simulate
from portal.analytics.spans import derived_gap_rows
from portal.extensions import db
from portal.files import add_version
from portal.models import DownloadEvent, File
from portal.storage import get_storage

# PostgreSQL too: the rollups' SQL differs by dialect (upserts, least/greatest, days)
pytestmark = pytest.mark.databases

BODY = bytes(range(256)) * 256  # 64 KiB
ROOT = Path(__file__).resolve().parents[2]


def add(app, title="讲义", access="public", category="课件", body=BODY):
    with app.app_context():
        version = add_version(db.session, get_storage(), io.BytesIO(body),
                              filename=f"{title}.pdf", title=title, category=category,
                              access=access)
        db.session.commit()
        return version.file_id


def count(app, model):
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(model))


def events(app) -> list:
    with app.app_context():
        return db.session.scalars(select(DownloadEvent).order_by(DownloadEvent.id)).all()


def settings(app):
    return materialise.Settings.from_config(app.config)


def stored_rollups(conn) -> tuple[dict, set]:
    """The rollups and user-days as stored (the same shapes as ``materialise.recompute``)."""
    rollups = {}
    for row in conn.execute(select(Rollup.__table__)):
        values = {name: row._mapping[name] for name in materialise.COUNTERS}
        if any(values.values()):
            rollups[(row.grain, row.bucket, row.file_id, row.grp)] = values
    days = {(r.day, r.file_id, r.user_key) for r in conn.execute(select(UserDay.__table__))}
    return rollups, days


def stored_file_users(conn) -> tuple[set, set]:
    """(first and last days as stored, as derived from the user-days): equal when right."""
    t, u = FileUser.__table__, UserDay.__table__
    stored = {(r.file_id, r.user_key, r.first_day, r.last_day) for r in conn.execute(select(t))}
    derived = {tuple(r) for r in conn.execute(
        select(u.c.file_id, u.c.user_key, func.min(u.c.day), func.max(u.c.day))
        .group_by(u.c.file_id, u.c.user_key))}
    return stored, derived


def stored_details(conn) -> dict[tuple, int]:
    """The non-zero file-detail cells as stored (the shape of ``materialise.details_of``)."""
    t = FileDetailDay.__table__
    return {tuple(r[:6]): int(r[6]) for r in conn.execute(
        select(*[t.c[k] for k in materialise.DETAIL_KEYS], t.c.downloads)) if r[6]}


def stored_gaps(conn) -> tuple[set, set]:
    """(gaps as stored, gaps as derived from the user-days): equal when right."""
    columns = ("file_id", "user_key", "gap_from", "gap_to", "span_days")
    stored = {tuple(r) for r in conn.execute(
        select(*[UserGap.__table__.c[c] for c in columns]))}
    derived = {tuple(row[c] for c in columns) for row in derived_gap_rows(conn)}
    return stored, derived


def assert_rollups_match_raw(app):
    with app.app_context(), db.engine.connect() as conn:
        want_rollups, want_days, _ = materialise.recompute(conn, settings(app))
        have_rollups, have_days = stored_rollups(conn)
        file_users, derived = stored_file_users(conn)
        _, _, sessions = materialise.recompute(conn, settings(app))
        want_details = materialise.details_of(sessions, settings(app).tz)
        have_details = stored_details(conn)
    assert have_details == want_details
    assert have_rollups == want_rollups
    assert have_days == want_days
    assert file_users == derived
    with app.app_context(), db.engine.connect() as conn:
        gaps, derived_gaps = stored_gaps(conn)
    assert gaps == derived_gaps


def test_events_are_buffered_then_flushed_once(app, client):
    file_id = add(app)
    for _ in range(3):
        client.get(f"/files/{file_id}/download").close()
    client.get(f"/files/{file_id}/download", headers={"Range": "bytes=0-0"}).close()
    r = app.extensions["portal_redis"]
    stream = recorder(app).keys().stream
    assert r.xlen(stream) == 4 and count(app, DownloadEvent) == 0
    assert recorder(app).open_responses() == 0  # every body closed and shipped
    assert recorder(app).flush() == 4
    assert r.xlen(stream) == 0 and count(app, DownloadEvent) == 4
    with app.app_context():
        row = db.session.scalars(select(DownloadEvent).order_by(DownloadEvent.id)).first()
        assert row.size == len(BODY) and row.served_ranges == f"0-{len(BODY) - 1}"
        assert row.client_ip == "127.0.0.0/24" and row.event_key and row.served_from == "origin"
    # the same entries again (a flusher died after its commit, before XDEL): nothing changes
    with app.app_context(), db.engine.connect() as conn:
        before = stored_rollups(conn)
    with app.app_context():
        rows = [dict(r._mapping) for r in db.session.execute(select(DownloadEvent.__table__))]
    with app.app_context(), db.engine.begin() as conn:
        assert materialise.store(conn, rows, settings(app)) == 0
    with app.app_context(), db.engine.connect() as conn:
        assert stored_rollups(conn) == before
    assert count(app, DownloadEvent) == 4
    assert recorder(app).flush() == 0
    with app.app_context():
        [logical] = db.session.scalars(select(LogicalDownload)).all()
        assert logical.counted and logical.completed and logical.events == 4
    assert_rollups_match_raw(app)
    # a batch holding a stored key, a new key twice and an event without a key: the new
    # key is written once, the keyless event always (nothing could recognise it)
    fresh = {k: v for k, v in rows[0].items() if k != "id"}
    batch = [rows[1], {**fresh, "event_key": "f" * 32}, {**fresh, "event_key": "f" * 32},
             {**fresh, "event_key": None}]
    with app.app_context(), db.engine.begin() as conn:
        assert materialise.store(conn, batch, settings(app)) == 2
    assert count(app, DownloadEvent) == 6
    assert_rollups_match_raw(app)


def test_flush_lock_lets_one_process_flush(app, client):
    file_id = add(app)
    client.get(f"/files/{file_id}/download").close()
    r = app.extensions["portal_redis"]
    lock = recorder(app).keys().flush_lock
    r.set(lock, "someone-else", px=5000)
    assert recorder(app).flush() == 0 and count(app, DownloadEvent) == 0
    r.delete(lock)
    assert recorder(app).flush() == 1


def test_redis_down_writes_straight_to_sql(config):
    from portal import create_app

    config = {**config, "REDIS_URL": "redis://127.0.0.1:1/0",
              "RATELIMIT_STORAGE_URI": "memory://"}
    app = create_app(config)
    with app.app_context():
        db.create_all()
    file_id = add(app)
    client = app.test_client()
    resp = client.get(f"/files/{file_id}/download")
    assert resp.status_code == 200 and resp.data == BODY
    resp.close()
    assert count(app, DownloadEvent) == 1 and count(app, LogicalDownload) == 1
    assert_rollups_match_raw(app)
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def test_open_response_of_a_live_worker_is_not_an_orphan(app, client):
    file_id = add(app)
    resp = client.get(f"/files/{file_id}/download")  # body still open: a journaled start
    rec = recorder(app)
    assert rec.open_responses() == 1
    assert rec.flush() == 0  # this process holds its journal: not an orphan
    resp.close()
    assert rec.open_responses() == 0
    assert rec.flush() == 1
    [row] = events(app)
    assert row.bytes_sent == len(BODY)


DEAD_WORKER = """
import json, os, signal, sys
from portal.analytics.journal import Journal
journal = Journal(__import__("pathlib").Path(sys.argv[1]), "dead-worker")
for line in sys.stdin:
    journal.started(line.strip())
journal.ended([json.loads(line)["event_key"] for line in sys.argv[2:]])
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_orphans_of_a_killed_worker_are_recorded_once(app, client):
    file_id = add(app)
    resp = client.get(f"/files/{file_id}/download")  # our own open response: not an orphan
    rec = recorder(app)
    with app.app_context():
        version_id = db.session.get(File, file_id).latest.id
    starts = [eventrows.dump_row(eventrows.event_row(
        file_id=file_id, version_id=version_id, size=len(BODY), user_id=None, via_link=False,
        method="GET", status=200, range_header="", served=[(0, len(BODY))],
        client_ip="10.1.2.3", user_agent="curl/8", referrer=None, link_id=None)
        | {"event_key": eventrows.new_event_key()}) for _ in range(3)]
    ended = starts[2]  # its end reached the stream before the kill
    # a real process journals three starts, notes one end and is killed (SIGKILL)
    done = subprocess.run([sys.executable, "-c", DEAD_WORKER, str(rec.journal_dir()), ended],
                          input="\n".join(starts), text=True, cwd=ROOT, check=False)
    assert done.returncode == -signal.SIGKILL
    assert rec.flush() == 2
    orphans = events(app)
    assert {(o.bytes_sent, o.ended_at) for o in orphans} == {(-1, None)}
    assert sorted(o.event_key for o in orphans) == sorted(
        json.loads(s)["event_key"] for s in starts[:2])
    assert [p.name for p in rec.journal_dir().iterdir()] == [rec._journal.path.name]
    assert rec.flush() == 0  # recovered once
    resp.close()
    assert rec.flush() == 1 and len(events(app)) == 3


def test_flush_equals_recompute_on_a_mix_of_clients(app, client, make_user, login):
    make_user("alice", groups=["CS2024"])
    make_user("bob", groups=["EE2024"])
    first, second = add(app, "一"), add(app, "二", category="表格")
    size = len(BODY)
    for user in ("alice", "bob"):
        login(user)
        client.get(f"/files/{first}/download", headers={"Range": "bytes=0-1"}).close()
        for a in range(0, size, size // 8):  # a download manager: 8 ranged connections
            client.get(f"/files/{first}/download",
                       headers={"Range": f"bytes={a}-{a + size // 8 - 1}",
                                "User-Agent": "aria2/1.37.0"}).close()
        client.get(f"/files/{second}/download").close()
    client.head(f"/files/{second}/download").close()
    recorder(app).flush()
    assert_rollups_match_raw(app)
    with app.app_context():
        total = db.session.scalar(select(func.sum(Rollup.downloads)).where(
            Rollup.grain == "d", Rollup.grp == "", Rollup.file_id == 0))
        assert total == 4  # 2 people x 2 files; probes, HEAD and parallel parts do not add
        assert db.session.scalar(select(func.sum(Rollup.downloads)).where(
            Rollup.grain == "d", Rollup.grp == "CS2024", Rollup.file_id == 0)) == 2


@pytest.mark.parametrize("seed", [1, 2])
def test_simulated_rollups_equal_a_recomputation_from_raw_events(app, seed):
    # A fixed "now": how many responses ten days hold depends on which weekdays and hours
    # they are (seed 1 made 1,462 of the 3,000 asked at 2026-12-03 10:20 UTC, after
    # passing at 08:50 the same day).
    now = datetime(2026, 11, 25, 4, tzinfo=UTC)
    with app.app_context(), db.engine.begin() as conn:
        report = simulate(conn, settings(app), events=3000, days=10, users=60, files=12,
                          storage=get_storage(), seed=seed, now=now)
    assert report["events"] > 1500, report
    assert_rollups_match_raw(app)
    with app.app_context(), db.engine.connect() as conn:  # (bulk loads build them at the end)
        for table in db.metadata.sorted_tables:
            stored = {ix["name"] for ix in inspect(conn).get_indexes(table.name)}
            assert {ix.name for ix in table.indexes if not ix.unique} <= stored, table.name
    with app.app_context(), db.engine.connect() as conn:
        _, _, sessions = materialise.recompute(conn, settings(app))
    assert count(app, LogicalDownload) == len(sessions)


def test_contract_endpoint(app, client, make_user, login):
    file_id = add(app)
    client.get(f"/files/{file_id}/download").close()
    client.get(f"/files/{file_id}/download", headers={"Range": "bytes=0-99"}).close()
    recorder(app).flush()
    url = f"/api/analytics/files/{file_id}?days=7"
    resp = app.test_client().get(url)
    assert resp.status_code == 401 and resp.is_json
    make_user("student")
    login("student")
    assert client.get(url).status_code == 404
    make_user("boss", role="admin")
    login("boss")
    resp = client.get(url)
    assert resp.status_code == 200
    data = resp.json
    assert data["downloads"] == 1 and data["unique_users"] == 1
    assert data["bytes_served"] == len(BODY) + 100 and data["completion_rate"] == 1.0
    assert client.get("/api/analytics/files/999999?days=7").status_code == 404


def test_pages_json_and_csv_render(app, client, make_user, login):
    with app.app_context(), db.engine.begin() as conn:
        simulate(conn, settings(app), events=2000, days=21, users=40, files=8,
                 storage=get_storage())
    make_user("outsider", role="staff")  # placeholders are for the simulated users only
    login("outsider")
    assert client.get("/admin/analytics/files/1").status_code == 404
    assert client.get("/api/analytics/top-files?days=30").json == []
    make_user("staff1", role="staff", groups=[SIM_GROUP])
    login("staff1")
    for page in ("/admin/analytics/", "/admin/analytics/time", "/admin/analytics/files/1"):
        resp = client.get(page)
        assert resp.status_code == 200, page
        assert "chartjs/chart.umd.min." in resp.get_data(as_text=True)  # a hashed name
    overview = client.get("/api/analytics/overview?days=30").json
    assert overview["current"]["downloads"] > 0 and overview["current"]["unique_users"] > 0
    assert 0 < overview["current"]["completion_rate"] <= 1
    top = client.get("/api/analytics/top-files?days=30").json
    assert top and top[0]["downloads"] >= top[-1]["downloads"]
    for step in ("hour", "day", "week"):
        series = client.get(f"/api/analytics/series?days=14&step={step}").json
        assert len(series["labels"]) == len(series["downloads"]) > 0
    heat = client.get("/api/analytics/heatmap").json
    assert len(heat["values"]) == 7 and sum(map(sum, heat["values"])) > 0
    forecast = client.get("/api/analytics/forecast?weeks=2").json
    assert len(forecast["values"]) == 168 and sum(forecast["values"]) > 0
    detail = client.get(f"/api/analytics/files/{top[0]['file_id']}/detail?days=30").json
    assert sum(detail["completion_histogram"]["values"]) == detail["totals"]["downloads"]
    assert sum(detail["clients"].values()) == detail["totals"]["downloads"]
    csv = client.get("/api/analytics/top-files?days=30&format=csv")
    assert csv.mimetype == "text/csv" and "file_id,title" in csv.get_data(as_text=True)
    assert client.get("/api/analytics/heatmap?format=csv").status_code == 200
    login_student = make_user("s2")
    assert login_student
    login("s2")
    assert client.get("/admin/analytics/").status_code == 404


def test_recommendations_respect_access(app, client, make_user, login):
    make_user("alice")
    make_user("bob")
    shown = add(app, "高数讲义")
    also = add(app, "高数习题")
    secret = add(app, "成绩单", access="user:bob")
    for user in ("alice", "bob"):
        login(user)
        for file_id in (shown, also, secret):
            client.get(f"/files/{file_id}/download").close()
    recorder(app).flush()
    login("alice")
    page = client.get(f"/files/{shown}").get_data(as_text=True)
    assert "高数习题" in page and "成绩单" not in page


def test_purge_keeps_rollups(app, runner):
    with app.app_context(), db.engine.begin() as conn:
        simulate(conn, settings(app), events=1000, days=20, users=20, files=5,
                 storage=get_storage())
    with app.app_context(), db.engine.connect() as conn:
        before, _ = stored_rollups(conn)
    result = runner.invoke(args=["analytics", "purge", "--days", "7"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        oldest = db.session.scalar(select(func.min(DownloadEvent.started_at)))
        assert oldest >= datetime.now(UTC) - timedelta(days=7, minutes=1)
    with app.app_context(), db.engine.connect() as conn:
        assert stored_rollups(conn)[0] == before


def test_cli_flush_and_simulate(app, runner, client):
    file_id = add(app)
    client.get(f"/files/{file_id}/download").close()
    result = runner.invoke(args=["analytics", "flush"])
    assert result.exit_code == 0 and "flushed 1 event" in result.output
    result = runner.invoke(args=["analytics", "simulate", "--events", "500", "--days", "3",
                                 "--users", "10", "--files", "3"])
    assert result.exit_code == 0, result.output
    assert "events=" in result.output


def test_redis_client_errors_never_break_a_download(app, client, monkeypatch):
    file_id = add(app)

    def broken(*args, **kwargs):
        raise redis.ConnectionError("down")

    monkeypatch.setattr(redis.client.Pipeline, "execute", broken)
    resp = client.get(f"/files/{file_id}/download")
    assert resp.data == BODY
    resp.close()
    assert count(app, DownloadEvent) == 1


def test_unique_users_and_file_detail_equal_brute_force(app):
    """Distinct users from first/last days (and probes) equal count(DISTINCT) over the
    user-days, for periods that end today and periods that end earlier; the file detail
    equals counting the logical downloads one by one."""
    from portal.analytics import queries
    from portal.analytics.models import ALL_FILES, UserDay
    from portal.models import FileVersion, Group, user_groups

    tz = settings(app).tz
    with app.app_context(), db.engine.begin() as conn:
        simulate(conn, settings(app), events=3000, days=40, users=50, files=6,
                 storage=get_storage(), seed=3)
    with app.app_context(), db.engine.connect() as conn:
        days = conn.execute(select(UserDay.day, UserDay.file_id, UserDay.user_key,
                                   UserDay.user_id)).all()
        members = {(uid, name) for uid, name in conn.execute(
            select(user_groups.c.user_id, Group.name)
            .join(Group, Group.id == user_groups.c.group_id))}
        file_ids = sorted({f for _, f, _, _ in days} - {ALL_FILES})[:3]
        group = sorted(name for _, name in members)[0]
        checked = 0
        for length in (1, 3, 7, 20, 40, 90):
            current = queries.Period.last_days(length, tz)
            for period in (current, current.previous(), current.previous().previous()):
                for fid in (ALL_FILES, *file_ids):
                    for grp in ("", group):
                        want = len({k for d, f, k, u in days
                                    if f == fid and period.start <= d < period.end
                                    and (not grp or (u, grp) in members)})
                        got = queries.unique_users(conn, period, file_id=fid, grp=grp)
                        assert got == want, (length, period, fid, grp)
                        checked += want
        assert checked > 0
        ld = conn.execute(select(LogicalDownload.__table__)).all()
        numbers = dict(conn.execute(select(FileVersion.id, FileVersion.number)).all())
        for fid in file_ids:
            period = queries.Period.last_days(30, tz)
            detail = queries.file_detail(conn, fid, period, tz)
            mine = [r for r in ld if r.file_id == fid and r.counted
                    and period.start <= r.counted_at < period.end]
            hist = [0] * 10
            for r in mine:
                hist[9 if r.completion >= 1 else int(r.completion * 10)] += 1
            assert detail["completion_histogram"]["values"] == hist
            assert sum(v["downloads"] for v in detail["versions"]) == len(mine)
            assert {v["version"] for v in detail["versions"]} == {
                numbers[r.version_id] for r in mine}


def _late_copies(app, tz, now):
    """Event rows copied from stored ones, moved to other days: a person's new day today (the
    appending path), a day inside someone's span and one before their first day (late
    events: the re-derive path), and a day in a long break (splits a gap)."""
    import uuid

    from portal.analytics.models import FileUser

    with app.app_context(), db.engine.connect() as conn:
        spans = conn.execute(select(FileUser.__table__).where(FileUser.file_id != 0)
                             .order_by(FileUser.last_day, FileUser.user_key)).all()
        originals = {(r.user_id, r.file_id): dict(r._mapping) for r in conn.execute(
            select(DownloadEvent.__table__).where(DownloadEvent.status == 200,
                                                  DownloadEvent.bytes_sent > 0))}
    spans = [s for s in spans if (s.user_id, s.file_id) in originals]
    moves = [(spans[0], now - timedelta(hours=1)),  # an old last day: a new day today
             (spans[-1], spans[-1].first_day - timedelta(days=3, hours=-12)),
             (spans[-2], spans[-2].first_day + (spans[-2].last_day - spans[-2].first_day) / 2
              + timedelta(hours=12)),
             (spans[len(spans) // 2], now - timedelta(days=25, hours=-12))]
    rows = []
    for span, moment in moves:
        row = dict(originals[(span.user_id, span.file_id)])
        row.pop("id", None)
        rows.append({**row, "event_key": uuid.uuid4().hex, "started_at": moment,
                     "ended_at": moment + timedelta(seconds=1)})
    return rows


def test_distinct_users_fast_path_equals_raw_recomputation(app):
    """Distinct users from first/last days and gaps equal the people counted afresh from the
    raw events (logical downloads recomputed by the same rules), for periods that end today
    and earlier, every file and all files, everyone and one group: after a bulk simulation,
    after late and out-of-order events through the flusher's write path, after a rebuild."""
    from portal.analytics import queries
    from portal.analytics.models import ALL_FILES
    from portal.models import Group, user_groups

    tz = settings(app).tz
    now = datetime.now(UTC)
    with app.app_context(), db.engine.begin() as conn:
        simulate(conn, settings(app), events=4000, days=60, users=40, files=5,
                 storage=get_storage(), seed=11, now=now)

    def check():
        with app.app_context(), db.engine.connect() as conn:
            _, _, sessions = materialise.recompute(conn, settings(app))
            members = {(uid, name) for uid, name in conn.execute(
                select(user_groups.c.user_id, Group.name)
                .join(Group, Group.id == user_groups.c.group_id))}
            active = {(materialise.day_bucket(s.counted_at, tz), fid, s.key, s.user_id)
                      for s in sessions if s.counted for fid in (s.file_id, ALL_FILES)}
            file_ids = sorted({f for _, f, _, _ in active})
            group = sorted(name for _, name in members)[0]
            compared = past_with_gaps = 0
            for length in (1, 2, 7, 13, 30, 45, 60):
                period = queries.Period.last_days(length, tz, now)
                for _ in range(4):
                    for fid in file_ids:
                        for grp in ("", group):
                            want = len({k for d, f, k, u in active if f == fid
                                        and period.start <= d < period.end
                                        and (not grp or (u, grp) in members)})
                            got = queries.unique_users(conn, period, file_id=fid, grp=grp)
                            assert got == want, (length, period, fid, grp)
                            compared += 1
                            past_with_gaps += bool(want) and period.end < now
                    period = period.previous()
            assert compared > 200 and past_with_gaps > 50
            for grp in ("", group):  # top files: the same people, downloads from sessions
                period = queries.Period.last_days(30, tz, now)
                mine = [s for s in sessions if s.counted
                        and period.start <= s.counted_at < period.end
                        and (not grp or (s.user_id, grp) in members)]
                top = queries.top_files(conn, period, grp=grp, limit=100)
                assert {t["file_id"]: (t["downloads"], t["unique_users"]) for t in top} == {
                    fid: (sum(s.file_id == fid for s in mine),
                          len({s.key for s in mine if s.file_id == fid}))
                    for fid in {t["file_id"] for t in top} | {s.file_id for s in mine}}
            gaps, derived = stored_gaps(conn)
            assert gaps == derived and len(gaps) > 20

    check()
    rows = _late_copies(app, tz, now)
    with app.app_context(), db.engine.begin() as conn:
        assert materialise.store(conn, rows, settings(app)) == len(rows)
    assert_rollups_match_raw(app)
    check()
    with app.app_context(), db.engine.begin() as conn:
        # small steps: downloads are written as they close, counters added step by step
        materialise.rebuild(conn, settings(app), batch=50)
    assert_rollups_match_raw(app)
    with app.app_context(), db.engine.connect() as conn:
        _, _, sessions = materialise.recompute(conn, settings(app))
        stored = conn.execute(select(func.count()).select_from(LogicalDownload)).scalar()
    assert stored == len(sessions)
    check()


@pytest.mark.parametrize("counted, late", [
    ("10:10", "09:50"),  # the download counts an hour earlier, the same day
    ("00:10", "23:50"),  # and on the day before: its old day has no download left
], ids=["hour", "day"])
def test_a_late_event_moves_where_its_download_counts(app, make_user, counted, late):
    """A download counted at one moment, then an event of the same download from before it
    arrives (a journal replayed after an outage, nginx's log read late). Grouped afresh in
    time order the download counts at the late event's start, so the stored downloads and
    completions per hour and day, user-days, first and last days, gaps and file-detail
    cells move there and equal a recomputation from the raw events."""
    from portal.analytics.models import ALL_FILES, UserDay

    file_id = add(app)
    user_id = make_user("late-reader")
    tz = settings(app).tz
    with app.app_context():
        version_id = db.session.get(File, file_id).versions[-1].id
    day = datetime.now(tz).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(
        days=5)
    at = day.replace(hour=int(counted[:2]), minute=int(counted[3:]))
    before = day.replace(hour=int(late[:2]), minute=int(late[3:]))
    if before > at:
        before -= timedelta(days=1)

    def row(start, status, ranges, sent):
        return {"event_key": uuid.uuid4().hex, "file_id": file_id, "version_id": version_id,
                "user_id": user_id, "via_link": False, "method": "GET", "status": status,
                "range_header": f"bytes={ranges}" if status == 206 else "",
                "served_ranges": ranges, "size": len(BODY), "bytes_sent": sent,
                "client_ip": "10.0.0.7", "user_agent": "aria2/1.37.0", "ua_class": "aria2",
                "referrer": "", "served_from": "origin", "link_id": None,
                "started_at": start.astimezone(UTC),
                "ended_at": (start + timedelta(seconds=30)).astimezone(UTC)}

    batches = [[row(at - timedelta(days=3), 200, f"0-{len(BODY) - 1}", len(BODY))],
               [row(at, 200, f"0-{len(BODY) - 1}", len(BODY))],  # counts, and completes
               [row(before, 206, "0-1023", 1024)]]  # late: starts 20 minutes before
    for rows in batches:
        with app.app_context(), db.engine.begin() as conn:
            assert materialise.store(conn, rows, settings(app)) == 1
    assert_rollups_match_raw(app)
    with app.app_context(), db.engine.connect() as conn:
        u = UserDay.__table__
        days = {(fid, d.astimezone(tz).date()) for fid, d in conn.execute(
            select(u.c.file_id, u.c.day).where(u.c.user_id == user_id))}
    local = {before.date(), (at - timedelta(days=3)).date()}
    assert days == {(fid, d) for fid in (file_id, ALL_FILES) for d in local}


def test_journal_rotates_keeping_only_open_starts(app, client, monkeypatch):
    monkeypatch.setattr(recorder_module, "JOURNAL_ROTATE_BYTES", 2000)
    file_id = add(app)
    rec = recorder(app)
    held = client.get(f"/files/{file_id}/download")  # stays open across the rotations
    first = rec._journal.path
    for _ in range(6):
        client.get(f"/files/{file_id}/download").close()
    assert rec._journal.path != first and not first.exists()
    assert [p.name for p in rec.journal_dir().iterdir()] == [rec._journal.path.name]
    from portal.analytics.journal import parse

    [(key, record)] = parse(rec._journal.path.read_text()).items()
    assert json.loads(record)["event_key"] == key and rec.open_responses() == 1
    held.close()
    assert rec.flush() == 7 and rec.open_responses() == 0


def test_xaccel_events_wait_for_nginx_log_lines(config, tmp_path):
    """x-accel: the portal holds its events back until nginx's log says what it sent
    (portal/analytics/nginxlog.py); one whose line never comes counts its planned bytes."""
    from portal import create_app

    log = tmp_path / "portal_events.log"
    app = create_app({**config, "SENDFILE": "x-accel", "ANALYTICS_NGINX_LOG": str(log),
                      "ANALYTICS_NGINX_WAIT_SECONDS": 3600})
    with app.app_context():
        db.create_all()
    rec = recorder(app)
    try:
        file_id = add(app)
        client = app.test_client()
        keys = []
        for _ in range(2):
            resp = client.get(f"/files/{file_id}/download")
            assert resp.status_code == 200 and resp.data == b""
            keys.append(resp.headers["X-Portal-Event"])
        assert rec.flush() == 0  # both wait for nginx
        log.write_text(json.dumps({"event": keys[0], "status": 200, "bytes": 1234,
                                   "time": "2026-11-29T10:00:00+00:00"}) + "\n")
        assert rec.flush() == 1
        [row] = events(app)
        assert (row.event_key, row.bytes_sent, row.served_from) == (keys[0], 1234, "nginx")
        assert row.ended_at is not None
        app.config["ANALYTICS_NGINX_WAIT_SECONDS"] = 0  # the second line never comes
        assert rec.flush() == 1
        assert [(e.event_key, e.bytes_sent) for e in events(app)] == [
            (keys[0], 1234), (keys[1], -1)]
        r = app.extensions["portal_redis"]
        assert not r.exists(rec.keys().nginx_waiting, rec.keys().nginx_sent)
        assert_rollups_match_raw(app)
    finally:
        rec.close_journal()
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


def grant_line(file_id: int, version_id: int, request_id: str, status: int = 200) -> str:
    return json.dumps({"grant": f"- {file_id} {version_id} {len(BODY)}", "id": request_id,
                       "status": status, "bytes": len(BODY), "seconds": "0.002",
                       "time": "2026-11-30T02:00:00+00:00", "range": "", "ip": "10.0.0.9",
                       "ua": "Wget/1.21", "referer": ""}) + "\n"


def test_granted_downloads_are_recorded_once_by_whoever_reads_the_log(make_app, tmp_path):
    """A download nginx sent on a grant is known only from nginx's log; with
    ANALYTICS_NGINX_IMPORT=external the web workers leave the log to `analytics flush`."""
    log = tmp_path / "portal_events.log"
    app = make_app(SENDFILE="x-accel", ANALYTICS_NGINX_LOG=str(log),
                   ANALYTICS_NGINX_IMPORT="external")
    file_id = add(app)
    with app.app_context():
        version_id = db.session.get(File, file_id).latest.id
    log.write_text(grant_line(file_id, version_id, "a" * 32)
                   + grant_line(file_id, version_id, "b" * 32, status=404))  # not a download
    rec = recorder(app)
    assert rec.flush() == 0  # the workers' flusher leaves it to the importer
    result = app.test_cli_runner().invoke(args=["analytics", "flush"])
    assert result.exit_code == 0 and "flushed 1 event" in result.output
    [row] = events(app)
    assert (row.event_key, row.user_id, row.served_from, row.bytes_sent, row.ua_class) == (
        "a" * 32, None, "nginx", len(BODY), "cli")  # Wget
    # read again from the start (lost offsets): still one event, the key is nginx's id
    app.extensions["portal_redis"].flushdb()
    assert rec.flush(nginx=True) == 0 and len(events(app)) == 1
    assert_rollups_match_raw(app)


def test_a_reader_behind_keeps_waiting_and_a_paced_one_pauses(make_app, tmp_path,
                                                               monkeypatch):
    """A waiting event is not given up while the reader is behind (its line may be in what
    is still unread); while the CPUs are busy the workers' paced import pauses
    (1 / share - 1) times each step's work (share 0.25: three times); the CLI's import does
    not pause (tests/unit/test_pacing.py: nor the paced one while a CPU is idle)."""
    log = tmp_path / "portal_events.log"
    app = make_app(SENDFILE="x-accel", ANALYTICS_NGINX_LOG=str(log),
                   ANALYTICS_NGINX_WAIT_SECONDS=0, ANALYTICS_NGINX_IMPORT_SHARE=0.25)
    file_id = add(app)
    with app.app_context():
        version_id = db.session.get(File, file_id).latest.id
    resp = app.test_client().get(f"/files/{file_id}/download")
    key = resp.headers["X-Portal-Event"]
    filler = "".join(grant_line(file_id, version_id, uuid.uuid4().hex) for _ in range(4500))
    log.write_text(filler + json.dumps({"event": key, "status": 200, "bytes": 7,
                                        "time": "2026-11-30T02:00:01+00:00"}) + "\n")
    assert len(filler) > 3 * nginxlog.READ_LIMIT  # four steps at least

    busy = tmp_path / "stat"  # CPU counters that do not move: no idle time seen, busy
    busy.write_text("cpu  100 0 100 0 0 0 0 0 0 0\n")
    monkeypatch.setattr(pacing, "PROC_STAT", str(busy))
    pauses = []  # (when asked, how long), in this thread: the flush's
    real_sleep, this_thread = time.sleep, threading.get_ident()

    def sleep(seconds):
        # time.sleep is everyone's: other threads sleep for real and are not the import's
        # pauses (py4j's finalizer thread, left by the warehouse module's Spark, sleeps
        # 1 s in a loop).
        if threading.get_ident() != this_thread:
            return real_sleep(seconds)
        pauses.append((time.monotonic(), seconds))
        return None

    monkeypatch.setattr(recorder_module.time, "sleep", sleep)
    monkeypatch.setattr(recorder_module, "NGINX_STEPS", 1)
    rec = recorder(app)
    assert rec.flush(nginx=True, paced=True) > 0  # one step, behind: the event waits
    assert key not in {e.event_key for e in events(app)}
    assert rec.nginx_behind  # the background flusher goes on without its interval
    monkeypatch.setattr(recorder_module, "NGINX_STEPS", 64)
    monkeypatch.setattr(pacing, "MAX_PAUSE", 3600.0)  # a slow machine's steps: uncapped
    pauses.clear()
    rec.flush(nginx=True, paced=True)
    assert len(pauses) >= 2  # four steps at least, one of them done above
    # Each pause is 3x the step before it. Sleep does not sleep, so from one pause to the
    # next is one step; the first interval is left out, as it also holds the flush's own
    # work before the import (a slow commit there is not a step).
    for (last, _), (when, pause) in itertools.pairwise(pauses):
        assert 2.5 * (when - last) <= pause <= 3.0 * (when - last)
    assert [e.bytes_sent for e in events(app) if e.event_key == key] == [7]  # its real bytes
    assert len(events(app)) == 4501 and not rec.nginx_behind


    # the CLI's import (external, or a one-off flush) works flat out: yields only
    app.extensions["portal_redis"].flushdb()  # forget the offset: read it all again
    pauses.clear()
    rec.flush(nginx=True)
    assert pauses and all(pause == 0 for _, pause in pauses)


def test_the_import_share_is_checked(config):
    from portal import create_app
    from portal.config import ConfigError

    for bad in (0, 1.5, "lots"):
        with pytest.raises(ConfigError, match="IMPORT_SHARE"):
            create_app({**config, "ANALYTICS_NGINX_IMPORT_SHARE": bad})
