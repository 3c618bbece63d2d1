"""A real OpenID Connect provider for the tests: the ``oidc-provider`` npm package run by
node (tests/oidc/: package.json and package-lock.json committed; ``npm ci`` fills
node_modules on first use).

Its development login form takes any listed account id; a helper drives that form and the
consent page as a browser would and returns the redirect back to the portal, code and
state included. Test modules import the fixture from here (``from oidcserver import
oidc_provider``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
import requests

from tests.helpers import free_port, one_at_a_time, require_tool

FOLDER = Path(__file__).resolve().parent / "oidc"
CLIENT_ID, CLIENT_SECRET = "portal", "portal-test-secret"
#: Where the Flask test client's callbacks point (url_for(..., _external=True)).
TEST_CLIENT_CALLBACK = "http://localhost/login/oidc/callback"

ACCOUNTS = {
    "2023201": {"name": "李雷", "preferred_username": "2023201", "groups": ["cs2023b"],
                "affiliation": "student"},
    "t901": {"name": "韩老师", "preferred_username": "t901", "groups": ["teachers"],
             "affiliation": "faculty"},
}


def node_modules() -> None:
    """npm ci into tests/oidc when the lock file's packages are not there yet."""
    require_tool("node")
    npm = require_tool("npm")
    with one_at_a_time(FOLDER / "node_modules.lock"):
        if not (FOLDER / "node_modules" / "oidc-provider" / "package.json").exists():
            done = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                                  cwd=FOLDER, capture_output=True, text=True)
            if done.returncode != 0:
                pytest.fail(f"npm ci failed: {done.stderr[-1500:]}")


@dataclass
class Provider:
    """A running provider: its issuer URL and process."""

    issuer: str
    proc: subprocess.Popen
    log: object
    accounts_file: Path

    def set_accounts(self, accounts: dict) -> None:
        """Change the accounts (id -> claims, the id is the ``sub``): the provider reads
        them again at every sign-in."""
        staged = self.accounts_file.with_suffix(".tmp")
        staged.write_text(json.dumps(accounts))
        staged.replace(self.accounts_file)  # whole, never half-written, for the provider

    def settings(self) -> dict:
        """The portal settings for this issuer."""
        return {"OIDC_ISSUER": self.issuer, "OIDC_CLIENT_ID": CLIENT_ID,
                "OIDC_CLIENT_SECRET": CLIENT_SECRET, "OIDC_SCOPES": "openid profile"}

    def sign_in(self, authorize_url: str, login: str, back_to: str) -> str:
        """Go through the login and consent pages; the URL the provider sends back to
        (starting with ``back_to``)."""
        session = requests.Session()
        answer = session.get(authorize_url, allow_redirects=False, timeout=10)
        url = authorize_url
        for _ in range(12):
            if answer.is_redirect:
                url = urljoin(url, answer.headers["Location"])
                if url.startswith(back_to):
                    return url
                answer = session.get(url, allow_redirects=False, timeout=10)
                continue
            action = re.search(r'<form[^>]*action="([^"]+)"', answer.text)
            assert action, answer.text[:500]
            fields = dict(re.findall(r'<input[^>]*type="hidden"[^>]*name="([^"]+)"[^>]*'
                                     r'value="([^"]*)"', answer.text))
            if 'name="login"' in answer.text:
                fields.update(login=login, password="not-checked")
            url = urljoin(url, action.group(1))
            answer = session.post(url, data=fields, allow_redirects=False, timeout=10)
        raise AssertionError("the provider did not send the browser back")

    def portal_sign_in(self, client, login: str, next_url: str | None = None):
        """Sign in to the portal (a Flask test client) as account ``login`` of this provider,
        as a browser would: the portal's answer to the provider's redirect back."""
        begun = client.get("/login/oidc" + (f"?next={next_url}" if next_url else ""))
        assert begun.status_code == 302, begun.get_data(as_text=True)[:300]
        back = urlsplit(self.sign_in(begun.headers["Location"], login, TEST_CLIENT_CALLBACK))
        return client.get(f"{back.path}?{back.query}")

    def stop(self) -> None:
        """Stop the process."""
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


def start_provider(folder: Path, redirect_uris: list[str], clock_offset: int = 0,
                   accounts: dict | None = None) -> Provider:
    """Start a provider on a free port (its clock ``clock_offset`` seconds off) with
    ``accounts`` (id -> claims; default ACCOUNTS)."""
    node_modules()
    port = free_port()
    log = open(folder / f"oidc-{port}.log", "w")  # noqa: SIM115 - open while it runs
    accounts_file = folder / f"oidc-{port}-accounts.json"
    accounts_file.write_text(json.dumps(ACCOUNTS if accounts is None else accounts))
    env = {**os.environ, "ACCOUNTS_FILE": str(accounts_file),
           "CLOCK_OFFSET_SECONDS": str(clock_offset)}
    proc = subprocess.Popen(["node", "provider.mjs", str(port), *redirect_uris], cwd=FOLDER,
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    issuer = f"http://127.0.0.1:{port}"
    provider = Provider(issuer, proc, log, accounts_file)
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(issuer + "/.well-known/openid-configuration",
                                        timeout=2):
                return provider
        except (urllib.error.URLError, OSError):
            if proc.poll() is not None or time.monotonic() > deadline:
                provider.stop()
                pytest.fail("oidc-provider did not start: "
                            + (folder / f"oidc-{port}.log").read_text()[-2000:])
            time.sleep(0.2)


@pytest.fixture(scope="session")
def oidc_provider(tmp_path_factory):
    """A provider for the Flask test client's callback, for the whole run."""
    provider = start_provider(tmp_path_factory.mktemp("oidc"), [TEST_CLIENT_CALLBACK])
    yield provider
    provider.stop()
