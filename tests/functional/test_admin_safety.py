"""Groups and users are safe to change: a group in use is not deleted, destructive actions
are confirmed, the user form picks existing groups, the users list searches and pages, and
accounts without a local password show as directory accounts."""

import io

from sqlalchemy import select

from portal.extensions import db
from portal.files import add_version
from portal.models import Group, User
from portal.storage import get_storage

EN = {"Accept-Language": "en"}


def group_id(app, name: str) -> int:
    with app.app_context():
        return db.session.scalar(select(Group.id).where(Group.name == name))


def add_file(app, title: str, access: str, owner: str | None = None) -> int:
    with app.app_context():
        version = add_version(db.session, get_storage(), io.BytesIO(title.encode()),
                              filename=f"{title}.txt", title=title, access=access,
                              owner=db.session.scalar(select(User).where(User.username == owner)))
        db.session.commit()
        return version.file_id


def test_a_group_in_use_is_not_deleted(app, client, make_user, login):
    make_user("root", role="admin")
    make_user("student1", groups=["CS"])
    make_user("student2", groups=["EE"])
    add_file(app, "CS notes", "group:CS")
    add_file(app, "Joint notes", "group:EE,CS")
    add_file(app, "EE notes", "group:EE")
    csrf = login("root")
    cs = group_id(app, "CS")
    page = client.get(f"/admin/groups/{cs}/delete", headers=EN).get_data(as_text=True)
    assert "cannot be deleted yet" in page
    assert "CS notes" in page and "Joint notes" in page and "EE notes" not in page
    assert "student1" in page and "student2" not in page
    refused = client.post(f"/admin/groups/{cs}/delete", data={"csrf_token": csrf,
                                                              "confirm": "y"}, headers=EN)
    assert refused.status_code == 409 and "CS notes" in refused.get_data(as_text=True)
    assert group_id(app, "CS") == cs
    zh = client.get(f"/admin/groups/{cs}/delete").get_data(as_text=True)
    assert "用户组" in zh and "群组" not in zh


def test_an_unused_group_is_deleted_only_when_confirmed(app, client, make_user, login):
    make_user("root", role="admin")
    csrf = login("root")
    assert client.post("/admin/groups", data={"name": "EMPTY", "csrf_token": csrf}
                       ).status_code == 302
    empty = group_id(app, "EMPTY")
    again = client.post("/admin/groups", data={"name": "EMPTY", "csrf_token": csrf})
    assert again.status_code == 400 and "该用户组已存在。" in again.get_data(as_text=True)
    unconfirmed = client.post(f"/admin/groups/{empty}/delete", data={"csrf_token": csrf},
                              headers=EN)
    assert unconfirmed.status_code == 400 and "Tick the box" in unconfirmed.get_data(
        as_text=True)
    assert group_id(app, "EMPTY") == empty
    assert client.post(f"/admin/groups/{empty}/delete",
                       data={"csrf_token": csrf, "confirm": "y"}).status_code == 302
    assert group_id(app, "EMPTY") is None


def test_deleting_a_file_asks_first(app, client, make_user, login):
    make_user("teacher", role="staff")
    file_id = add_file(app, "Mine", "login", owner="teacher")
    csrf = login("teacher")
    asked = client.get(f"/admin/files/{file_id}/delete", headers=EN)
    assert asked.status_code == 200 and "Delete “Mine”?" in asked.get_data(as_text=True)
    assert client.post(f"/admin/files/{file_id}/delete",
                       data={"csrf_token": csrf}).status_code == 400
    assert client.get(f"/files/{file_id}").status_code == 200
    assert client.post(f"/admin/files/{file_id}/delete",
                       data={"csrf_token": csrf, "confirm": "y"}).status_code == 302
    assert client.get(f"/files/{file_id}").status_code == 404


def test_disabling_a_user_asks_first(app, client, make_user, login):
    make_user("root", role="admin")
    amy = make_user("amy")
    csrf = login("root")
    form = {"username": "amy", "display_name": "amy", "role": "student", "groups": "",
            "csrf_token": csrf}
    resp = client.post(f"/admin/users/{amy}", data=form, headers=EN)
    assert resp.status_code == 400 and "Tick the box" in resp.get_data(as_text=True)
    with app.app_context():
        assert db.session.get(User, amy).active is True
    assert client.post(f"/admin/users/{amy}", data={**form, "confirm_disable": "y"}
                       ).status_code == 302
    with app.app_context():
        assert db.session.get(User, amy).active is False


def test_the_user_form_creates_no_group(app, client, make_user, login):
    make_user("root", role="admin")
    amy = make_user("amy", groups=["CS"])
    csrf = login("root")
    resp = client.post(f"/admin/users/{amy}", data={
        "username": "amy", "display_name": "amy", "role": "student", "groups": "CS CSS",
        "active": "y", "csrf_token": csrf}, headers=EN)
    assert resp.status_code == 400
    assert "There is no user group named CSS" in resp.get_data(as_text=True)
    assert group_id(app, "CSS") is None
    new = client.post("/admin/users", data={
        "username": "bob", "role": "student", "groups": "TYPO", "password": "password123",
        "active": "y", "csrf_token": csrf}, headers=EN)
    assert new.status_code == 400 and group_id(app, "TYPO") is None


def test_users_list_searches_pages_and_shows_directory_accounts(app, client, make_user,
                                                                 login):
    make_user("root", role="admin")
    with app.app_context():
        for n in range(60):
            user = User(username=f"s{n:03d}", display_name=f"学生{n:03d}", role="student",
                        auth_source="ldap" if n == 7 else "local")
            if n == 7:
                user.set_unusable_password()
            else:
                user.set_password("password123")
            db.session.add(user)
        db.session.add(User(username="Zhang.Wei", display_name="张伟", role="student"))
        db.session.commit()
    login("root")
    first = client.get("/admin/users", headers=EN).get_data(as_text=True)
    assert "62 users, page 1 of 2" in first and "s055" not in first
    second = client.get("/admin/users?page=2", headers=EN).get_data(as_text=True)
    assert "s055" in second and "s000" not in second
    found = client.get("/admin/users?q=zhang", headers=EN).get_data(as_text=True)
    assert "Zhang.Wei" in found and "s001" not in found
    assert "Zhang.Wei" in client.get("/admin/users?q=张").get_data(as_text=True)
    ldap = client.get("/admin/users?q=s007", headers=EN).get_data(as_text=True)
    assert "directory account · LDAP" in ldap
    assert "目录账号 · LDAP" in client.get("/admin/users?q=s007").get_data(as_text=True)
    assert "directory account" in client.get("/admin/users?q=Zhang", headers=EN).get_data(
        as_text=True)  # no password at all: signs in through the directory only
