"""The pure parts of directory mapping: the role map, nested groups, issuers and subjects
(no server)."""

from dataclasses import replace

from portal.auth.sso import cas, ldap, oidc
from portal.auth.sso.ldap import Groups
from portal.auth.sso.mapping import DirectoryAccount, group_names, role_for, values
from portal.settings import Settings

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


def test_issuers_are_kept_in_one_spelling():
    cfg = replace(Settings(), ldap_url="ldaps://dir.campus.edu:636",
                  ldap_user_base=" OU=People, DC=campus,DC=edu",
                  cas_server_url="https://cas.campus.edu/cas/",
                  oidc_issuer="https://idp.campus.edu/realms/x/")
    assert ldap.issuer(cfg) == "ldap:///ou=people,dc=campus,dc=edu"  # no host, port, scheme
    assert ldap.issuer(replace(cfg, ldap_url="ldap://replica:389")) == ldap.issuer(cfg)
    assert cas.issuer(cfg) == "https://cas.campus.edu/cas"
    assert oidc.issuer(cfg) == "https://idp.campus.edu/realms/x"


def test_an_ldap_entry_is_its_stable_id_else_its_dn():
    dn = "uid=2023001,ou=people,dc=campus,dc=edu"

    def subject(raw: dict, attribute: str = "entryUUID") -> str:
        entry = {"dn": dn, "attributes": {"uid": ["2023001"]}, "raw_attributes": raw}
        cfg = replace(Settings(), ldap_user_base="ou=people,dc=campus,dc=edu",
                      ldap_subject_attribute=attribute)
        return ldap._account(entry, cfg, Groups({}, {})).subject

    uuid = "8a4e3c7e-1f7b-103c-9a1d-6f1e2d3c4b5a"
    assert subject({"entryUUID": [uuid.encode()]}) == uuid
    assert subject({"objectGUID": [b"\xff\x00\x10"]}, "objectGUID") == "ff0010"  # binary
    assert subject({"objectguid": [b"\xff\x00\x10"]}, "objectGUID") == "ff0010"
    assert subject({}) == dn
