"""Browser tests: Playwright driving Debian's chromium against a real gunicorn.

No browser is downloaded: Playwright's driver launches /usr/bin/chromium (apt package
`chromium`), headless, with --no-sandbox (we run as root) and no background networking.
Screenshots of the main pages are written to docs/screenshots/.
"""

from __future__ import annotations

import pytest
from servers import Gunicorn, launch_chromium, make_instance


@pytest.fixture(scope="session")
def browser():
    """One headless chromium for the run."""
    with launch_chromium() as instance:
        yield instance


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory, redis_url):
    """A real gunicorn serving the demo data (small lecture recording)."""
    instance = make_instance(tmp_path_factory.mktemp("e2e"), redis_url)
    instance.flask("demo", "--big-mb", "3")
    with Gunicorn(instance, workers=1) as server:
        yield server


@pytest.fixture
def page(browser, demo_server):
    """A fresh browser context (cookies, downloads) in Chinese, on the demo server.

    Every test using it also checks that the pages broke no rule of their Content Security
    Policy (portal/security.py): chromium reports each refused inline script, handler or
    style, or a source outside 'self', on the console.
    """
    context = browser.new_context(locale="zh-CN", accept_downloads=True,
                                  base_url=demo_server.base_url,
                                  viewport={"width": 1200, "height": 800})
    page = context.new_page()
    page.set_default_timeout(15000)
    violations: list[str] = []
    page.on("console", lambda message: violations.append(message.text)
            if "Content Security Policy" in message.text else None)
    yield page
    context.close()
    assert violations == [], violations
