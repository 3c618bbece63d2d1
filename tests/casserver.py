"""A real CAS server for the tests: django-cas-server (PyPI) in a virtualenv of its own, run
by Django's development server on a free loopback port.

The virtualenv is made once with ``python -m venv`` and pip (PyPI only) under
``.cache/tests/`` of the repository (``PORTAL_TEST_CACHE`` to put it elsewhere) and reused
after; the Django project (settings, an in-memory user table with Chinese names and groups,
the service pattern that releases the attributes and turns single logout on) is written
into the test's temporary folder. Test modules import the fixture from here
(``from casserver import cas_server``).
"""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.helpers import free_port, one_at_a_time

PACKAGES = ["django-cas-server==3.1.0", "Django==5.2.19"]
ROOT = Path(__file__).resolve().parent.parent

#: The CAS accounts: user id -> (password, attributes).
USERS = {
    "2023101": ("cas-pw-101", {"displayName": "张伟", "groups": ["cs2023a", "dept-cs"],
                              "eduPersonAffiliation": "student"}),
    "t900": ("cas-pw-900", {"displayName": "孙老师", "groups": ["teachers"],
                           "eduPersonAffiliation": "faculty"}),
}

SETTINGS = """
SECRET_KEY = "cas-test-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["django.contrib.admin", "django.contrib.auth", "django.contrib.contenttypes",
                  "django.contrib.sessions", "django.contrib.messages",
                  "django.contrib.staticfiles", "cas_server"]
MIDDLEWARE = ["django.contrib.sessions.middleware.SessionMiddleware",
              "django.middleware.common.CommonMiddleware",
              "django.middleware.csrf.CsrfViewMiddleware",
              "django.contrib.auth.middleware.AuthenticationMiddleware",
              "django.contrib.messages.middleware.MessageMiddleware",
              "django.middleware.locale.LocaleMiddleware"]
ROOT_URLCONF = "casurls"
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True,
              "OPTIONS": {"context_processors": [
                  "django.template.context_processors.request",
                  "django.contrib.auth.context_processors.auth",
                  "django.contrib.messages.context_processors.messages"]}}]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "DBPATH"}}
STATIC_URL = "/static/"
USE_TZ = True
CAS_AUTH_CLASS = "casusers.CampusUser"
CAS_SLO_TIMEOUT = 5
CAS_TICKET_VALIDITY = TICKET_VALIDITY
CAS_NEW_VERSION_HTML_WARNING = False
CAS_NEW_VERSION_EMAIL_WARNING = False
"""

AUTH = '''
"""The campus accounts of the test CAS."""
from cas_server.auth import AuthUser

USERS = USERS_LITERAL


class CampusUser(AuthUser):
    def test_password(self, password):
        return self.username in USERS and USERS[self.username][0] == password

    def attributs(self):
        return dict(USERS[self.username][1])
'''

URLS = """
from django.urls import include, path
urlpatterns = [path("cas/", include("cas_server.urls", namespace="cas_server"))]
"""

PATTERN = """
from cas_server.models import ReplaceAttributName, ServicePattern
pattern = ServicePattern.objects.create(
    pos=1, name="portal", pattern=r"^https?://(127\\.0\\.0\\.1|localhost)(:[0-9]+)?/.*",
    single_log_out=True)
for name in ("displayName", "groups", "eduPersonAffiliation"):
    ReplaceAttributName.objects.create(name=name, replace="", service_pattern=pattern)
"""


def cas_python() -> Path:
    """The cached virtualenv's python with django-cas-server installed (made on first use)."""
    cache = Path(os.environ.get("PORTAL_TEST_CACHE") or ROOT / ".cache" / "tests")
    venv = cache / ("cas-" + "-".join(p.replace("==", "_") for p in PACKAGES))
    python = venv / "bin" / "python"
    with one_at_a_time(venv.with_name(venv.name + ".lock")):
        if not (venv / "ready").exists():
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
            done = subprocess.run([str(python), "-m", "pip", "install", "-q",
                                   "--disable-pip-version-check", *PACKAGES],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                pytest.fail(f"cannot install django-cas-server: {done.stderr[-1500:]}")
            (venv / "ready").write_text("ok\n")
    return python


@dataclass
class CasServer:
    """A running django-cas-server: its base URL (ends with ``/``) and a helper that signs
    in through its real login form as a browser does."""

    url: str

    def ticket_for(self, service: str, username: str, password: str) -> str:
        """Sign in at CAS for ``service``; the URL CAS redirects to (with ``ticket=``)."""
        session = requests.Session()
        page = session.get(self.url + "login", params={"service": service}, timeout=10)
        fields = dict(re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', page.text))
        fields.update(username=username, password=password)
        answer = session.post(page.url, data={k: html.unescape(v) for k, v in fields.items()},
                              allow_redirects=False, timeout=10)
        assert answer.status_code == 302, answer.text[:500]
        return answer.headers["Location"]


@pytest.fixture(scope="session")
def cas_server(tmp_path_factory):
    """django-cas-server on a free port, for the whole run."""
    python = cas_python()
    folder = tmp_path_factory.mktemp("cas")
    (folder / "casproject.py").write_text(
        SETTINGS.replace("DBPATH", str(folder / "cas.sqlite3")).replace("TICKET_VALIDITY", "60"))
    (folder / "casusers.py").write_text(AUTH.replace("USERS_LITERAL", repr(USERS)))
    (folder / "casurls.py").write_text(URLS)
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "casproject", "PYTHONPATH": str(folder)}
    admin = [str(python), "-m", "django"]
    for step in (["migrate", "-v", "0"], ["shell", "-c", PATTERN]):
        done = subprocess.run(admin + step, env=env, cwd=folder, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"django-cas-server {step[0]} failed: {done.stderr[-1500:]}")
    port = free_port()
    log = open(folder / "cas.log", "w")  # noqa: SIM115 - open while the server runs
    proc = subprocess.Popen([*admin, "runserver", "--noreload", f"127.0.0.1:{port}"],
                            env=env, cwd=folder, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/cas/"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "login", timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("django-cas-server did not start: "
                                + (folder / "cas.log").read_text()[-2000:])
                time.sleep(0.2)
        yield CasServer(url)
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
