"""Analytics for staff show only what they may read (CONTRACT: "in analytics too"); admins
see everything.

The world: a course timetable any signed-in user reads, a transcript (``user:someone``,
owned by the registrar) and a CS handout (``group:CS``). ``someone`` downloads the timetable
and the transcript, ``cs1`` the handout only. The teacher (staff, group EE) may read the
timetable only, so for them the transcript and the handout do not exist: 404 like a missing
file, absent from lists and CSVs, and left out of every total (else subtracting would tell).
"""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from markupsafe import escape
from sqlalchemy import select

from portal.access import can_read, readable_clause
from portal.analytics import materialise, queries
from portal.analytics.models import ALL_FILES, Rollup, UserDay
from portal.analytics.recorder import recorder
from portal.analytics.simulate import simulate
from portal.extensions import db
from portal.files import add_version
from portal.models import File, Group, User, user_groups, utcnow
from portal.storage import get_storage
from tests.helpers import wait_for

pytestmark = pytest.mark.databases  # what staff may read is filtered in SQL

OPEN_BODY = b"t" * 65536
SECRET_BODY = b"s" * 32768
GROUP_BODY = b"g" * 16384
MISSING = 999999

PER_FILE = ("/admin/analytics/files/{}", "/api/analytics/files/{}?days=7",
            "/api/analytics/files/{}?days=7&format=csv", "/api/analytics/files/{}/detail?days=7",
            "/api/analytics/files/{}/detail?days=7&format=csv&part=clients",
            "/api/analytics/series?days=7&file={}",
            "/api/analytics/series?days=7&step=hour&file={}&format=csv")


def add_file(app, title, body, *, access, category, owner=None) -> int:
    with app.app_context():
        owner_user = db.session.scalar(select(User).where(User.username == owner)) if owner \
            else None
        version = add_version(db.session, get_storage(), io.BytesIO(body),
                              filename=f"{title}.pdf", title=title, category=category,
                              access=access, owner=owner_user)
        db.session.commit()
        return version.file_id


def body_without(resp, url: str) -> str:
    """The response body with the requested path (which the page's language form echoes)
    and the CSRF token's value (signed with the second it was made in, so two pages a
    second apart differ there) taken out, to compare a hidden file's answer with a missing
    one's."""
    body = resp.get_data(as_text=True).replace(str(escape(url)), "").replace(url, "")
    return re.sub(r'(name="csrf[-_]token" (?:value|content)=")[^"]*', r"\1", body)


def download(client, file_id, body):
    resp = client.get(f"/files/{file_id}/download")
    assert resp.status_code == 200 and resp.data == body
    resp.close()


@pytest.fixture
def world(app, client, make_user, login):
    make_user("someone")
    make_user("cs1", groups=["CS"])
    make_user("teacher", role="staff", groups=["EE"])
    make_user("cs_teacher", role="staff", groups=["CS"])
    make_user("registrar", role="staff")
    make_user("boss", role="admin")
    w = SimpleNamespace(
        open=add_file(app, "课程表", OPEN_BODY, access="login", category="课件"),
        secret=add_file(app, "成绩单 someone", SECRET_BODY, access="user:someone",
                        category="成绩单", owner="registrar"),
        grp=add_file(app, "CS 讲义", GROUP_BODY, access="group:CS", category="课件"))
    login("someone")
    download(client, w.open, OPEN_BODY)
    download(client, w.secret, SECRET_BODY)
    login("cs1")
    download(client, w.grp, GROUP_BODY)
    flush_all(app, 3)
    return w


def flush_all(app, count: int) -> None:
    """Flush until ``count`` new events are in SQL: an event that Redis did not take at
    once (a busy or briefly unreachable Redis) is held and shipped by a later flush."""
    written = [0]

    def flushed() -> bool:
        written[0] += recorder(app).flush()
        return written[0] >= count

    wait_for(flushed, timeout=60, what=f"{count} download events in SQL", interval=0.2)
    assert written[0] == count


def test_staff_get_404_for_files_they_may_not_read_like_a_missing_file(world, client,
                                                                        login):
    login("teacher")
    for template in PER_FILE:
        missing = client.get(template.format(MISSING))
        assert missing.status_code == 404, template
        for hidden in (world.secret, world.grp):
            resp = client.get(template.format(hidden))
            assert resp.status_code == 404, (template, hidden)
            assert resp.mimetype == missing.mimetype
            assert (body_without(resp, template.format(hidden))
                    == body_without(missing, template.format(MISSING))), template
        assert client.get(template.format(world.open)).status_code == 200, template
    stats = client.get(f"/api/analytics/files/{world.open}?days=7").json
    assert stats["downloads"] == 1 and stats["bytes_served"] == len(OPEN_BODY)
    login("boss")  # admins see every file
    for template in PER_FILE:
        for file_id in (world.secret, world.grp):
            assert client.get(template.format(file_id)).status_code == 200, template
    assert client.get(f"/api/analytics/files/{world.secret}?days=7").json["downloads"] == 1


def test_staff_lists_and_csv_show_only_what_they_may_read(world, client, login):
    login("teacher")
    top = client.get("/api/analytics/top-files?days=7").json
    assert [row["file_id"] for row in top] == [world.open]
    assert top[0]["downloads"] == 1 and top[0]["unique_users"] == 1
    csv = client.get("/api/analytics/top-files?days=7&format=csv").get_data(as_text=True)
    assert "课程表" in csv and "成绩单" not in csv and "CS 讲义" not in csv
    assert client.get("/api/analytics/top-files?days=7&category=成绩单").json == []
    assert client.get("/api/analytics/top-files?days=7&group=CS").json == []
    for page in ("/admin/analytics/", "/admin/analytics/time"):
        html = client.get(page).get_data(as_text=True)
        assert "<option>课件</option>" in html
        assert "成绩单" not in html, page  # a category of hidden files only is not named
    login("boss")  # admins see every file
    top = client.get("/api/analytics/top-files?days=7").json
    assert {row["file_id"] for row in top} == {world.open, world.secret, world.grp}
    csv = client.get("/api/analytics/top-files?days=7&format=csv").get_data(as_text=True)
    assert "成绩单 someone" in csv and "CS 讲义" in csv
    assert "<option>成绩单</option>" in client.get("/admin/analytics/").get_data(as_text=True)


def test_staff_totals_leave_out_what_they_may_not_read(world, client, login):
    login("teacher")
    overview = client.get("/api/analytics/overview?days=7").json["current"]
    assert overview["downloads"] == 1 and overview["unique_users"] == 1
    assert overview["bytes_served"] == len(OPEN_BODY) and overview["requests"] == 1
    for step in ("hour", "day", "week"):
        series = client.get(f"/api/analytics/series?days=7&step={step}").json
        assert sum(series["downloads"]) == 1 and sum(series["requests"]) == 1, step
        assert sum(series["bytes_served"]) == len(OPEN_BODY), step
    by_category = client.get("/api/analytics/series?days=7&category=课件").json
    assert sum(by_category["downloads"]) == 1  # the CS handout is in 课件 too
    assert sum(map(sum, client.get("/api/analytics/heatmap?days=7").json["values"])) == 1
    assert sum(client.get("/api/analytics/forecast?weeks=1").json["values"]) == 1
    csv = client.get("/api/analytics/overview?days=7&format=csv").get_data(as_text=True)
    assert f"bytes_served,,{len(OPEN_BODY)}," in csv
    login("boss")  # admins: every file
    overview = client.get("/api/analytics/overview?days=7").json["current"]
    assert overview["downloads"] == 3 and overview["unique_users"] == 2
    assert overview["bytes_served"] == len(OPEN_BODY) + len(SECRET_BODY) + len(GROUP_BODY)
    assert sum(map(sum, client.get("/api/analytics/heatmap?days=7").json["values"])) == 3


@pytest.mark.parametrize(("who", "sees", "downloads", "people"), [
    ("registrar", "secret", 2, 1),  # owns the transcript
    ("cs_teacher", "grp", 2, 2),  # in group CS
])
def test_owners_and_group_members_see_their_files(world, client, login, who, sees,
                                                  downloads, people):
    login(who)
    visible = {world.open, getattr(world, sees)}
    hidden = ({world.secret, world.grp} - visible).pop()
    top = client.get("/api/analytics/top-files?days=7").json
    assert {row["file_id"] for row in top} == visible
    overview = client.get("/api/analytics/overview?days=7").json["current"]
    assert (overview["downloads"], overview["unique_users"]) == (downloads, people)
    for template in PER_FILE:
        assert client.get(template.format(getattr(world, sees))).status_code == 200, template
        assert client.get(template.format(hidden)).status_code == 404, template


def test_deleted_files_are_for_admins_only(app, world, client, login):
    with app.app_context():
        db.session.get(File, world.open).deleted_at = utcnow()
        db.session.commit()
    login("teacher")
    assert client.get("/api/analytics/top-files?days=7").json == []
    assert client.get("/api/analytics/overview?days=7").json["current"]["downloads"] == 0
    assert client.get(f"/admin/analytics/files/{world.open}").status_code == 404
    login("boss")
    assert client.get(f"/admin/analytics/files/{world.open}").status_code == 200
    assert len(client.get("/api/analytics/top-files?days=7").json) == 3


def test_recommendations_rank_only_files_the_viewer_may_read(app, client, make_user, login):
    """Popular co-downloads the viewer may not read take no places: with more of them than
    the query's limit, a readable one is still recommended."""
    make_user("p1", groups=["X"])
    make_user("p2", groups=["X"])
    make_user("viewer")
    shown = add_file(app, "高数讲义", b"a" * 100, access="login", category="课件")
    also = add_file(app, "高数习题", b"b" * 100, access="login", category="课件")
    hidden = [add_file(app, f"X 资料 {n}", b"c" * 100, access="group:X", category="课件")
              for n in range(21)]
    for who in ("p1", "p2"):
        login(who)
        for file_id in (shown, *hidden):
            client.get(f"/files/{file_id}/download").close()
    client.get(f"/files/{also}/download").close()  # p2 only: shared by fewer people
    login("viewer")
    client.get(f"/files/{shown}/download").close()
    flush_all(app, 2 * (1 + len(hidden)) + 2)
    page = client.get(f"/files/{shown}").get_data(as_text=True)
    assert "高数习题" in page and "X 资料" not in page


@pytest.mark.parametrize("sums_by", ["subtracting", "adding"])
def test_scoped_queries_equal_a_brute_force_over_the_readable_files(app, monkeypatch,
                                                                    sums_by):
    """For a staff member who may read some of the files, every total (sums, distinct
    people, series, heatmap, top files) equals recounting the stored per-file rows and
    user-days of exactly the files can_read allows, for periods ending today and earlier,
    everyone and one group; also on a day when nobody downloaded the hidden file (the
    all-files fast path of distinct people). Sums both ways: all files less the hidden
    ones, and the readable ones added up."""
    monkeypatch.setattr(queries.Hidden, "mostly", property(lambda _: sums_by == "adding"))
    settings = materialise.Settings.from_config(app.config)
    tz = settings.tz
    now = datetime(2026, 5, 20, 9, 30, tzinfo=UTC)  # fixed: the same data every run
    with app.app_context(), db.engine.begin() as conn:
        simulate(conn, settings, events=4000, days=30, users=60, files=10, seed=5, now=now,
                 storage=get_storage())
    with app.app_context():
        names = sorted(db.session.scalars(select(Group.name)))
        mine, other = names[0], names[1]
        staff = User(username="t-staff", display_name="t", role="staff")
        staff.groups.append(db.session.scalar(select(Group).where(Group.name == mine)))
        db.session.add(staff)
        sim = db.session.scalars(select(File).order_by(File.id)).all()
        student = db.session.scalar(select(User).where(User.username.like("sim%")))
        for placeholder in sim[6:]:  # (placeholders are for simulated users: open them)
            placeholder.access = "login"
        sim[0].access = f"group:{mine}"
        sim[1].access = f"group:{other}"
        sim[2].access = f"user:{student.username}"
        sim[3].access = f"user:{student.username}"
        sim[3].owner = staff
        sim[4].deleted_at = utcnow()
        sim[5].access = f"group:{other},{mine}"
        db.session.commit()
        readable_ids = {f.id for f in sim if can_read(staff, f)}
        assert readable_ids == {f.id for f in sim} - {sim[1].id, sim[2].id, sim[4].id}
        clause = readable_clause(staff)
        assert queries.scope_of(User(username="a", role="admin")) is None  # no filter
        assert queries.scope_of(staff) is not None
        with db.engine.connect() as conn:
            rollups = conn.execute(select(Rollup.__table__)).all()
            days = conn.execute(select(UserDay.__table__)).all()
            members = {uid for (uid,) in conn.execute(
                select(user_groups.c.user_id).join(Group, Group.id == user_groups.c.group_id)
                .where(Group.name == mine))}
            checked, only_hidden = 0, 0
            for length in (1, 7, 20):
                current = queries.Period.last_days(length, tz, now)
                for period in (current, current.previous(), current.previous().previous()):
                    for grp in ("", mine):
                        got = queries.totals(conn, period, grp=grp, readable=clause)
                        rows = [r for r in rollups if r.grain == "d" and r.grp == grp
                                and r.file_id in readable_ids
                                and period.start <= r.bucket < period.end]
                        for m in queries.MEASURES:
                            assert got[m] == sum(getattr(r, m) for r in rows), (m, period)
                        people = {d.user_key for d in days if d.file_id in readable_ids
                                  and period.start <= d.day < period.end
                                  and (not grp or d.user_id in members)}
                        assert got["unique_users"] == len(people), (length, period, grp)
                        checked += len(people)
                        # People who downloaded hidden files only: all-files people
                        # would count them.
                        only_hidden += len({d.user_key for d in days
                                            if d.file_id not in readable_ids
                                            and d.file_id != ALL_FILES
                                            and period.start <= d.day < period.end
                                            and (not grp or d.user_id in members)} - people)
                        top = queries.top_files(conn, period, grp=grp, limit=100,
                                                readable=clause)
                        assert {t["file_id"] for t in top} <= readable_ids
                        assert sum(t["downloads"] for t in top) == got["downloads"]
            assert checked > 0 and only_hidden > 0
            period = queries.Period.last_days(20, tz, now)
            series = queries.series(conn, period, tz, step="hour", readable=clause)
            hourly = [r for r in rollups if r.grain == "h" and r.grp == ""
                      and r.file_id in readable_ids and period.start <= r.bucket < period.end]
            assert sum(series["requests"]) == sum(r.requests for r in hourly)
            assert sum(series["downloads"]) == sum(r.downloads for r in hourly)
            heat = queries.heatmap(conn, period, tz, readable=clause)
            assert sum(map(sum, heat["values"])) == sum(r.downloads for r in hourly)
            everything = queries.heatmap(conn, period, tz)
            assert sum(map(sum, everything["values"])) > sum(map(sum, heat["values"]))
        # Now only the least downloaded file is hidden, on a day nobody downloaded it.
        for file in sim:
            file.access, file.deleted_at = "login", None
        active: dict[int, set] = {}
        for d in days:
            active.setdefault(d.file_id, set()).add(d.day)
        quiet_file = min((f.id for f in sim), key=lambda f: (len(active.get(f, ())), f))
        quiet_day = min(active[ALL_FILES] - active[quiet_file])
        next(f for f in sim if f.id == quiet_file).access = f"user:{student.username}"
        db.session.commit()
        clause = readable_clause(staff)
        quiet = queries.Period.last_days(1, tz, quiet_day + timedelta(hours=12))
        with db.engine.connect() as conn:
            assert queries.hidden_file_ids(conn, clause) == [quiet_file]
            assert queries.Hidden.over(conn, [quiet_file], quiet.start,
                                       quiet.end).downloads == 0  # the fast path
            want = {d.user_key for d in days if d.file_id not in (quiet_file, ALL_FILES)
                    and quiet.start <= d.day < quiet.end}
            assert want and queries.unique_users(conn, quiet, readable=clause) == len(want)
