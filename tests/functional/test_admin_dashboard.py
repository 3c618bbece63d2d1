"""The admin overview (issue 18): today's downloads, the downloads active now, the week's top
files as a chart and the health of the parts, of the files the reader may read only
(CONTRACT: "in analytics too: staff see only what they may read")."""

from __future__ import annotations

import io
import json
import re
from datetime import timedelta

import pytest
from sqlalchemy import select

from portal.analytics.models import LogicalDownload
from portal.analytics.recorder import recorder
from portal.extensions import db
from portal.files import add_version
from portal.models import User
from portal.storage import get_storage
from tests.helpers import csrf_from

pytestmark = pytest.mark.databases  # the overview's counts by day are SQL

OPEN = b"o" * 40000
SECRET = b"s" * 30000


def _add(app, title: str, body: bytes, access: str, owner: str | None = None) -> int:
    with app.app_context():
        who = db.session.scalar(select(User).where(User.username == owner)) if owner else None
        version = add_version(db.session, get_storage(), io.BytesIO(body),
                              filename=f"{title}.pdf", title=title, category="课件",
                              access=access, owner=who)
        db.session.commit()
        return version.file_id


def _tiles(html: str) -> dict[str, str]:
    return dict(re.findall(r'<(?:strong|span) data-key="(\w+)">([^<]*)<', html))


def _top(html: str) -> list[dict]:
    found = re.search(r'<script type="application/json" id="top-data">(.*?)</script>', html,
                      re.S)
    return json.loads(found.group(1)) if found else []


@pytest.fixture
def world(app, client, make_user, login):
    """``someone`` downloads the timetable whole and half of their transcript (which the
    teacher may not read): two downloads today, one still active."""
    make_user("someone")
    make_user("registrar", role="staff")
    make_user("teacher", role="staff")
    make_user("boss", role="admin")
    open_id = _add(app, "课程表", OPEN, "login")
    secret_id = _add(app, "成绩单 someone", SECRET, "user:someone", owner="registrar")
    login("someone")
    client.get(f"/files/{open_id}/download").close()
    half = client.get(f"/files/{secret_id}/download", headers={"Range": "bytes=0-14999"})
    assert half.status_code == 206
    half.close()
    recorder(app).flush()
    return open_id, secret_id


def test_admins_see_today_now_top_and_health(world, client, login):
    open_id, secret_id = world
    login("boss")
    html = client.get("/admin/").get_data(as_text=True)
    tiles = _tiles(html)
    assert tiles["downloads"] == "2" and tiles["unique_users"] == "1"
    assert tiles["active"] == "1"  # the half transcript, not the whole timetable
    assert {row["file_id"] for row in _top(html)} == {open_id, secret_id}
    assert 'id="top-chart"' in html
    assert html.count("✓ 正常") == 3  # database, Redis, storage (Chinese by default)


def test_staff_see_only_the_files_they_may_read(world, client, login):
    open_id, _secret = world
    login("teacher")
    html = client.get("/admin/").get_data(as_text=True)
    tiles = _tiles(html)
    assert tiles["downloads"] == "1" and tiles["active"] == "0"
    assert [row["file_id"] for row in _top(html)] == [open_id]
    assert "成绩单" not in html
    assert "以下数字只统计你有权查看的文件" in html


def test_a_response_being_sent_is_downloading_now(world, app, client, login):
    """A body handed to the server and not yet closed is in this worker's journal: it is
    being sent now, for those who may read its file; closed, it is not."""
    _open_id, secret_id = world
    login("someone")
    sending = client.get(f"/files/{secret_id}/download")  # not closed: still being sent
    assert sending.status_code == 200
    try:
        login("boss")
        assert _tiles(client.get("/admin/").get_data(as_text=True))["now"] == "1"
        login("teacher")  # the transcript is not theirs to see, nor its download
        assert _tiles(client.get("/admin/").get_data(as_text=True))["now"] == "0"
    finally:
        sending.close()
    login("boss")
    assert _tiles(client.get("/admin/").get_data(as_text=True))["now"] == "0"


def test_downloading_now_adds_up_every_node(world, app, client, login, make_app, tmp_path):
    """Two nodes on one database and Redis, each with its own journals: a response being sent
    by node B shows on node A's overview once B's flusher has published it, with the number
    of servers; its summary expires, and once B publishes that it ended, it is gone."""
    from portal.analytics import sending

    _open_id, secret_id = world
    node_b = make_app(ANALYTICS_JOURNAL_DIR=str(tmp_path / "node-b"))
    browser_b = node_b.test_client()
    token = csrf_from(browser_b.get("/login").get_data(as_text=True))
    assert browser_b.post("/login", data={"username": "someone", "password": "password123",
                                          "csrf_token": token}).status_code == 302
    body = browser_b.get(f"/files/{secret_id}/download")  # not closed: being sent by B
    assert body.status_code == 200
    rec_b = recorder(node_b)
    try:
        login("boss")
        html = client.get("/admin/").get_data(as_text=True)
        assert _tiles(html)["now"] == "0"  # B has not published yet
        rec_b.flush()  # (B's flusher publishes as it flushes)
        html = client.get("/admin/").get_data(as_text=True)
        assert _tiles(html)["now"] == "1" and 'data-servers="2"' in html
        assert "人数 1 · 服务器 2 台" in html
        with node_b.app_context():
            key = rec_b.keys().sending(sending.node_of(rec_b.journal_dir()))
        assert 0 < rec_b.redis().ttl(key) <= sending.EXPIRE_SECONDS
        login("teacher")  # B's download is of a file the teacher may not read
        assert _tiles(client.get("/admin/").get_data(as_text=True))["now"] == "0"
    finally:
        body.close()
    with node_b.app_context():
        sending.publish(rec_b.redis(), rec_b.keys(), rec_b.journal_dir())
    login("boss")
    assert _tiles(client.get("/admin/").get_data(as_text=True))["now"] == "0"


def test_an_old_download_is_not_active(app, world, client, login):
    with app.app_context():
        for row in db.session.scalars(select(LogicalDownload)):
            row.last_at -= timedelta(minutes=6)
        db.session.commit()
    login("boss")
    assert _tiles(client.get("/admin/").get_data(as_text=True))["active"] == "0"


def test_in_english(world, client, login):
    login("boss")
    html = client.get("/admin/", headers={"Accept-Language": "en"}).get_data(as_text=True)
    assert "Downloads today" in html and "✓ OK" in html and "(Administrator)" in html


def test_redis_down_is_shown_not_a_500(make_app, make_user):
    """A real Redis that is not there (a closed port), not a stand-in: the overview still
    answers, and says what is down and what that means."""
    make_user("boss", role="admin")
    app = make_app(REDIS_URL="redis://127.0.0.1:1/0")
    client = app.test_client()
    token = csrf_from(client.get("/login").get_data(as_text=True))
    assert client.post("/login", data={"username": "boss", "password": "password123",
                                       "csrf_token": token}).status_code == 302
    resp = client.get("/admin/")
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200
    assert "✗ 不可用" in html and "下载仍可进行" in html
    assert "其他服务器暂时无法读取" in html  # "downloading now" counts this node only
    assert html.count("✓ 正常") == 2  # the database and the storage


@pytest.mark.parametrize("who", ["boss", "teacher"])
def test_a_few_queries_whatever_the_data(world, app, client, login, who):
    """The overview reads rollups and one count, never per file or per event: the number of
    statements does not grow with the files or downloads (a budget, not a timing)."""
    from sqlalchemy import event

    login(who)
    statements: list[str] = []
    with app.app_context():
        engine = db.engine
    listener = lambda *args: statements.append(args[2])  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    try:
        client.get("/admin/")
        first = len(statements)
        for i in range(5):
            _add(app, f"讲义 {i}", b"x" * (100 + i), "login")
        statements.clear()
        client.get("/admin/")
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    assert len(statements) == first, statements
    # 11 for an admin, 17 for staff (the hidden files' sums) when this was written, with
    # the session's and the user's own
    assert len(statements) <= 20, statements
