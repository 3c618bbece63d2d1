"""Sign-in hardening: limits, bad input, password changes, audit log, admin pages."""

import pytest
from sqlalchemy import select

from portal import create_app
from portal.extensions import db
from portal.models import AuditEntry, User
from tests.helpers import close_app, csrf_from, free_port


def post_login(client, username, password, **extra):
    token = csrf_from(client.get("/login").get_data(as_text=True))
    return client.post("/login", data={"username": username, "password": password,
                                       "csrf_token": token, **extra})


def test_unknown_user_and_wrong_password_look_the_same(client, make_user, monkeypatch):
    make_user("alice")
    calls = []
    import portal.models as models

    real = models.check_password_hash
    monkeypatch.setattr(models, "check_password_hash",
                        lambda h, p: calls.append(h) or real(h, p))
    wrong = post_login(client, "alice", "wrong-password")
    unknown = post_login(client, "nobody-here", "wrong-password")
    assert wrong.status_code == unknown.status_code == 200
    message = "用户名或密码错误"
    assert message in wrong.get_data(as_text=True) and message in unknown.get_data(as_text=True)
    assert len(calls) == 2  # the unknown user costs a real scrypt check too


@pytest.mark.parametrize("data", [
    {"username": "a" * 65, "password": "password123"},
    {"username": "alice", "password": "p" * 257},
    {"username": "alice"},
    {"password": "password123"},
])
def test_bad_form_input_is_400_with_the_form(client, make_user, data):
    make_user("alice")
    token = csrf_from(client.get("/login").get_data(as_text=True))
    resp = client.post("/login", data={**data, "csrf_token": token})
    assert resp.status_code == 400
    assert 'name="username"' in resp.get_data(as_text=True)


def test_non_utf8_form_data_is_not_a_500(client, make_user):
    make_user("alice")
    token = csrf_from(client.get("/login").get_data(as_text=True))
    body = b"username=\xff\xfe&password=\xc3\x28x12345678&csrf_token=" + token.encode()
    resp = client.post("/login", data=body,
                       content_type="application/x-www-form-urlencoded")
    assert resp.status_code in (200, 400)


def test_open_redirects_are_refused(client, make_user):
    make_user("alice")
    for target in ("https://evil.example/", "//evil.example", "/\\evil.example", "javascript:x",
                   "/files/1"):
        client.post("/logout", data={"csrf_token": csrf_from(
            client.get("/").get_data(as_text=True))})
        token = csrf_from(client.get("/login").get_data(as_text=True))
        resp = client.post("/login", query_string={"next": target}, data={
            "username": "alice", "password": "password123", "csrf_token": token})
        assert resp.status_code == 302
        assert resp.headers["Location"] == (target if target == "/files/1" else "/")


def app_with_alice(config):
    """An app built from config (limits changed by the test) with user alice."""
    app = create_app(config)
    with app.app_context():
        db.create_all()
        user = User(username="alice")
        user.set_password("password123")
        db.session.add(user)
        db.session.commit()
    return app


def test_account_limit_is_429_with_retry_after_for_that_address_and_reveals_nothing(
        config, make_user):
    # LOGIN_LIMIT_ACCOUNT counts per account *and client address* (portal/auth/throttle.py;
    # more in test_login_throttle.py): the address that failed is refused, the owner's is not.
    config["LOGIN_LIMIT_ACCOUNT"] = "3 per minute"
    app = app_with_alice(config)
    client = app.test_client()
    for name in ("alice", "ghost"):  # an existing and a missing account behave alike
        for _ in range(3):
            assert post_login(client, name, "wrong-password").status_code == 200
        locked = post_login(client, name, "password123")
        assert locked.status_code == 429
        assert int(locked.headers["Retry-After"]) > 0
    assert post_login(client, "someone-else", "x-password").status_code == 200
    owner = app.test_client()
    owner.environ_base["REMOTE_ADDR"] = "192.0.2.44"
    assert post_login(owner, "alice", "password123").status_code == 302
    with app.app_context():
        db.engine.dispose()


def test_ip_limit_and_redis_down_fallback(config):
    config["LOGIN_LIMIT_IP"] = "4 per minute"
    config["REDIS_URL"] = config["RATELIMIT_STORAGE_URI"] = f"redis://127.0.0.1:{free_port()}/0"
    app = create_app(config)
    with app.app_context():
        db.create_all()
    client = app.test_client()
    codes = [post_login(client, f"user{i}", "wrong-password").status_code for i in range(6)]
    assert codes[:4] == [200] * 4 and codes[4:] == [429, 429]
    with app.app_context():
        db.engine.dispose()


def test_successful_logins_do_not_count(config, make_user):
    config["LOGIN_LIMIT_ACCOUNT"] = "2 per minute"
    app = app_with_alice(config)
    client = app.test_client()
    for _ in range(4):
        assert post_login(client, "alice", "password123").status_code == 302
        client.post("/logout", data={"csrf_token": csrf_from(
            client.get("/").get_data(as_text=True))})
    with app.app_context():
        db.engine.dispose()


def test_sign_ins_are_audited(app, client, make_user):
    make_user("alice")
    post_login(client, "alice", "nope-nope-nope")
    post_login(client, "alice", "password123")
    with app.app_context():
        actions = [(e.action, e.target) for e in db.session.scalars(
            select(AuditEntry).order_by(AuditEntry.id))]
    assert actions == [("login.failure", "alice"), ("login.success", "alice")]


def test_a_disabled_account_is_told_so_only_with_its_password(config):
    config["LOGIN_LIMIT_ACCOUNT"] = "3 per minute"
    app = app_with_alice(config)
    with app.app_context():
        db.session.scalar(select(User).where(User.username == "alice")).active = False
        db.session.commit()
    client = app.test_client()
    right = post_login(client, "alice", "password123")
    page = right.get_data(as_text=True)
    assert right.status_code == 403 and "此账号已被停用" in page and "密码错误" not in page
    token = csrf_from(client.get("/login").get_data(as_text=True))
    english = client.post("/login", headers={"Accept-Language": "en"}, data={
        "username": "alice", "password": "password123", "csrf_token": token})
    assert english.status_code == 403
    assert "This account is disabled." in english.get_data(as_text=True)
    wrong = post_login(client, "alice", "wrong-password")  # nothing said without it
    page = wrong.get_data(as_text=True)
    assert wrong.status_code == 200 and "用户名或密码错误" in page and "停用" not in page
    # all three were failures for the throttle: the fourth is refused, right password or not
    assert post_login(client, "alice", "password123").status_code == 429
    with app.app_context():
        details = [e.detail for e in db.session.scalars(
            select(AuditEntry).where(AuditEntry.action == "login.failure")
            .order_by(AuditEntry.id))]
    close_app(app)
    assert details == ["method=local; disabled"] * 2 + ["method=local"]


def test_change_own_password(app, client, make_user, login):
    make_user("alice")
    login("alice")
    token = csrf_from(client.get("/account/password").get_data(as_text=True))
    bad = client.post("/account/password", data={"current": "wrong-one", "new": "new-password-1",
                                                  "confirm": "new-password-1", "csrf_token": token})
    assert bad.status_code == 400
    short = client.post("/account/password", data={"current": "password123", "new": "short",
                                                    "confirm": "short", "csrf_token": token})
    assert short.status_code == 400
    ok = client.post("/account/password", data={"current": "password123",
                                                 "new": "new-password-1",
                                                 "confirm": "new-password-1", "csrf_token": token})
    assert ok.status_code == 302
    with app.app_context():
        user = db.session.scalar(select(User).where(User.username == "alice"))
        assert user.check_password("new-password-1")


def test_admin_pages_guarded(client, make_user, login):
    assert client.get("/admin/users").status_code == 302
    make_user("stud")
    make_user("teach", role="staff")
    login("stud")
    assert client.get("/admin/").status_code == 404
    login("teach")
    assert client.get("/admin/").status_code == 200
    assert client.get("/admin/users").status_code == 404  # staff do not manage users


def test_admin_manages_users_and_groups(app, client, make_user, login):
    make_user("root", role="admin")
    make_user("alice")
    csrf = login("root")
    for name in ("CS2025", "MATH"):  # groups are created on their page, never by a user form
        assert client.post("/admin/groups", data={"name": name, "csrf_token": csrf}
                           ).status_code == 302
    resp = client.post("/admin/users", data={
        "username": "2025001", "display_name": "新同学", "role": "student",
        "groups": "CS2025 MATH", "password": "first-pass-1", "active": "y", "csrf_token": csrf})
    assert resp.status_code == 302, resp.get_data(as_text=True)[:2000]
    dup = client.post("/admin/users", data={"username": "alice", "role": "student",
                                            "password": "whatever-1", "csrf_token": csrf})
    assert dup.status_code == 400
    with app.app_context():
        alice = db.session.scalar(select(User).where(User.username == "alice"))
        alice_id = alice.id
    resp = client.post(f"/admin/users/{alice_id}", data={
        "username": "alice", "display_name": "Alice", "role": "student", "groups": "CS2025",
        "password": "reset-pass-1", "confirm_disable": "y",
        "csrf_token": csrf})  # active unchecked: disabled
    assert resp.status_code == 302
    with app.app_context():
        alice = db.session.get(User, alice_id)
        assert not alice.active and alice.group_names == {"CS2025"}
        assert alice.check_password("reset-pass-1")
        actions = [e.action for e in db.session.scalars(select(AuditEntry))]
        assert "user.created" in actions and "user.changed" in actions
        change = db.session.scalars(select(AuditEntry).where(
            AuditEntry.action == "user.changed")).one()
        assert "disabled" in change.detail and "password reset" in change.detail
    page = client.get("/admin/groups").get_data(as_text=True)
    assert "CS2025" in page and "MATH" in page
    audit_page = client.get("/admin/audit?action=user.").get_data(as_text=True)
    assert "user.changed" in audit_page and "login.success" not in audit_page


def test_admin_cannot_lock_themselves_out(app, client, make_user, login):
    root_id = make_user("root", role="admin")
    csrf = login("root")
    resp = client.post(f"/admin/users/{root_id}", data={
        "username": "root", "role": "student", "active": "y", "csrf_token": csrf})
    assert resp.status_code == 400
