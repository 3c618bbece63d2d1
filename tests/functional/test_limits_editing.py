"""Download limits changed by admins on /admin/limits (issue 31, point 5): stored in SQL,
applied by another node within the coherence bound, audited in words, locked by the
environment where it says so, refused with a clear message on bad input, and for admins only.
"""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import select

from portal.download import limit_store
from portal.extensions import db
from portal.models import AuditEntry, DownloadLimitRule, User
from portal.settings import Limit
from tests.helpers import add_file, csrf_from, form_sign_in, signed_in, warm

pytestmark = pytest.mark.databases  # rows, the change log and the audit in one transaction

EDIT = "/admin/limits/edit?who={}"
KiB = 1024


@pytest.fixture
def limited(config):
    config["DOWNLOAD_LIMITS"] = {"student": {"connections": 2}, "anonymous": {"connections": 3}}
    return config


def edit(client, who: str, **fields):
    """POST the edit form of ``who`` with its page's CSRF token (``action="reset"`` gives
    the limit back to the environment)."""
    page = client.get(EDIT.format(who))
    data = {"csrf_token": csrf_from(page.get_data(as_text=True)), "action": "save", **fields}
    return client.post(EDIT.format(who), data=data)


def concurrent(client, url: str) -> int:
    """The status of a second download while a first one is held open."""
    held = client.get(url, buffered=False)
    assert held.status_code == 200
    try:
        second = client.get(url)
        second.close()  # its lease goes with its body
        return second.status_code
    finally:
        held.close()


def rows(app) -> tuple[list[tuple], list[str]]:
    """The admins' limits and the audit log's actions, as SQL holds them."""
    with app.app_context():
        stored = [(r.who, r.connections, r.rate)
                  for r in db.session.scalars(select(DownloadLimitRule))]
        actions = list(db.session.scalars(select(AuditEntry.action).where(
            AuditEntry.action.startswith("limits.")).order_by(AuditEntry.id)))
        return stored, actions


def test_an_admins_change_reaches_another_node_within_the_bound(limited, app, client,
                                                                make_user, login, make_app):
    make_user("boss", role="admin")
    make_user("stu")
    file_id = add_file(app, b"r" * (256 * KiB), access="login")
    url = f"/files/{file_id}/download"
    node_b = make_app()
    student = node_b.test_client()
    assert form_sign_in(student, "stu", "password123").status_code == 302
    assert concurrent(student, url) == 200  # the environment's 2 connections

    login("boss")
    started = time.monotonic()
    answer = edit(client, "student", connections="1", rate="128K")
    took = time.monotonic() - started
    assert answer.status_code == 302 and answer.headers["Location"].endswith("/admin/limits")
    # The answer waits out the bound (commit_everywhere): "saved" is then true everywhere.
    assert took >= app.extensions["portal_settings"].coherence_seconds
    assert concurrent(student, url) == 429  # node B, at once
    started = time.monotonic()
    whole = student.get(url)
    paced = time.monotonic() - started
    whole.close()
    assert whole.status_code == 200 and len(whole.data) == 256 * KiB
    assert paced >= 1.2, paced  # 256 KiB at 128 KiB/s, less the bucket's first burst

    zh = client.get("/admin/limits").get_data(as_text=True)
    assert "已保存：所有服务器现已按此执行。" in zh  # flashed in the language of the POST
    assert "128.0 KB/s" in zh and "boss，" in zh
    en = client.get("/admin/limits", headers={"Accept-Language": "en"}).get_data(as_text=True)
    assert "boss at " in en and "The server’s settings (default)" in en  # anonymous's row

    edit(client, "student", action="reset")
    assert rows(app)[0] == []
    assert concurrent(student, url) == 200  # the environment's 2 again
    assert rows(app)[1] == ["limits.changed", "limits.reset"]


def refused_within_the_bound(app, node_b, student, url: str) -> None:
    """An admin on ``app``'s node sets students to one connection (no view, so no wait for
    the other nodes); ``student`` on ``node_b`` is refused within COHERENCE_SECONDS."""
    bound = node_b.extensions["portal_settings"].coherence_seconds
    with app.app_context():
        boss = User(username="boss", display_name="boss", role="admin")
        db.session.add(boss)
        db.session.flush()
        limit_store.save(db.session, boss, app.extensions["portal_settings"], "student",
                         Limit(1, None), ip="")
        db.session.commit()
    committed = time.monotonic()
    while concurrent(student, url) == 200:
        assert time.monotonic() - committed < bound + 0.3, "not applied within the bound"
        time.sleep(0.02)


def test_a_change_committed_anywhere_is_applied_within_coherence_seconds(limited, app,
                                                                         make_user, make_app):
    """Without the view's wait: a node that trusted its rows a moment ago applies a change
    committed on another node within COHERENCE_SECONDS, Redis or not."""
    make_user("stu")
    file_id = add_file(app, b"c" * (64 * KiB), access="login")
    url = f"/files/{file_id}/download"
    node_b = make_app()
    student = node_b.test_client()
    form_sign_in(student, "stu", "password123")
    assert concurrent(student, url) == 200
    refused_within_the_bound(app, node_b, student, url)


def test_the_fast_path_applies_the_change_too(limited, app, make_user, make_app):
    """The WSGI fast path in front of Flask (its worker copies on) plans and admits by the
    same limits: a change committed elsewhere reaches it within COHERENCE_SECONDS."""
    make_user("stu")
    file_id = add_file(app, b"f" * (64 * KiB), access="login")
    url = f"/files/{file_id}/download"
    node_b = make_app(CACHE_LOCAL_SECONDS=30)
    door = node_b.extensions["portal_fast_door"]
    student = signed_in(node_b, "stu")
    warm(node_b, student, url)
    served = door.served
    assert concurrent(student, url) == 200 and door.served == served + 2  # both fast
    refused_within_the_bound(app, node_b, student, url)
    served = door.served
    held = student.get(url, buffered=False)
    assert held.status_code == 200 and door.served == served + 1  # the fast path's answer
    assert student.get(url).status_code == 429
    held.close()


def test_an_edit_is_audited_in_words(limited, app, client, make_user, login):
    make_user("boss", role="admin")
    login("boss")
    assert edit(client, "student", connections="1", rate="4MB").status_code == 302
    with app.app_context():
        entry = db.session.scalars(select(AuditEntry).where(
            AuditEntry.action == "limits.changed")).one()
        assert entry.actor.username == "boss" and entry.target == "student"
        assert json.loads(entry.detail) == {
            "before": {"connections": 2, "rate": None},
            "after": {"connections": 1, "rate": 4 * 1024**2}}
    zh = client.get("/admin/audit?lang=zh_CN").get_data(as_text=True)
    assert "下载限制已修改" in zh
    assert "学生：同时连接数 2 → 1；速率 不限 → 4.0 MB/s" in zh
    en = client.get("/admin/audit", headers={"Accept-Language": "en"}).get_data(as_text=True)
    assert "Download limit changed" in en
    assert "Student: connections at once 2 → 1; rate unlimited → 4.0 MB/s" in en
    assert '"before"' not in zh + en  # never the stored data itself


@pytest.mark.parametrize("fields", [
    {"connections": "-1"}, {"connections": "abc"}, {"connections": "0"},
    {"connections": "99999999999999999999"}, {"connections": "1.5"},
    {"rate": "-5"}, {"rate": "lots"}, {"rate": "0"}, {"rate": "1e9"},
    {"rate": "999999G"}, {"rate": "9" * 40},
])
def test_bad_input_is_refused_with_a_message_and_changes_nothing(limited, app, client,
                                                                make_user, login, fields):
    make_user("boss", role="admin")
    login("boss")
    answer = edit(client, "student", **{"connections": "1", "rate": "", **fields})
    assert answer.status_code == 400
    text = answer.get_data(as_text=True)
    field = next(iter(fields))
    if field == "connections":
        assert "同时连接数须为 1 至 10000 之间的整数；留空表示不限。" in text
    else:
        assert "速率须为每秒字节数" in text and "最多 100 GB" in text
    assert 'class="field-error"' in text
    assert rows(app) == ([], [])
    english = client.post(EDIT.format("student"), headers={"Accept-Language": "en"}, data={
        "csrf_token": csrf_from(text), "connections": "1", "rate": "", **fields})
    assert english.status_code == 400
    assert ("Connections must be a whole number from 1 to 10000" if field == "connections"
            else "The rate must be bytes per second") in english.get_data(as_text=True)
    assert rows(app) == ([], [])


def test_full_width_digits_and_a_per_second_suffix_are_read(limited, app, client, make_user,
                                                             login):
    make_user("boss", role="admin")
    login("boss")
    assert client.get(EDIT.format("group:lab")).status_code == 404  # no such group yet
    make_user("ann", groups=["lab"])
    assert edit(client, "group:lab", connections="８", rate="４MB/s").status_code == 302
    assert rows(app)[0] == [("group:lab", 8, 4 * 1024**2)]


def test_only_admins_edit(limited, app, client, make_user, login):
    make_user("teacher", role="staff")
    make_user("stu")
    login("teacher")
    page = client.get("/admin/limits", headers={"Accept-Language": "en"})
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert "Only administrators can change the limits." in text
    assert "/admin/limits/edit" not in text
    assert client.get(EDIT.format("student")).status_code == 403
    token = csrf_from(text)
    refused = client.post(EDIT.format("student"), data={"csrf_token": token, "action": "save",
                                                        "connections": "100"})
    assert refused.status_code == 403
    assert client.post(EDIT.format("student"), data={"csrf_token": token,
                                                      "action": "reset"}).status_code == 403
    token = login("stu")
    assert client.post(EDIT.format("student"), data={"csrf_token": token,
                                                      "connections": "100"}).status_code == 404
    assert rows(app) == ([], [])


def test_a_locked_limit_is_shown_with_its_reason_and_refuses_edits(limited, make_app):
    app = make_app(DOWNLOAD_LIMITS_LOCKED={"anonymous": "由网络中心统一设定"})
    client = app.test_client()
    with app.app_context():  # an admin's row from before the lock: the lock wins
        db.session.add(DownloadLimitRule(who="anonymous", connections=50))
        boss = User(username="boss", display_name="boss", role="admin")
        boss.set_password("password123")
        db.session.add(boss)
        db.session.commit()
    form_sign_in(client, "boss", "password123")
    page = client.get("/admin/limits?lang=zh_CN").get_data(as_text=True)
    row = page.split('data-who="anonymous"')[1].split("</tr>")[0]
    assert "已锁定" in row and "由网络中心统一设定" in row and "修改" not in row
    assert "<td>3</td>" in row  # the environment's value, not the row's 50
    shown = client.get(EDIT.format("anonymous"))
    assert shown.status_code == 200 and 'id="limit-form"' not in shown.get_data(as_text=True)
    assert "由网络中心统一设定" in shown.get_data(as_text=True)
    token = csrf_from(page)
    for data in ({"action": "save", "connections": "1"}, {"action": "reset"}):
        refused = client.post(EDIT.format("anonymous"), data={"csrf_token": token, **data})
        assert refused.status_code == 409
        assert "此限制已由服务器配置锁定，不能在此修改" in refused.get_data(as_text=True)
    assert rows(app) == ([("anonymous", 50, None)], [])
    assert dict(limit_store.settings_in_force(app).download_limits)["anonymous"] == Limit(3)

    every = make_app(DOWNLOAD_LIMITS_LOCKED={"*": "limits are set by the deployment"})
    other = every.test_client()
    form_sign_in(other, "boss", "password123")
    page = other.get("/admin/limits", headers={"Accept-Language": "en"}).get_data(as_text=True)
    assert "limits are set by the deployment" in page and 'id="limit-add"' not in page
    assert other.post(EDIT.format("staff"), data={"csrf_token": csrf_from(page),
                                                  "connections": "1"}).status_code == 409
    assert rows(app) == ([("anonymous", 50, None)], [])


def test_an_unreadable_table_keeps_the_last_limits_read(limited, app, monkeypatch):
    """A limit guards no right: while its table cannot be read, the rows last read stay in
    force (no error reaches a download), and the next read after the pause takes the change."""
    def in_force() -> Limit:
        return dict(limit_store.settings_in_force(app).download_limits)["student"]

    with app.app_context():
        db.session.add(DownloadLimitRule(who="student", connections=1))
        db.session.commit()
    assert in_force() == Limit(1)
    with app.app_context():
        db.session.get(DownloadLimitRule, "student").connections = 5
        db.session.commit()

    def unreadable(*_columns):
        raise limit_store.SQLAlchemyError("the database is gone")

    monkeypatch.setattr(limit_store, "select", unreadable)
    assert in_force() == Limit(1)
    monkeypatch.undo()
    assert in_force() == Limit(1)  # not asked again at once
    time.sleep(limit_store.RETRY_SECONDS)
    assert in_force() == Limit(5)
