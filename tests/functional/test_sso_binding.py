"""Directory accounts bound to where they came from (issue 28): a sign-in is the user bound
to its method, issuer and subject, never the user who merely has its name. Against real
servers: oidc-provider processes under node (two of them are two issuers, and their
accounts change between sign-ins), slapd, and a database made by the 0009 migration.

A refused sign-in must not reach the personal document (``user:NAME``) of the account
whose name it brought: that is what each test downloads."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from flask_migrate import upgrade
from ldapserver import directory, display_name, uid
from oidcserver import TEST_CLIENT_CALLBACK, oidc_provider, start_provider
from sqlalchemy import text

from portal import create_app
from portal.extensions import db
from tests.helpers import add_file, audit_details, close_app, form_sign_in, user_named

pytestmark = pytest.mark.databases  # identities held unique by constraints

__all__ = ["directory", "oidc_provider"]

REFUSED_ZH = "该用户名属于一个以其他方式登录的门户账号"
REFUSED_EN = "belongs to a portal account that signs in another way"


@pytest.fixture
def providers(tmp_path):
    """Start private providers: ``providers(accounts)``; all stopped after the test."""
    started = []

    def start(accounts: dict):
        provider = start_provider(tmp_path, [TEST_CLIENT_CALLBACK], accounts=accounts)
        started.append(provider)
        return provider

    yield start
    for provider in started:
        provider.stop()


def personal(app, name: str) -> tuple[int, bytes]:
    """A personal document of ``name`` (access ``user:NAME``): its id and content."""
    content = f"{name}'s transcript".encode()
    return add_file(app, content, access=f"user:{name}", filename=f"{name}.txt"), content


def downloads(client, file_id: int) -> bytes | None:
    """The file's bytes as this client gets them, or None when it is refused."""
    resp = client.get(f"/files/{file_id}/download")
    return resp.data if resp.status_code == 200 else None


def test_a_second_issuer_with_the_same_name_is_refused_until_linked(make_app, config,
                                                                     oidc_provider, providers):
    config.update(AUTH_METHODS=["local", "oidc"], **oidc_provider.settings())
    first = make_app()
    doc, content = personal(first, "2023201")
    owner = first.test_client()
    assert oidc_provider.portal_sign_in(owner, "2023201").status_code == 302
    assert downloads(owner, doc) == content
    # Another issuer whose account has the same preferred_username and even the same sub.
    other = providers({"2023201": {"preferred_username": "2023201", "name": "冒名者"}})
    second = make_app(**other.settings())
    stranger = second.test_client()
    resp = other.portal_sign_in(stranger, "2023201")
    assert resp.status_code == 403 and REFUSED_ZH in resp.get_data(as_text=True)
    assert downloads(stranger, doc) is None
    english = second.test_client()
    english.environ_base["HTTP_ACCEPT_LANGUAGE"] = "en"
    resp = other.portal_sign_in(english, "2023201")
    assert resp.status_code == 403 and REFUSED_EN in resp.get_data(as_text=True)
    refused = audit_details(second, "login.failure")[-1]
    assert "other_source" in refused and f"issuer={other.issuer}" in refused
    assert "subject=2023201" in refused  # what the admin's user link needs
    assert user_named(second, "2023201")["display"] == "李雷"

    # an admin links the second issuer's account: it signs in as the same user from then on
    result = second.test_cli_runner().invoke(
        args=["user", "link", "2023201", "--method", "oidc", "--subject", "2023201"])
    assert result.exit_code == 0 and "linked 2023201" in result.output, result.output
    assert f"issuer={other.issuer}" in audit_details(second, "user.linked")[-1]
    linked = second.test_client()
    assert other.portal_sign_in(linked, "2023201").status_code == 302
    assert downloads(linked, doc) == content
    # a link only signs in: the first issuer still decides the name and groups
    assert user_named(second, "2023201")["display"] == "李雷"
    assert user_named(second, "2023201")["groups"] == ["cs2023b"]
    again = second.test_cli_runner().invoke(
        args=["user", "link", "2023201", "--method", "oidc", "--subject", "2023201"])
    assert again.exit_code == 0 and "already linked" in again.output


def test_the_same_sub_with_a_new_name_is_the_same_account(make_app, config, providers):
    provider = providers({"sub-7": {"preferred_username": "2023207", "name": "王同学",
                                    "groups": ["cs2023a"]}})
    config.update(AUTH_METHODS=["oidc"], **provider.settings())
    app = make_app()
    doc, content = personal(app, "2023207")
    assert provider.portal_sign_in(app.test_client(), "sub-7").status_code == 302
    before = user_named(app, "2023207")
    # The provider renames the person, and gives the old name to someone else.
    provider.set_accounts({
        "sub-7": {"preferred_username": "wang.new", "name": "王同学", "groups": ["cs2023b"]},
        "sub-8": {"preferred_username": "2023207", "name": "新同学"}})
    renamed = app.test_client()
    assert provider.portal_sign_in(renamed, "sub-7").status_code == 302
    assert downloads(renamed, doc) == content
    assert user_named(app, "wang.new") is None  # the username stays: access rules name it
    after = user_named(app, "2023207")
    assert after["id"] == before["id"] and after["groups"] == ["cs2023b"]
    assert "2023207 -> wang.new" in audit_details(app, "user.directory_renamed")[-1]
    newcomer = app.test_client()
    assert provider.portal_sign_in(newcomer, "sub-8").status_code == 403
    assert downloads(newcomer, doc) is None
    assert "other_source" in audit_details(app, "login.failure")[-1]


def test_ldap_and_oidc_with_one_name_are_two_people_until_linked(make_app, config, directory,
                                                                 providers, make_user):
    ldap_name, oidc_name = uid(31), uid(32)
    provider = providers({"o-31": {"preferred_username": ldap_name, "name": "冒名者"},
                          "o-32": {"preferred_username": oidc_name, "name": "OIDC 同学"}})
    config.update(directory.settings(AUTH_METHODS=["local", "ldap", "oidc"]),
                  **provider.settings())
    app = make_app()
    ldap_doc, ldap_content = personal(app, ldap_name)
    oidc_doc, oidc_content = personal(app, oidc_name)
    assert form_sign_in(app.test_client(), ldap_name, f"pw-{ldap_name}").status_code == 302
    stranger = app.test_client()
    resp = provider.portal_sign_in(stranger, "o-31")
    assert resp.status_code == 403 and REFUSED_ZH in resp.get_data(as_text=True)
    assert downloads(stranger, ldap_doc) is None
    assert user_named(app, ldap_name)["display"] == display_name(31)

    # the other way round: an OIDC account first, then the directory's entry of that name
    assert provider.portal_sign_in(app.test_client(), "o-32").status_code == 302
    ldap_person = app.test_client()
    resp = form_sign_in(ldap_person, oidc_name, f"pw-{oidc_name}")
    assert resp.status_code == 403 and REFUSED_ZH in resp.get_data(as_text=True)
    assert downloads(ldap_person, oidc_doc) is None
    # sync-ldap leaves it alone too: not updated with the directory's groups, not disabled
    runner = app.test_cli_runner()
    result = runner.invoke(args=["user", "sync-ldap"])
    assert result.exit_code == 0 and f"skipped {oidc_name}: other_source" in result.output
    kept = user_named(app, oidc_name)
    assert (kept["display"], kept["groups"], kept["source"], kept["active"]) == (
        "OIDC 同学", [], "oidc", True)

    # linked by an admin, each signs in as the account it was linked to
    result = runner.invoke(args=["user", "link", ldap_name, "--method", "oidc",
                                 "--subject", "o-31"])
    assert result.exit_code == 0, result.output
    linked = app.test_client()
    assert provider.portal_sign_in(linked, "o-31").status_code == 302
    assert downloads(linked, ldap_doc) == ldap_content
    assert user_named(app, ldap_name)["display"] == display_name(31)  # LDAP still decides
    result = runner.invoke(args=["user", "link", oidc_name, "--method", "ldap"])
    assert result.exit_code == 0 and "method=ldap" in result.output, result.output
    assert form_sign_in(ldap_person, oidc_name, f"pw-{oidc_name}").status_code == 302
    assert downloads(ldap_person, oidc_doc) == oidc_content
    assert user_named(app, oidc_name)["groups"] == []  # OIDC still decides
    result = runner.invoke(args=["user", "sync-ldap"])
    assert result.exit_code == 0 and "skipped 0" in result.output, result.output
    # the admin page shows whom each account signs in as
    make_user("root", role="admin")
    admin = app.test_client()
    assert form_sign_in(admin, "root", "password123").status_code == 302
    page = admin.get(f"/admin/users/{user_named(app, ldap_name)['id']}").get_data(as_text=True)
    assert "所属登录方式：LDAP" in page and "ldap:///ou=people,dc=campus,dc=test" in page
    assert f"<td>{provider.issuer}</td><td>o-31</td>" in page


def test_local_accounts_go_to_a_sign_in_only_when_made_for_it(make_app, config, make_user,
                                                              providers, tmp_path):
    provider = providers({name: {"preferred_username": name, "name": name}
                          for name in ("admin1", "roster1", "roster2", "reserved1")})
    config.update(AUTH_METHODS=["local", "oidc"], **provider.settings())
    app = make_app()
    make_user("admin1", role="admin", password="break-glass-pw")
    make_user("roster1", password=None)  # imported without a password, meant for no method
    docs = {name: personal(app, name)[0] for name in ("admin1", "roster1")}
    for name, reason in (("admin1", "local_account"), ("roster1", "other_source")):
        client = app.test_client()
        assert provider.portal_sign_in(client, name).status_code == 403
        assert downloads(client, docs[name]) is None
        assert reason in audit_details(app, "login.failure")[-1]
    assert user_named(app, "admin1")["source"] == "local"
    assert form_sign_in(app.test_client(), "admin1", "break-glass-pw").status_code == 302

    # made for OIDC by an admin: the first OIDC sign-in of the name binds the account
    runner = app.test_cli_runner()
    made = runner.invoke(args=["user", "create", "reserved1", "--method", "oidc"])
    assert made.exit_code == 0, made.output
    assert runner.invoke(args=["user", "create", "x1", "--method", "oidc", "--password",
                               "long-enough"]).exit_code == 1
    roster = tmp_path / "roster.csv"
    roster.write_text("username,display_name,role,groups,password,method\n"
                      "roster1,,student,,,oidc\nroster2,,student,,,oidc\n", encoding="utf-8")
    assert runner.invoke(args=["user", "import", str(roster)]).exit_code == 0
    for name in ("reserved1", "roster1", "roster2"):
        reserved = user_named(app, name)
        assert reserved["source"] == "oidc"
        assert provider.portal_sign_in(app.test_client(), name).status_code == 302
        assert user_named(app, name)["id"] == reserved["id"]
    assert len(audit_details(app, "user.bound")) == 3
    # a bound account is not moved by an import
    roster.write_text("username,display_name,role,groups,password,method\nroster1,,student,,,"
                      "cas\n", encoding="utf-8")
    moved = runner.invoke(args=["user", "import", str(roster)])
    assert moved.exit_code == 1 and "use user link" in moved.output


def test_accounts_made_before_bindings(config, make_app, directory, providers):
    """A database of 0009: its directory users are unbound, and only a sign-in of their own
    method binds them; its local accounts are bound by no sign-in."""
    app = create_app(config)
    with app.app_context():
        upgrade(revision="0009_sso")
        for name, source, password_hash in (("old-oidc", "oidc", "!directory"),
                                            (uid(41), "ldap", "!directory"),
                                            (uid(42), "ldap", "!directory"),
                                            ("roster", "local", None)):
            db.session.execute(text(
                "INSERT INTO users (username, display_name, password_hash, role, active, "
                "created_at, session_gen, auth_source) VALUES (:name, :name, :hash, "
                "'student', :active, :at, 0, :source)"),
                {"name": name, "hash": password_hash, "source": source, "active": True,
                 "at": datetime.now(UTC)})
        db.session.commit()
        upgrade()
    close_app(app)
    provider = providers({
        "s-old": {"preferred_username": "old-oidc", "name": "老用户"},
        "s-old-2": {"preferred_username": "old-oidc", "name": "冒名者"},
        "s-41": {"preferred_username": uid(41), "name": "冒名者"},
        "s-roster": {"preferred_username": "roster", "name": "冒名者"}})
    config.update(directory.settings(AUTH_METHODS=["local", "ldap", "oidc"]),
                  **provider.settings())
    app = make_app()
    before = {name: user_named(app, name)["id"] for name in ("old-oidc", uid(41), "roster")}
    for sub in ("s-41", "s-roster"):
        assert provider.portal_sign_in(app.test_client(), sub).status_code == 403
    assert form_sign_in(app.test_client(), uid(41), f"pw-{uid(41)}").status_code == 302
    assert provider.portal_sign_in(app.test_client(), "s-old").status_code == 302
    assert provider.portal_sign_in(app.test_client(), "s-old-2").status_code == 403
    assert {name: user_named(app, name)["id"] for name in before} == before
    assert user_named(app, "old-oidc")["display"] == "老用户"
    # the sync binds the LDAP users its directory lists by name
    result = app.test_cli_runner().invoke(args=["user", "sync-ldap"])
    assert result.exit_code == 0 and "skipped 0" in result.output, result.output
    with app.app_context():
        bound = dict(db.session.execute(text(
            "SELECT u.username, i.subject FROM user_identities i JOIN users u "
            "ON u.id = i.user_id WHERE i.method = 'ldap'")).all())
    assert uid(41) in bound and uid(42) in bound and "roster" not in bound
    assert len(bound[uid(42)]) == 36  # the entry's entryUUID, not its name


def test_a_sync_of_another_directory_takes_and_disables_no_one(make_app, config, directory):
    config.update(directory.settings(AUTH_METHODS=["ldap"]))
    app = make_app()
    assert "skipped 0" in app.test_cli_runner().invoke(args=["user", "sync-ldap"]).output
    # The same entries under another user base are another issuer's accounts (a directory
    # moved to a new base must be linked again): named, not bound, and never disabled.
    other = make_app(LDAP_USER_BASE="dc=campus,dc=test")
    result = other.test_cli_runner().invoke(args=["user", "sync-ldap"])
    assert result.exit_code == 0, result.output
    assert "created 0, updated 0, disabled 0, unchanged 0" in result.output
    assert f"skipped {uid(5)}: other_source" in result.output
    assert user_named(other, uid(5))["active"] is True
