"""A real LDAP directory for the tests: a private ``slapd`` (Debian's OpenLDAP) on a free
loopback port, with its own config and database in a temporary folder (the system's slapd,
if any, is never touched).

The directory: ``dc=campus,dc=test``, 300 students ``uid=2023001``... with Chinese display
names and passwords ``pw-<uid>``, class groups nested in a department group, an admins
group, and the memberof overlay so that ``memberOf`` works too. StartTLS and LDAPS use a
self-signed certificate made with openssl. Test modules import the fixture from here
(``from ldapserver import directory``).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import free_port, require_tool, wait_for

BASE = "dc=campus,dc=test"
ADMIN_DN = f"cn=admin,{BASE}"
ADMIN_PASSWORD = "directory-secret"
STUDENTS = 300
SURNAMES = "王李张刘陈杨黄赵吴周"
CLASSES = ("cs2023a", "cs2023b", "math2023")


def uid(n: int) -> str:
    """The n-th student's user id (1-based): 2023001, 2023002, ..."""
    return f"2023{n:03d}"


def display_name(n: int) -> str:
    """The n-th student's Chinese display name."""
    return f"{SURNAMES[n % len(SURNAMES)]}同学{n:03d}"


def class_of(n: int) -> str:
    """The class group of the n-th student."""
    return CLASSES[n % len(CLASSES)]


def _ldif() -> str:
    out = [f"dn: {BASE}\nobjectClass: dcObject\nobjectClass: organization\ndc: campus\no: Campus\n",
           f"dn: ou=people,{BASE}\nobjectClass: organizationalUnit\nou: people\n",
           f"dn: ou=groups,{BASE}\nobjectClass: organizationalUnit\nou: groups\n"]
    for n in range(1, STUDENTS + 1):
        out.append(f"dn: uid={uid(n)},ou=people,{BASE}\nobjectClass: inetOrgPerson\n"
                   f"uid: {uid(n)}\ncn: {display_name(n)}\nsn: {display_name(n)[0]}\n"
                   f"displayName: {display_name(n)}\nemployeeType: student\n"
                   f"userPassword: pw-{uid(n)}\n")
    out.append(f"dn: uid=t001,ou=people,{BASE}\nobjectClass: inetOrgPerson\nuid: t001\n"
               f"cn: 钱老师\nsn: 钱\ndisplayName: 钱老师\nemployeeType: faculty\n"
               f"userPassword: pw-t001\n")
    for name in CLASSES:
        members = "".join(f"member: uid={uid(n)},ou=people,{BASE}\n"
                          for n in range(1, STUDENTS + 1) if class_of(n) == name)
        out.append(f"dn: cn={name},ou=groups,{BASE}\nobjectClass: groupOfNames\ncn: {name}\n"
                   + members)
    # nested: the department holds two class groups, not the students themselves
    out.append(f"dn: cn=dept-cs,ou=groups,{BASE}\nobjectClass: groupOfNames\ncn: dept-cs\n"
               f"member: cn=cs2023a,ou=groups,{BASE}\nmember: cn=cs2023b,ou=groups,{BASE}\n")
    out.append(f"dn: cn=portal-admins,ou=groups,{BASE}\nobjectClass: groupOfNames\n"
               f"cn: portal-admins\nmember: uid={uid(7)},ou=people,{BASE}\n")
    return "\n".join(out)


def _certificate(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run([require_tool("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                    "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


@dataclass
class Directory:
    """A running slapd: its URLs, the CA file that trusts its certificate, and tools."""

    url: str
    ldaps_url: str
    ca_file: str
    folder: Path

    def settings(self, **more) -> dict:
        """The portal settings that point at this directory (group search by default)."""
        return {"LDAP_URL": self.url, "LDAP_BIND_DN": ADMIN_DN,
                "LDAP_BIND_PASSWORD": ADMIN_PASSWORD, "LDAP_USER_BASE": f"ou=people,{BASE}",
                "LDAP_GROUP_BASE": f"ou=groups,{BASE}", **more}

    def modify(self, ldif: str) -> None:
        """Apply an LDIF change (ldapmodify, as a directory admin would)."""
        subprocess.run(["ldapmodify", "-x", "-H", self.url, "-D", ADMIN_DN, "-w",
                        ADMIN_PASSWORD], input=ldif.encode(), check=True, capture_output=True)


@pytest.fixture(scope="session")
def directory(tmp_path_factory):
    """A private slapd with the campus directory loaded, for the whole run."""
    slapd = require_tool("slapd")
    require_tool("ldapadd")
    folder = tmp_path_factory.mktemp("slapd")
    (folder / "db").mkdir()
    cert, key = _certificate(folder)
    (folder / "slapd.conf").write_text(f"""
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload memberof
pidfile {folder}/slapd.pid
TLSCertificateFile {cert}
TLSCertificateKeyFile {key}
database mdb
suffix "{BASE}"
rootdn "{ADMIN_DN}"
rootpw {ADMIN_PASSWORD}
directory {folder}/db
maxsize 104857600
index uid,member eq
overlay memberof
""")
    port, tls_port = free_port(), free_port()
    url, ldaps_url = f"ldap://127.0.0.1:{port}", f"ldaps://127.0.0.1:{tls_port}"
    log = open(folder / "slapd.log", "w")  # noqa: SIM115 - open while slapd runs
    proc = subprocess.Popen([slapd, "-d", "0", "-f", str(folder / "slapd.conf"),
                             "-h", f"{url}/ {ldaps_url}/"],
                            stdout=subprocess.DEVNULL, stderr=log)
    def answers() -> bool:
        if proc.poll() is not None:
            pytest.fail("slapd exited: " + (folder / "slapd.log").read_text()[-2000:])
        return subprocess.run(["ldapsearch", "-x", "-H", url, "-b", "", "-s", "base"],
                              capture_output=True).returncode == 0

    try:
        wait_for(answers, what=f"slapd on {url}", interval=0.1)
        subprocess.run(["ldapadd", "-x", "-H", url, "-D", ADMIN_DN, "-w", ADMIN_PASSWORD],
                       input=_ldif().encode(), check=True, capture_output=True)
        yield Directory(url, ldaps_url, str(cert), folder)
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
