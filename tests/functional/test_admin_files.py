"""Staff and admins edit files, change access (audited), delete softly, restore."""

import io

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
        "access": "group:CS", "csrf_token": csrf})
    assert resp.status_code == 302
    with app.app_context():
        file = db.session.get(File, file_id)
        assert (file.title, file.access) == ("实验指导书 v2", "group:CS")
        assert file.description == "第二版"
        entry = db.session.scalars(select(AuditEntry).where(
            AuditEntry.action == "file.access_changed")).one()
        assert entry.detail == "login -> group:CS" and entry.actor.username == "teacher"
    bad = client.post(f"/admin/files/{file_id}", data={
        "title": "x", "category": "c", "access": "everyone", "csrf_token": csrf})
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
                       data={"csrf_token": csrf}).status_code == 302
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
        "title": "A", "category": "课程资料", "access": "login", "csrf_token": csrf})
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
