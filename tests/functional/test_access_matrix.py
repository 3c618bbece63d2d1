"""Users x access rules x routes: every allow and deny with its exact status (README, "HTTP")."""

import io

import pytest

from portal.extensions import db
from portal.files import add_version
from portal.models import User
from portal.storage import get_storage
from tests.helpers import csrf_from

pytestmark = pytest.mark.databases  # the catalog's access filter is SQL (LIKE on access)

RULES = ["public", "login", "group:CS", "user:alice"]
# who -> the rules they may read
ALLOWED = {
    "anonymous": {"public"},
    "alice": {"public", "login", "group:CS", "user:alice"},  # student in CS, owner of user:alice
    "bob": {"public", "login"},  # student, not in CS
    "teacher": {"public", "login"},  # staff, owns nothing here
    "root": set(RULES),  # admin
}


@pytest.fixture
def files(app, make_user):
    make_user("alice", groups=["CS"])
    make_user("bob")
    make_user("teacher", role="staff")
    make_user("root", role="admin")
    ids = {}
    with app.app_context():
        for rule in RULES:
            version = add_version(db.session, get_storage(), io.BytesIO(rule.encode() * 100),
                                  filename=f"{rule.replace(':', '-')}.txt", title=f"doc {rule}",
                                  category="c", access=rule)
            db.session.commit()
            ids[rule] = version.file_id
    return ids


def expected(who, rule, route):
    if who == "anonymous" and route == "mint":
        return 401  # a link is bound to a user: minting needs an account, even for public files
    if rule in ALLOWED[who]:
        return 201 if route == "mint" else 200
    if who == "anonymous":
        return 401 if route in ("api", "mint") else 302
    return 404


def fetch(client, route, file_id, csrf):
    if route == "page":
        return client.get(f"/files/{file_id}")
    if route == "download":
        return client.get(f"/files/{file_id}/download")
    if route == "api":
        return client.get(f"/api/files/{file_id}")
    return client.post(f"/api/files/{file_id}/links", json={}, headers={"X-CSRFToken": csrf})


@pytest.mark.parametrize("who", list(ALLOWED))
def test_matrix(app, client, files, login, who):
    csrf = login(who) if who != "anonymous" else csrf_from(client.get("/login").get_data(
        as_text=True))
    seen = {}
    for rule, file_id in files.items():
        for route in ("page", "download", "api", "mint"):
            resp = fetch(client, route, file_id, csrf)
            seen[(rule, route)] = resp.status_code
            want = expected(who, rule, route)
            assert resp.status_code == want, (who, rule, route, resp.status_code)
            if want == 302:
                assert resp.headers["Location"].startswith("/login?next=")
            if want == 404:
                assert f"doc {rule}" not in resp.get_data(as_text=True)
    # missing files look exactly like files one may not read
    for route in ("page", "download", "api"):
        resp = fetch(client, route, 99999, csrf)
        assert resp.status_code == (401 if route == "api" else 302) if who == "anonymous" \
            else resp.status_code == 404


@pytest.mark.parametrize("who", ["alice", "bob", "root"])
def test_signed_link_rechecks_access(app, client, files, login, who):
    csrf = login(who)
    for rule, file_id in files.items():
        resp = client.post(f"/api/files/{file_id}/links", json={},
                           headers={"X-CSRFToken": csrf})
        if rule not in ALLOWED[who]:
            assert resp.status_code == 404
            continue
        url = resp.json["url"]
        anon = app.test_client()
        got = anon.get(url)
        assert got.status_code == 200 and got.data == rule.encode() * 100


def test_mint_without_csrf_header_is_refused(client, files, login):
    login("alice")
    resp = client.post(f"/api/files/{files['login']}/links", json={})
    assert resp.status_code == 400 and resp.json["error"]


def test_api_post_without_any_session_is_401_json(app, files):
    resp = app.test_client().post(f"/api/files/{files['public']}/links", json={})
    assert resp.status_code == 401 and resp.json == {"error": "authentication required"}


def test_disabled_user_loses_session_and_links(app, client, files, login):
    csrf = login("alice")
    url = client.post(f"/api/files/{files['group:CS']}/links", json={},
                      headers={"X-CSRFToken": csrf}).json["url"]
    assert app.test_client().get(url).status_code == 200
    with app.app_context():
        user = db.session.query(User).filter_by(username="alice").one()
        user.active = False
        db.session.commit()
    resp = client.get(f"/files/{files['group:CS']}/download")
    assert resp.status_code == 302  # the session no longer signs anyone in
    assert app.test_client().get(url).status_code == 403


def test_access_rule_change_applies_to_existing_links(app, client, files, login):
    csrf = login("alice")
    url = client.post(f"/api/files/{files['group:CS']}/links", json={},
                      headers={"X-CSRFToken": csrf}).json["url"]
    with app.app_context():
        from portal.models import File

        db.session.get(File, files["group:CS"]).access = "group:MATH"
        db.session.commit()
    assert app.test_client().get(url).status_code == 403
