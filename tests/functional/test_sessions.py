"""Sessions the server can end: logout revokes the session's token (the old cookie is refused
afterwards), a password change ends the user's other sessions and signed links, "sign out
everywhere" ends them all, disabling a user ends them for good (enabling the account again
revives none), remember-me tokens are new at each sign-in, expire, and die with the session
generation, and the CSRF token is new after sign-in. On a real gunicorn, right after the
answer: test_final_logout.py."""

from __future__ import annotations

import time

import pytest

from portal.auth.tokens import parse_token
from portal.extensions import db
from portal.models import ChangeLog, RevokedToken, User
from tests.helpers import add_file, csrf_from

DATA = b"personal document " * 100


def sign_in(app, username: str, password: str = "password123", remember: bool = False):
    """A new client (a browser or device of its own) signed in through the form."""
    client = app.test_client()
    token = csrf_from(client.get("/login").get_data(as_text=True))
    form = {"username": username, "password": password, "csrf_token": token}
    if remember:
        form["remember"] = "y"
    resp = client.post("/login", data=form)
    assert resp.status_code == 302, resp.get_data(as_text=True)[:300]
    return client


def cookie(client, name: str) -> str | None:
    found = client.get_cookie(name)
    return None if found is None else found.value


def session_token(app, client):
    """The token the client's session holds (what Flask-Login keeps as the user id)."""
    raw = cookie(client, app.config["SESSION_COOKIE_NAME"])
    data = app.session_interface.get_signing_serializer(app).loads(raw)
    return parse_token(data["_user_id"])


def with_cookies(app, **values):
    """A client carrying exactly these cookies (an old cookie replayed by someone)."""
    client = app.test_client()
    for name, value in values.items():
        if value is not None:
            client.set_cookie(name, value)
    return client


@pytest.fixture
def doc(app, make_user):
    make_user("amy")
    make_user("zoe")
    return f"/files/{add_file(app, DATA, 'user:amy', filename='transcript.pdf')}/download"


def test_logout_refuses_the_old_cookie(app, doc):
    client = sign_in(app, "amy")
    assert client.get(doc).status_code == 200
    old = cookie(client, "session")
    csrf = csrf_from(client.get("/").get_data(as_text=True))
    assert client.post("/logout", data={"csrf_token": csrf}).status_code == 302
    replay = with_cookies(app, session=old)
    assert replay.get(doc).status_code == 302  # to the login page
    api = doc.replace("/files/", "/api/files/").removesuffix("/download")
    assert client.get(api).status_code == 401 and replay.get(api).status_code == 401
    with app.app_context():
        assert db.session.query(RevokedToken).filter_by(kind="session").count() == 1


def test_logout_ends_only_that_session(app, doc):
    laptop, phone = sign_in(app, "amy"), sign_in(app, "amy")
    csrf = csrf_from(laptop.get("/").get_data(as_text=True))
    laptop.post("/logout", data={"csrf_token": csrf})
    assert laptop.get(doc).status_code == 302
    assert phone.get(doc).status_code == 200


def test_sign_out_everywhere_ends_every_session_and_link(app, doc):
    laptop, phone = sign_in(app, "amy"), sign_in(app, "amy")
    csrf = csrf_from(phone.get("/").get_data(as_text=True))
    link = phone.post(doc.replace("/files/", "/api/files/").replace("/download", "/links"),
                      headers={"X-CSRFToken": csrf}).json["url"]
    path = "/" + link.split("/", 3)[3]
    assert app.test_client().get(path).status_code == 200
    phone.post("/logout", data={"csrf_token": csrf, "everywhere": "1"})
    assert laptop.get(doc).status_code == 302
    assert phone.get(doc).status_code == 302
    assert app.test_client().get(path).status_code == 403


def test_password_change_ends_the_other_sessions_and_links(app, doc):
    here, elsewhere = sign_in(app, "amy"), sign_in(app, "amy")
    csrf = csrf_from(here.get("/account/password").get_data(as_text=True))
    link = here.post(doc.replace("/files/", "/api/files/").replace("/download", "/links"),
                     headers={"X-CSRFToken": csrf}).json["url"]
    before = session_token(app, here)
    resp = here.post("/account/password", data={
        "csrf_token": csrf, "current": "password123", "new": "new-password-1",
        "confirm": "new-password-1"})
    assert resp.status_code == 302, resp.get_data(as_text=True)[:500]
    assert here.get(doc).status_code == 200  # this session goes on ...
    after = session_token(app, here)
    assert after.generation == before.generation + 1 and after.nonce != before.nonce
    assert elsewhere.get(doc).status_code == 302  # ... the other one is over
    assert app.test_client().get("/" + link.split("/", 3)[3]).status_code == 403
    with_old = with_cookies(app, session=cookie(elsewhere, "session"))
    assert with_old.get(doc).status_code == 302


def test_remember_me_is_new_per_sign_in_and_dies_with_the_generation(app, doc):
    first, second = sign_in(app, "amy", remember=True), sign_in(app, "amy", remember=True)
    one, two = cookie(first, "remember_token"), cookie(second, "remember_token")
    assert one and two and one != two
    # a browser restart: only the remember-me cookie is left, and it signs the user in
    restarted = with_cookies(app, remember_token=one)
    assert restarted.get(doc).status_code == 200
    with app.app_context():  # an admin disables and re-enables the account
        user = db.session.query(User).filter_by(username="amy").one()
        user.end_sessions()
        db.session.commit()
    assert with_cookies(app, remember_token=two).get(doc).status_code == 302


def test_remember_me_expires(make_app, make_user):
    app = make_app(SESSION_LIFETIME_SECONDS=2)
    make_user("amy")
    doc = f"/files/{add_file(app, DATA, 'user:amy')}/download"
    remembered = cookie(sign_in(app, "amy", remember=True), "remember_token")
    assert with_cookies(app, remember_token=remembered).get(doc).status_code == 200
    time.sleep(3.1)
    assert with_cookies(app, remember_token=remembered).get(doc).status_code == 302


def test_csrf_token_is_rotated_at_sign_in(app, make_user):
    make_user("amy")
    client = app.test_client()
    before = csrf_from(client.get("/login").get_data(as_text=True))
    resp = client.post("/login", data={"username": "amy", "password": "password123",
                                       "csrf_token": before})
    assert resp.status_code == 302
    after = csrf_from(client.get("/").get_data(as_text=True))
    serializer = app.session_interface.get_signing_serializer(app)
    raw_before = serializer.loads(cookie(client, "session"))["csrf_token"]
    assert after != before
    # the token of the anonymous session no longer passes
    resp = client.post("/logout", data={"csrf_token": before})
    assert resp.status_code == 400 and raw_before


def test_a_bare_id_session_from_before_is_refused(app, doc):
    """Sessions of the older layout (``_user_id`` = the id) sign in again."""
    client = app.test_client()
    with client.session_transaction() as sess:
        sess["_user_id"] = "1"
        sess["_fresh"] = True
    assert client.get(doc).status_code == 302


def test_revocations_are_rows_in_the_change_log(app, doc):
    client = sign_in(app, "amy")
    token = session_token(app, client)
    csrf = csrf_from(client.get("/").get_data(as_text=True))
    client.post("/logout", data={"csrf_token": csrf})
    with app.app_context():
        subjects = [row.subject for row in db.session.query(ChangeLog)]
    assert f"token:{token.nonce}" in subjects


def set_active(app, how: str, active: bool) -> None:
    """Disable or enable amy: by an admin on the admin page, or by the ORM directly (as
    ``user sync-ldap`` and every other path that sets the column)."""
    if how == "admin page":
        admin = sign_in(app, "root")
        csrf = csrf_from(admin.get("/").get_data(as_text=True))
        with app.app_context():
            amy = db.session.query(User).filter_by(username="amy").one().id
        form = {"username": "amy", "display_name": "amy", "role": "student", "groups": "",
                "csrf_token": csrf, **({"active": "y"} if active else {"confirm_disable": "y"})}
        resp = admin.post(f"/admin/users/{amy}", data=form)
        assert resp.status_code == 302, resp.get_data(as_text=True)[:500]
        return
    with app.app_context():
        db.session.query(User).filter_by(username="amy").one().active = active
        db.session.commit()


@pytest.mark.parametrize("how", ["admin page", "orm"])
def test_disabling_ends_sessions_remember_me_and_links_for_good(app, make_user, doc, how):
    make_user("root", role="admin")
    browser, remembered = sign_in(app, "amy"), sign_in(app, "amy", remember=True)
    csrf = csrf_from(browser.get("/").get_data(as_text=True))
    link = browser.post(doc.replace("/files/", "/api/files/").replace("/download", "/links"),
                        headers={"X-CSRFToken": csrf}).json["url"]
    link_path = "/" + link.split("/", 3)[3]
    old_session = cookie(browser, "session")
    old_remember = cookie(remembered, "remember_token")
    assert with_cookies(app, session=old_session).get(doc).status_code == 200
    assert with_cookies(app, remember_token=old_remember).get(doc).status_code == 200
    assert app.test_client().get(link_path, headers={"Range": "bytes=0-9"}).status_code == 206

    set_active(app, how, False)
    set_active(app, how, True)  # re-enabled: nothing of before comes back
    assert with_cookies(app, session=old_session).get(doc).status_code == 302
    assert with_cookies(app, remember_token=old_remember).get(doc).status_code == 302
    assert app.test_client().get(link_path, headers={"Range": "bytes=0-9"}).status_code == 403
    assert app.test_client().get(link_path).status_code == 403
    assert sign_in(app, "amy").get(doc).status_code == 200  # a new sign-in works again


def test_saving_a_disabled_user_again_ends_nothing_more(app, make_user):
    """Only the change to disabled moves the generation: a disabled user edited again (or a
    user enabled) keeps it, so an enabled user's fresh sessions are not ended by chance."""
    make_user("amy", active=False)
    with app.app_context():
        amy = db.session.query(User).filter_by(username="amy").one()
        generation = amy.session_gen
        amy.active = False
        amy.display_name = "Amy"
        db.session.commit()
        assert amy.session_gen == generation
        amy.active = True
        db.session.commit()
        assert amy.session_gen == generation
        amy.active = False
        db.session.commit()
        assert amy.session_gen == generation + 1
