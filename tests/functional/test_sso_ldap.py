"""LDAP sign-in and ``user sync-ldap`` against a real slapd (tests/ldapserver.py): bind
sign-in (plain, StartTLS, LDAPS), groups by search and by memberOf with nesting, the role
map, failures that are pages and audit entries, and a sync whose disabling ends sessions
through the same path as the admin pages."""

from __future__ import annotations

import pytest
from ldapserver import ADMIN_DN, BASE, STUDENTS, class_of, directory, display_name, uid

from portal import create_app
from portal.config import ConfigError
from portal.models import UNUSABLE_PASSWORD
from tests.helpers import add_file, audit_details, csrf_from, form_sign_in, user_named

__all__ = ["directory"]

ROLE_MAP = {"admin": ["group:portal-admins"], "staff": ["employeeType=faculty"]}


@pytest.fixture
def ldap_config(config, directory):
    """The test config with LDAP and local sign-in on."""
    config.update(directory.settings(AUTH_METHODS=["local", "ldap"], SSO_ROLE_MAP=ROLE_MAP))
    return config


def test_auth_methods_are_checked_at_start_up(config):
    # create_app refuses before it opens anything, so there is nothing to close
    with pytest.raises(ConfigError, match="PORTAL_AUTH_METHODS must be a non-empty"):
        create_app({**config, "AUTH_METHODS": ["local", "kerberos"]})
    with pytest.raises(ConfigError, match="needs PORTAL_LDAP_URL and PORTAL_LDAP_USER_BASE"):
        create_app({**config, "AUTH_METHODS": ["ldap"]})
    with pytest.raises(ConfigError, match="PORTAL_SSO_ROLE_MAP must be JSON"):
        create_app({**config, "SSO_ROLE_MAP": {"root": ["group:x"]}})


@pytest.mark.parametrize("transport", ["plain", "starttls", "ldaps"])
def test_ldap_bind_sign_in_maps_the_account(make_app, ldap_config, directory, transport):
    if transport == "starttls":
        ldap_config.update(LDAP_START_TLS=True, LDAP_CA_FILE=directory.ca_file)
    elif transport == "ldaps":
        ldap_config.update(LDAP_URL=directory.ldaps_url, LDAP_CA_FILE=directory.ca_file)
    app = make_app()
    n = 4  # class cs2023b, inside dept-cs
    student = uid(n)
    class_file = add_file(app, b"dept notes", access="group:dept-cs", filename="dept.txt")
    own_file = add_file(app, b"transcript", access=f"user:{student}", filename="mine.txt")
    client = app.test_client()
    resp = form_sign_in(client, student, f"pw-{student}", next_url=f"/files/{own_file}")
    assert resp.status_code == 302, resp.get_data(as_text=True)[:400]
    assert resp.headers["Location"] == f"/files/{own_file}"
    seen = user_named(app, student)
    assert seen["display"] == display_name(n) and seen["source"] == "ldap"
    assert seen["groups"] == sorted([class_of(n), "dept-cs"])
    assert seen["role"] == "student" and seen["hash"] == UNUSABLE_PASSWORD
    assert client.get(f"/files/{class_file}/download").data == b"dept notes"
    assert client.get(f"/files/{own_file}/download").data == b"transcript"
    assert "method=ldap" in audit_details(app, "login.success")[-1]


def test_wrong_password_unknown_name_and_empty_bind_are_refused(make_app, ldap_config):
    app = make_app()
    client = app.test_client()
    assert form_sign_in(client, uid(5), "wrong").status_code == 200
    assert form_sign_in(client, "nobody", "whatever1").status_code == 200
    assert user_named(app, uid(5)) is None
    details = audit_details(app, "login.failure")
    assert len(details) == 2 and all("method=ldap" in d for d in details)


def test_throttle_applies_to_ldap(make_app, ldap_config):
    ldap_config["LOGIN_LIMIT_ACCOUNT"] = "3 per minute"
    app = make_app()
    client = app.test_client()
    codes = [form_sign_in(client, uid(6), "wrong").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]


def test_role_map_and_nested_groups_by_member_of(make_app, ldap_config):
    ldap_config["LDAP_GROUP_SOURCE"] = "memberOf"
    app = make_app()
    client = app.test_client()
    assert form_sign_in(client, uid(7), f"pw-{uid(7)}").status_code == 302
    admin = user_named(app, uid(7))
    assert admin["role"] == "admin"
    assert admin["groups"] == sorted([class_of(7), "dept-cs", "portal-admins"])
    teacher_client = app.test_client()
    assert form_sign_in(teacher_client, "t001", "pw-t001").status_code == 302
    assert user_named(app, "t001")["role"] == "staff"
    assert user_named(app, "t001")["display"] == "钱老师"


def test_directory_down_is_a_clear_page(make_app, ldap_config):
    from tests.helpers import free_port

    ldap_config["LDAP_URL"] = f"ldap://127.0.0.1:{free_port()}"
    app = make_app()
    resp = form_sign_in(app.test_client(), uid(8), f"pw-{uid(8)}")
    assert resp.status_code == 503
    assert "cannot be reached" in resp.get_data(as_text=True) or "无法连接" in resp.get_data(
        as_text=True)
    assert "unavailable" in audit_details(app, "login.failure")[-1]


def test_local_account_is_not_taken_over_and_break_glass_works(make_app, ldap_config, make_user):
    app = make_app()
    make_user(uid(9), role="admin", password="break-glass-pw")
    client = app.test_client()
    assert form_sign_in(client, uid(9), f"pw-{uid(9)}").status_code == 200  # directory pw
    assert form_sign_in(client, uid(9), "break-glass-pw").status_code == 302
    assert user_named(app, uid(9))["source"] == "local"


def test_auto_create_off_refuses_unknown_users(make_app, ldap_config):
    ldap_config["SSO_AUTO_CREATE"] = False
    app = make_app()
    resp = form_sign_in(app.test_client(), uid(10), f"pw-{uid(10)}")
    assert resp.status_code == 403 and user_named(app, uid(10)) is None
    assert "unknown_user" in audit_details(app, "login.failure")[-1]


def test_sync_ldap_creates_updates_and_disables(make_app, ldap_config, directory):
    ldap_config["LDAP_USER_FILTER"] = "(&(objectClass=inetOrgPerson)(!(employeeType=graduated)))"
    app = make_app()
    runner = app.test_cli_runner()
    result = runner.invoke(args=["user", "sync-ldap"])
    assert result.exit_code == 0, result.output
    assert f"created {STUDENTS + 1}, updated 0, disabled 0" in result.output
    gone, renamed, graduate = uid(20), uid(21), uid(22)
    assert user_named(app, gone)["groups"] == sorted([class_of(20)] + (
        ["dept-cs"] if class_of(20) != "math2023" else []))
    # the student who will leave signs in and holds a signed link
    client = app.test_client()
    assert form_sign_in(client, gone, f"pw-{gone}").status_code == 302
    file_id = add_file(app, b"for logged-in users", filename="all.txt")
    token = csrf_from(client.get("/").get_data(as_text=True))
    link = client.post(f"/api/files/{file_id}/links", headers={"X-CSRFToken": token}).json["url"]
    assert client.get(f"/files/{file_id}/download").status_code == 200
    assert app.test_client().get(link).status_code == 200

    directory.modify(f"dn: uid={gone},ou=people,{BASE}\nchangetype: delete\n\n"
                     f"dn: uid={renamed},ou=people,{BASE}\nchangetype: modify\n"
                     f"replace: displayName\ndisplayName: 改名同学\n\n"
                     f"dn: uid={graduate},ou=people,{BASE}\nchangetype: modify\n"
                     f"replace: employeeType\nemployeeType: graduated\n")
    try:
        result = runner.invoke(args=["user", "sync-ldap"])
        assert result.exit_code == 0, result.output
        assert "created 0, updated 1, disabled 2" in result.output
        assert user_named(app, graduate)["active"] is False
        assert form_sign_in(app.test_client(), graduate, f"pw-{graduate}").status_code == 200
        assert user_named(app, gone)["active"] is False
        assert user_named(app, renamed)["display"] == "改名同学"
        assert client.get(f"/files/{file_id}/download").status_code in (302, 401)
        assert app.test_client().get(link).status_code == 403
        assert form_sign_in(app.test_client(), renamed, f"pw-{renamed}").status_code == 302
        assert audit_details(app, "user.sync_ldap")[-1].startswith("created 0, updated 1")
        # listed again, the graduate stays disabled until an admin enables the account
        directory.modify(f"dn: uid={graduate},ou=people,{BASE}\nchangetype: modify\n"
                         f"replace: employeeType\nemployeeType: student\n")
        assert "disabled 0" in runner.invoke(args=["user", "sync-ldap"]).output
        assert user_named(app, graduate)["active"] is False
    finally:
        directory.modify(
            f"dn: uid={gone},ou=people,{BASE}\nchangetype: add\nobjectClass: inetOrgPerson\n"
            f"uid: {gone}\ncn: {display_name(20)}\nsn: x\ndisplayName: {display_name(20)}\n"
            f"userPassword: pw-{gone}\n\n"
            f"dn: uid={renamed},ou=people,{BASE}\nchangetype: modify\n"
            f"replace: displayName\ndisplayName: {display_name(21)}\n\n"
            f"dn: uid={graduate},ou=people,{BASE}\nchangetype: modify\n"
            f"replace: employeeType\nemployeeType: student\n")


def test_sync_ldap_without_a_directory_says_so(make_app):
    runner = make_app().test_cli_runner()
    result = runner.invoke(args=["user", "sync-ldap"])
    assert result.exit_code == 1 and "needs PORTAL_LDAP_URL" in result.output
    assert ADMIN_DN  # the fixture module's constants are the directory's
