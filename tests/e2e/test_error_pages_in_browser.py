"""A search too long for the web server, in a browser: the portal's own 414 page, in Chinese,
styled, with its way back, whether gunicorn refuses it (portal/worker.py) or nginx in front
of it (deploy/nginx.conf). The page fixture also holds the page to its CSP."""

from __future__ import annotations

import urllib.parse

import pytest
from servers import Nginx, require_tool

from tests.helpers import screenshot

#: 5,000 Chinese characters: 45,000 bytes of URL, over both servers' 20480.
SEARCH = "/?q=" + urllib.parse.quote("数据结构期末复习" * 625)


@pytest.fixture(scope="module")
def nginx(demo_server, tmp_path_factory):
    """nginx from deploy/nginx.conf in front of the demo's gunicorn."""
    require_tool("nginx")
    with Nginx(tmp_path_factory.mktemp("nginx"), demo_server) as server:
        yield server


def assert_the_414_page(page, url: str) -> None:
    response = page.goto(url)
    assert response.status == 414
    assert page.locator("html").get_attribute("lang") == "zh-CN"
    assert page.title() == "414 请求地址过长 · 校园文件下载"
    assert page.locator("h1").inner_text() == "414 · 请求地址过长"
    card = page.locator("section.error")
    assert "请求地址（包括输入的搜索内容）超过了门户能接受的长度。请减少搜索的字数后重试。" in (
        card.inner_text())
    assert "Address too long" in card.locator("p[lang=en]").inner_text()
    # the portal's stylesheet applies (the card is laid out as on every page)
    assert page.evaluate("[...document.styleSheets].some(s => s.cssRules.length > 0)")
    assert page.locator("#lang-switch").count() == 0  # a page rendered for nobody has no form
    page.locator("#back").click()
    page.wait_for_load_state()
    assert urllib.parse.urlsplit(page.url).path == "/"
    assert page.locator("input[name=q]").count() == 1  # the catalog, to search again


def test_the_414_page_from_gunicorn(page):
    assert_the_414_page(page, SEARCH)
    page.goto(SEARCH)
    screenshot(page, "error-414")


def test_the_414_page_through_nginx(page, nginx):
    assert_the_414_page(page, nginx.base_url + SEARCH)
