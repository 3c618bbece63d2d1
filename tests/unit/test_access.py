"""Access rules: parsing, can_read, and the SQL twin agreeing with can_read."""

import pytest
from sqlalchemy import select

from portal.access import can_read, normalize_access, parse_access, readable_clause
from portal.extensions import db
from portal.models import File, Group, User, utcnow


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
