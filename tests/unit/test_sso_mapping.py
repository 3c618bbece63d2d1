"""The pure parts of directory mapping: the role map and nested groups (no server)."""

from portal.auth.sso.ldap import Groups
from portal.auth.sso.mapping import DirectoryAccount, group_names, role_for, values

ROLE_MAP = (("admin", ("group:portal-admins",)), ("staff", ("eduPersonAffiliation=faculty",)))


def account(groups=(), **attributes):
    return DirectoryAccount("ldap", "2023001", groups=tuple(groups),
                            attributes={k: tuple(v) for k, v in attributes.items()})


def test_the_strongest_matching_role_wins():
    both = account(["portal-admins"], eduPersonAffiliation=["faculty"])
    assert role_for(both, ROLE_MAP, "student") == "admin"
    assert role_for(account(edupersonaffiliation=["faculty"]), ROLE_MAP, "student") == "staff"
    assert role_for(account(["cs"]), ROLE_MAP, "student") == "student"
    assert role_for(account(), (), None) is None


def test_nested_groups_are_followed_and_loops_end():
    parents = {"uid=a": {"cn=class"}, "cn=class": {"cn=dept"}, "cn=dept": {"cn=class"}}
    graph = Groups(parents, {"cn=class": "class", "cn=dept": "dept"})
    assert graph.of("uid=A") == ("class", "dept")
    assert graph.of("uid=b") == ()


def test_values_and_group_names():
    assert values(None) == () and values(b"\xe5\xbc\xa0") == ("张",) and values(["a", ""]) == ("a",)
    assert group_names(["计算机2023", "has space", "b"]) == ("b", "计算机2023")
