"""Staff and admins edit files, change access (audited), delete softly, restore."""

import io
import re

from sqlalchemy import select

from portal.access import manageable
from portal.extensions import db
from portal.files import add_version
from portal.models import AuditEntry, File, User
from portal.storage import get_storage


def add(app, owner=None, access="login", title="实验指导书"):
    with app.app_context():
        owner_user = (db.session.scalar(select(User).where(User.username == owner))
                      if owner else None)
        version = add_version(db.session, get_storage(), io.BytesIO(b"pdf"), filename="a.pdf",
                              title=title, category="课程资料", access=access, owner=owner_user)
        db.session.commit()
        return version.file_id


def test_staff_edit_own_file_and_access_change_is_audited(app, client, make_user, login):
    make_user("teacher", role="staff")
    make_user("student1", groups=["CS"])
    file_id = add(app, owner="teacher")
    csrf = login("teacher")
    resp = client.post(f"/admin/files/{file_id}", data={
        "title": "实验指导书 v2", "category": "课程资料", "description": "第二版",
        "access_kind": "group", "access_group": "CS", "csrf_token": csrf})
    assert resp.status_code == 302
    with app.app_context():
        file = db.session.get(File, file_id)
        assert (file.title, file.access) == ("实验指导书 v2", "group:CS")
        assert file.description == "第二版"
        entry = db.session.scalars(select(AuditEntry).where(
            AuditEntry.action == "file.access_changed")).one()
        assert entry.detail == "login -> group:CS" and entry.actor.username == "teacher"
    bad = client.post(f"/admin/files/{file_id}", data={
        "title": "x", "category": "c", "access_kind": "everyone", "csrf_token": csrf})
    assert bad.status_code == 400


def test_staff_cannot_touch_others_files(app, client, make_user, login):
    make_user("teacher", role="staff")
    make_user("other", role="staff")
    file_id = add(app, owner="other")
    csrf = login("teacher")
    assert client.get(f"/admin/files/{file_id}").status_code == 404
    assert client.post(f"/admin/files/{file_id}/delete",
                       data={"csrf_token": csrf}).status_code == 404


def test_soft_delete_and_admin_undo(app, client, make_user, login):
    make_user("teacher", role="staff")
    make_user("root", role="admin")
    make_user("stud")
    file_id = add(app, owner="teacher")
    csrf = login("teacher")
    assert client.post(f"/admin/files/{file_id}/delete",
                       data={"csrf_token": csrf, "confirm": "y"}).status_code == 302
    assert client.post(f"/admin/files/{file_id}/restore",
                       data={"csrf_token": csrf}).status_code == 404  # staff cannot undo
    login("stud")
    assert client.get(f"/files/{file_id}/download").status_code == 404
    csrf = login("root")
    assert "实验指导书" in client.get("/admin/files").get_data(as_text=True)
    assert client.post(f"/admin/files/{file_id}/restore",
                       data={"csrf_token": csrf}).status_code == 302
    login("stud")
    assert client.get(f"/files/{file_id}/download").status_code == 200
    with app.app_context():
        actions = [e.action for e in db.session.scalars(select(AuditEntry).where(
            AuditEntry.action.startswith("file.")))]
    assert actions == ["file.deleted", "file.restored"]


def test_title_clash_is_a_form_error(app, client, make_user, login):
    make_user("root", role="admin")
    add(app, title="A")
    second = add(app, title="B")
    csrf = login("root")
    resp = client.post(f"/admin/files/{second}", data={
        "title": "A", "category": "课程资料", "access_kind": "login", "csrf_token": csrf})
    assert resp.status_code == 400


def test_manageable_is_the_one_rule_for_admin_pages_and_uploads(app, make_user):
    # portal.access.manageable decides for the admin views and the upload service alike.
    make_user("teacher", role="staff")
    make_user("other", role="staff")
    make_user("boss", role="admin")
    owned, ownerless = add(app, owner="teacher"), add(app, title="无主文件")
    with app.app_context():
        users = {u.username: u for u in db.session.scalars(select(User))}
        cases = {(name, file_id): manageable(users[name], db.session.get(File, file_id))
                 for name in users for file_id in (owned, ownerless)}
    assert cases == {("teacher", owned): True, ("teacher", ownerless): False,
                     ("other", owned): False, ("other", ownerless): False,
                     ("boss", owned): True, ("boss", ownerless): True}


def test_the_access_picker_offers_groups_and_people_and_checks_them(app, client, make_user,
                                                                    login):
    """Who may read a file is picked: a kind, then a group or a person offered from those
    that exist; the server checks the choice and says what is wrong in the form."""
    make_user("teacher", role="staff")
    make_user("student1", groups=["CS"])
    make_user("student2", groups=["MATH"])
    file_id = add(app, owner="teacher", access="group:CS,MATH")
    csrf = login("teacher")
    page = client.get(f"/admin/files/{file_id}", headers={"Accept-Language": "en"})
    html = page.get_data(as_text=True)
    assert '<option value="group" selected>' in html
    assert 'name="access_group" id="access-group" list="access-groups" value="CS, MATH"' in html
    groups = re.search(r'<datalist id="access-groups">(.*?)</datalist>', html, re.S).group(1)
    assert 'value="CS"' in groups and 'value="MATH"' in groups
    people = re.search(r'<datalist id="access-users">(.*?)</datalist>', html, re.S).group(1)
    assert 'value="student1"' in people and 'value="teacher"' in people
    base = {"title": "实验指导书", "category": "课程资料", "csrf_token": csrf}

    def post(**fields):
        return client.post(f"/admin/files/{file_id}", data={**base, **fields},
                           headers={"Accept-Language": "en"})

    def rule():
        with app.app_context():
            return db.session.get(File, file_id).access

    assert post(access_kind="group", access_group="MATH").status_code == 302
    assert rule() == "group:MATH"
    assert post(access_kind="user", access_user="student1").status_code == 302
    assert rule() == "user:student1"
    assert post(access_kind="public").status_code == 302
    assert rule() == "public"
    for fields, message in [
            ({}, "Choose who may read it."),
            ({"access_kind": "login", "access_group": "MATH"}, "but also filled in"),
            ({"access_kind": "group", "access_group": "MATH", "access_user": "student1"},
             "but also filled in"),
            ({"access_kind": "group", "access_group": "CS, NOPE"},
             "There is no group named NOPE."),
            ({"access_kind": "group", "access_group": ""}, "Choose a group from the list."),
            ({"access_kind": "group", "access_group": "a%b"}, "Choose a group from the list."),
            ({"access_kind": "user", "access_user": "nobody"}, "There is no user named nobody."),
            ({"access_kind": "user", "access_user": "student1 student2"},
             "Choose a person from the list."),
            ({"access_kind": "group:CS"}, "Not a valid choice")]:
        resp = post(**fields)
        assert resp.status_code == 400, fields
        assert message in resp.get_data(as_text=True), fields
        assert rule() == "public", fields  # nothing saved
    zh = client.post(f"/admin/files/{file_id}", data={
        **base, "access_kind": "group", "access_group": "NOPE"})
    assert "没有名为 NOPE 的用户组。" in zh.get_data(as_text=True)


def test_people_search_for_the_picker(app, client, make_user, login):
    make_user("teacher", role="staff")
    make_user("2023007")
    make_user("zhang_san")
    make_user("gone", active=False)
    login("teacher")
    assert client.get("/admin/people?q=2023").json["people"] == [
        {"username": "2023007", "display_name": "2023007"}]
    assert client.get("/admin/people?q=_s").json["people"][0]["username"] == "zhang_san"
    assert client.get("/admin/people?q=%25").json["people"] == []  # (a wildcard is a letter)
    assert client.get("/admin/people?q=gone").json["people"] == []
    assert client.get("/admin/people").json["people"] == []
    login("2023007")
    assert client.get("/admin/people?q=z").status_code == 404  # students: no such page
