"""deploy/nginx.conf and the portal agree on what nginx cannot be told per request."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from portal.download.grant import GRANT_EXTENSIONS, GRANT_OBJECTS

CONF = (Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf").read_text()


def test_grant_types_block_is_the_portals_table():
    # The granted object's location names its media types by extension; the portal puts
    # that extension in the URI, so each type must map to exactly its own extension.
    location = CONF[CONF.index(f"location ~ \"^{GRANT_OBJECTS}/"):]
    start = location.index("types {") + len("types {")
    block = location[start:location.index("}", start)]
    pairs = [line.strip().rstrip(";").split() for line in block.strip().splitlines()]
    assert {mime: ext for mime, ext in pairs} == GRANT_EXTENSIONS
    assert len(set(GRANT_EXTENSIONS.values())) == len(GRANT_EXTENSIONS)
    assert re.search(r"default_type application/octet-stream;", location)


def test_grant_headers_reach_the_client():
    # Every X-Portal-* header the grant sends is read by an auth_request_set, and every
    # variable set that way is used (the view's X-Portal-Event and X-Portal-Lease are only
    # logged).
    names = set(re.findall(r"\$upstream_http_x_portal_([a-z_]+)", CONF)) - {"event", "lease"}
    assert names == {"object", "etag", "last_modified", "accept_ranges", "cache_control",
                     "disposition", "csp", "digest", "grant"}
    for variable in re.findall(r"auth_request_set (\$\w+)", CONF):
        assert CONF.count(variable) >= 2, variable



def parse(text: str) -> list:
    """nginx's configuration syntax as a tree: ``[(name, [args], children or None)]``.
    Quoted arguments keep their braces (``"^/x{2}$"``); ``#`` starts a comment outside quotes."""
    tokens = re.findall(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|#[^\n]*|[{};]|[^\s{};"\'#]+',
                        text)
    tokens = [t for t in tokens if not t.startswith("#")]

    def block(at: int) -> tuple[list, int]:
        items, words = [], []
        while at < len(tokens):
            token = tokens[at]
            at += 1
            if token == ";":
                items.append((words[0], words[1:], None))
                words = []
            elif token == "{":
                children, at = block(at)
                items.append((words[0], words[1:], children))
                words = []
            elif token == "}":
                return items, at
            else:
                words.append(token)
        return items, at

    return block(0)[0]


def add_headers(children: list) -> dict[str, list[str]]:
    """{header name: [its other arguments joined]} of a block's own add_header directives."""
    found: dict[str, list[str]] = {}
    for name, args, _ in children:
        if name == "add_header":
            found.setdefault(args[0], []).append(" ".join(args[1:]))
    return found


SECURITY = ("Content-Security-Policy", "X-Content-Type-Options", "X-Frame-Options",
            "Referrer-Policy", "Strict-Transport-Security")


def test_security_headers_in_every_location():
    # nginx's inheritance rule: a location with an add_header of its own loses all the
    # server's. So the server sends every security header, and each such location repeats
    # them all; the ones that send files leave out only the page CSP (theirs is the
    # portal's: a sandbox for active content, none for a PDF the browser's viewer shows).
    from portal.security import HSTS, PAGE_CSP

    [(_, _, http)] = [item for item in parse(CONF) if item[0] == "http"]
    [(_, _, server)] = [item for item in http if item[0] == "server"]
    page = add_headers(server)
    assert set(page) == set(SECURITY)
    assert all(value.endswith(" always") for values in page.values() for value in values)
    locations = [(" ".join(args), children) for name, args, children in server
                 if name == "location"]
    assert len(locations) >= 9
    for where, children in locations:
        own = add_headers(children)
        if not own:
            continue  # inherits the server's
        missing = set(SECURITY) - set(own)
        assert missing <= {"Content-Security-Policy"}, (where, missing)
        for name in set(SECURITY) & set(own):  # on errors too (nginx's own 404 or 416)
            assert all(v.endswith(" always") for v in own[name]), (where, name)
        if "Content-Security-Policy" in own:  # a file's own CSP, from the portal or its grant
            assert own["Content-Security-Policy"] in (
                ["$grant_csp always"], ["$upstream_http_content_security_policy always"]), where
    # the fill-in values are the portal's own (portal/security.py)
    maps = {args[1]: children for name, args, children in http if name == "map"}
    assert ("\"\"", [f'"{PAGE_CSP}"'], None) in maps["$security_csp"]
    assert ("on", [f'"{HSTS}"'], None) in maps["$security_hsts_default"]
    assert ("~^/d/", ["no-referrer"], None) in maps["$security_referrer_default"]


def server_block() -> tuple[list, list]:
    """(the http block, the server block) of deploy/nginx.conf."""
    [(_, _, http)] = [item for item in parse(CONF) if item[0] == "http"]
    [(_, _, server)] = [item for item in http if item[0] == "server"]
    return http, server


def test_what_nginx_answers_itself_is_the_portals_page():
    # Every status nginx gives on its own is the page portal/errorpages.py writes for it, in
    # the language of $portal_error_language; a field over the limit (494) as 431, as
    # gunicorn answers it.
    from portal.errorpages import NGINX_CODES

    _, server = server_block()
    pages = {args[0]: args[1:] for name, args, _ in server if name == "error_page"}
    page = "/_portal/errors/$portal_error_language/{}.html"
    assert pages == {**{str(code): [page.format(code)] for code in NGINX_CODES if code != 431},
                     "494": ["=431", page.format(431)]}
    [errors] = [children for name, args, children in server
                if name == "location" and args == ["^~", "/_portal/errors/"]]
    assert ("internal", [], None) in errors
    assert ("alias", ["/srv/portal/error-pages/"], None) in errors
    assert not add_headers(errors)  # the server's security headers: these are pages
    # the grant location's own error_page hands errors to @portal_download; should the portal
    # be down, that one's 502 is the server's page again
    [grants] = [children for name, args, children in server
                if name == "location" and "auth_request" in {c[0] for c in children or ()}]
    assert ("recursive_error_pages", ["on"], None) in grants


def test_a_request_line_nginx_passes_is_one_gunicorn_takes():
    http, _ = server_block()
    [(count, size)] = [args for name, args, _ in http if name == "large_client_header_buffers"]
    gunicorn = (Path(__file__).resolve().parents[2] / "gunicorn.conf.py").read_text()
    limit = int(re.search(r"^limit_request_line = (\d+)$", gunicorn, re.M).group(1))
    assert int(size.removesuffix("k")) * 1024 == limit >= len("GET /?q= HTTP/1.1") + 2000 * 9
    assert int(count) >= 2


@pytest.mark.parametrize(("accept", "language"), [
    ("", "zh_CN"), ("en", "en"), ("en-US,en;q=0.9,zh-CN;q=0.8", "en"),
    ("zh-CN,zh;q=0.9,en;q=0.8", "zh_CN"), ("fr, en;q=0.5", "en"), ("fr", "zh_CN"),
    ("  EN-gb", "en"), ("eng", "zh_CN"), ("fr,zh-TW,en", "zh_CN"), ("de;q=0.9, en", "en"),
])
def test_the_error_pages_language(accept, language):
    # the map's regular expression (PCRE in nginx; this one is also Python's syntax)
    http, _ = server_block()
    [entries] = [children for name, args, children in http
                 if name == "map" and args == ["$http_accept_language", "$portal_error_language"]]
    chosen = "zh_CN" if ("default", ["zh_CN"], None) in entries else None
    for key, (value,), _ in entries:
        if key.startswith('"~*') and re.search(key[3:-1].replace("\\t", "\t"), accept, re.I):
            chosen = value
            break
    assert chosen == language
