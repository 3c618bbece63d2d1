"""What the web servers answer themselves is the portal's error page (portal/errorpages.py),
with the portal's security headers, in the request's language: gunicorn's refusals of a
request head (portal/worker.py), directly and through nginx, and nginx's own errors
(deploy/nginx.conf's error_page), among them a 502 while the portal is down. A search of
2,000 Chinese characters fits both servers' request line; one of 5,000 does not.

The requests go over raw sockets (wire.exchange): gunicorn refuses a head and closes while
the client may still be sending it, and what it answered must still be read.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from types import SimpleNamespace

import pytest
from servers import Gunicorn, Nginx, require_tool
from wire import exchange, req

from portal.security import page_headers

pytestmark = pytest.mark.slow

#: 2,000 Chinese characters: 18,000 bytes percent-encoded, within the 20480 of both servers.
SEARCH_2000 = "/?q=" + urllib.parse.quote("数据结构期末考试" * 250)
#: 5,000: 45,000 bytes.
SEARCH_5000 = "/?q=" + urllib.parse.quote("数据结构期末复习" * 625)
TITLES = {
    "zh_CN": {400: "请求有误", 414: "请求地址过长", 431: "请求头过大", 502: "门户暂无响应"},
    "en": {400: "Bad request", 414: "Address too long", 431: "Request headers too large",
           502: "Portal not answering"},
}
#: Over gunicorn's field limit (8190) but within nginx's buffers (20k), and over both.
OVER_GUNICORN, OVER_NGINX = 9000, 21000


@pytest.fixture(scope="module")
def site(portal_instance, tmp_path_factory):
    """gunicorn with the portal's worker, and nginx (deploy/nginx.conf) in front of it."""
    require_tool("nginx")
    backend = Gunicorn(portal_instance, workers=1)
    with contextlib.ExitStack() as running:
        running.callback(backend.stop)
        backend.start()
        nginx = running.enter_context(Nginx(tmp_path_factory.mktemp("nginx"), backend))
        yield SimpleNamespace(direct=backend.base_url, nginx=nginx.base_url, backend=backend)


def ask(base_url: str, target: str, *fields: str) -> tuple[str, list, bytes, bool]:
    """(status line, fields but Date, body, whether the server closed) of one GET."""
    server = SimpleNamespace(port=urllib.parse.urlsplit(base_url).port)
    responses, closed = exchange(server, req("server-errors", target, *fields), 1)
    assert len(responses) == 1, (target[:80], responses)
    return (*responses[0], closed)


def assert_portal_page(answer: tuple, code: int, language: str = "zh_CN") -> None:
    """The portal's error page for ``code`` in ``language``, each security header once."""
    status, fields, body, _ = answer
    assert status.split()[1] == str(code), (status, body[:300])
    named = {name.lower(): value for name, value in fields}
    assert named["content-type"] == "text/html; charset=utf-8"
    for name, value in page_headers(production=False):
        assert [v for n, v in fields if n.lower() == name.lower()] == [value], (name, fields)
    page = body.decode("utf-8")
    assert f"<h1>{code} · {TITLES[language][code]}</h1>" in page, page[:600]
    assert f'<html lang="{"zh-CN" if language == "zh_CN" else "en"}">' in page
    assert "<form" not in page and "csrf" not in page  # rendered for nobody
    assert b"gunicorn" not in body.lower() and b"nginx" not in body.lower()


@pytest.mark.parametrize("via", ["direct", "nginx"])
def test_a_search_of_5000_characters_is_414_with_the_portals_page(site, via):
    answer = ask(getattr(site, via), SEARCH_5000)
    assert_portal_page(answer, 414)
    if via == "direct":  # gunicorn's refusal, said differently: it still closes
        assert ("Connection", "close") in answer[1] and answer[3]


@pytest.mark.parametrize("via", ["direct", "nginx"])
def test_a_search_of_2000_chinese_characters_is_served(site, via):
    status, _, body, _ = ask(getattr(site, via), SEARCH_2000)
    assert status.split()[1] == "200", (status, body[:300])
    assert "数据结构期末考试" in body.decode("utf-8")  # the search box holds what was asked


@pytest.mark.parametrize(("via", "size"), [("direct", OVER_GUNICORN),
                                           ("nginx", OVER_GUNICORN), ("nginx", OVER_NGINX)])
def test_a_field_over_the_limit_is_431_with_the_portals_page(site, via, size):
    # through nginx: one gunicorn refuses (passed on as it is), one nginx does (its 494)
    answer = ask(getattr(site, via), "/", "X-Filler: " + "a" * size)
    assert_portal_page(answer, 431)


@pytest.mark.parametrize(("via", "size"), [("direct", OVER_GUNICORN), ("nginx", OVER_NGINX)])
def test_the_page_is_in_the_language_the_head_asks_for(site, via, size):
    filler = "X-Filler: " + "a" * size
    assert_portal_page(ask(getattr(site, via), "/", "Accept-Language: en-US,en;q=0.9", filler),
                       431, "en")
    assert_portal_page(ask(getattr(site, via), "/", "Accept-Language: zh-CN,zh;q=0.9,en;q=0.8",
                           filler), 431, "zh_CN")
    if via == "nginx":  # nginx refuses a request line over the limit before its fields
        assert_portal_page(ask(site.nginx, SEARCH_5000, "Accept-Language: en"), 414)


@pytest.mark.parametrize(("via", "field"), [
    ("direct", "X-Pad: a\x01b"),  # a control character (gunicorn's parser)
    ("nginx", "Host: other.test"),  # a second Host (nginx's)
])
def test_a_malformed_head_is_400_with_the_portals_page(site, via, field):
    assert_portal_page(ask(getattr(site, via), "/", field), 400)


def test_nginx_says_502_with_the_portals_page_while_the_portal_is_down(site):
    """Last in the module: it stops the portal."""
    site.backend.stop()
    assert_portal_page(ask(site.nginx, "/"), 502)
    assert_portal_page(ask(site.nginx, "/", "Accept-Language: en"), 502, "en")
    # a download asks the portal for a grant first, then the portal itself: both down
    assert_portal_page(ask(site.nginx, "/files/1/download"), 502)
