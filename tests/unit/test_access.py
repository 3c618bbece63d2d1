"""Access rules: parsing, can_read, and the SQL twin agreeing with can_read."""

import pytest
from sqlalchemy import select

from portal.access import (
    can_read,
    compose_access,
    normalize_access,
    parse_access,
    picker_parts,
    readable_clause,
)
from portal.extensions import db
from portal.models import File, Group, User, utcnow

pytestmark = pytest.mark.databases  # can_read's SQL twin on each dialect


@pytest.mark.parametrize("rule,expected", [
    ("public", "public"), ("login", "login"), ("group:B,A,A", "group:A,B"),
    ("user:张三", "user:张三"), (" group:CS2023 ", "group:CS2023"),
])
def test_normalize(rule, expected):
    assert normalize_access(rule) == expected


@pytest.mark.parametrize("rule", ["", "everyone", "group:", "user:a,b", "group:a%b", "user:a:b",
                                  "group:a_b,c d"])
def test_invalid_rules(rule):
    with pytest.raises(ValueError):
        parse_access(rule)


RULES = ["public", "login", "group:CS", "group:MATH,CS", "group:MATH", "group:C_", "user:alice",
         "user:bob"]


def test_can_read_and_sql_agree(app):
    with app.app_context():
        cs = Group(name="CS")
        alice = User(username="alice", role="student", groups=[cs])
        bob = User(username="bob", role="student")
        staff = User(username="teacher", role="staff")
        admin = User(username="root", role="admin")
        disabled = User(username="gone", role="student", active=False, groups=[cs])
        # "C_" would match "CS" if LIKE wildcards were not escaped
        under = User(username="under", role="student", groups=[Group(name="C_")])
        db.session.add_all([alice, bob, staff, admin, disabled, under])
        db.session.flush()
        files = [File(title=f"f{i}", category="c", access=rule) for i, rule in enumerate(RULES)]
        files.append(File(title="deleted", category="c", access="public", deleted_at=utcnow()))
        files.append(File(title="owned", category="c", access="user:alice", owner=staff))
        db.session.add_all(files)
        db.session.commit()

        expected = {
            None: {"public"},
            alice: {"public", "login", "group:CS", "group:MATH,CS", "user:alice", "owned"},
            bob: {"public", "login", "user:bob"},
            staff: {"public", "login", "owned"},
            admin: set(RULES) | {"owned"},
            disabled: {"public"},
            under: {"public", "login", "group:C_"},
        }
        for user, allowed in expected.items():
            readable = {f.access if f.title != "owned" else "owned"
                        for f in files if can_read(user, f)}
            assert readable == allowed, user and user.username
            by_sql = {f.access if f.title != "owned" else "owned"
                      for f in db.session.scalars(select(File).where(readable_clause(user)))}
            assert by_sql == allowed, user and user.username


@pytest.mark.parametrize(("kind", "names", "rule"), [
    ("public", "", "public"),
    ("login", "ignored", "login"),
    ("group", "CS2023", "group:CS2023"),
    ("group", " MATH2024, CS2023 ", "group:CS2023,MATH2024"),
    ("group", "CS2023 MATH2024，STAFF、CS2023", "group:CS2023,MATH2024,STAFF"),
    ("user", " 2023001 ", "user:2023001"),
])
def test_compose_access_spells_the_picked_rule(kind, names, rule):
    assert compose_access(kind, names) == rule
    shown_kind, shown_names = picker_parts(rule)
    assert compose_access(shown_kind, shown_names) == rule  # what the picker shows saves back


@pytest.mark.parametrize(("kind", "names", "words"), [
    ("group", "", "name a group"),
    ("user", "  ", "name a person"),
    ("user", "a b", "exactly one"),
    ("group", "a%b", "invalid names"),
    ("group:CS", "", "unknown kind"),
    ("everyone", "", "unknown kind"),
])
def test_compose_access_refuses_what_no_rule_spells(kind, names, words):
    with pytest.raises(ValueError, match=words):
        compose_access(kind, names)


def test_a_broken_stored_rule_shows_as_signed_in():
    assert picker_parts("group:") == ("login", "")
