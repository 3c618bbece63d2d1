"""portal/errorpages.py: the portal's error page for what gunicorn and nginx answer
themselves, rendered ahead for everybody, in the language a refused head can be seen to ask
for."""

from __future__ import annotations

import pytest

from portal.errorpages import (
    GUNICORN_CODES,
    NGINX_CODES,
    accept_language,
    choose_language,
    render_pages,
    response_fields,
    write_pages,
)
from portal.security import PAGE_CSP

LANGUAGES = ("zh_CN", "en")


def head(*fields: bytes, line: bytes = b"GET / HTTP/1.1", end: bytes = b"\r\n\r\n") -> bytes:
    return b"\r\n".join([line, *fields]) + end


@pytest.mark.parametrize(("raw", "value"), [
    (head(b"Host: x", b"Accept-Language: en-US,en;q=0.9"), "en-US,en;q=0.9"),
    (head(b"accept-language:zh-CN, en;q=0.5 "), "zh-CN, en;q=0.5"),
    # a request line over the limit, the fields whole behind it
    (head(b"Accept-Language: en", line=b"GET /?q=" + b"%E6%96%87" * 3000 + b" HTTP/1.1"), "en"),
    # a head cut off before its end: only whole lines count
    (head(b"Accept-Language: en", b"X-Filler: aaa", end=b""), "en"),
    (head(b"X-Filler: aaa", b"Accept-Language: en", end=b""), None),
    # anything not plainly one such field is not believed
    (head(b"Accept-Language: en", b"Accept-Language: zh"), None),
    (head(b"Accept-Language: en\rX: y"), None),
    (head(b"X-Pad: a\nAccept-Language: en"), None),
    (head(b"Accept-Language: en\x00"), None),
    (head(b"Accept-Language: \xe4\xb8\xad"), None),
    (head(b"Accept-Language:"), None),
    (head(b"Accept-Language: " + b"a" * 300), None),
    (head(b"X-Accept-Language: en"), None),
    (head(b" Accept-Language: en"), None),
    (b"", None),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc", None),  # a TLS hello on the plain port
])
def test_accept_language_is_read_only_when_it_is_plain(raw, value):
    assert accept_language(raw) == value


@pytest.mark.parametrize(("value", "language"), [
    (None, "zh_CN"), ("", "zh_CN"), ("en", "en"), ("en-US,en;q=0.9,zh-CN;q=0.8", "en"),
    ("zh-CN,zh;q=0.9,en;q=0.8", "zh_CN"), ("fr, en;q=0.5", "en"), ("fr", "zh_CN"),
    ("*", "zh_CN"), (";;;,,,q=", "zh_CN"), ("en;q=abc", "zh_CN"),
])
def test_the_language_is_the_portals_choice(value, language):
    assert choose_language(value, LANGUAGES, "zh_CN") == language


def test_pages_for_every_code_and_language(app):
    pages = render_pages(app, tuple(sorted({*GUNICORN_CODES, *NGINX_CODES})))
    assert {language for language, _ in pages} == set(LANGUAGES)
    for (language, code), body in pages.items():
        page = body.decode("utf-8")
        assert f"<h1>{code} · " in page
        # rendered for nobody: nothing of a session, no form
        assert "csrf" not in page and "<form" not in page and "lang-switch" not in page
        assert f'<html lang="{"zh-CN" if language == "zh_CN" else "en"}">' in page
        other = "en" if language == "zh_CN" else "zh-CN"
        assert f'<p lang="{other}" class="muted">' in page  # the other language's words too
    zh, en = pages["zh_CN", 414].decode(), pages["en", 414].decode()
    assert "414 · 请求地址过长" in zh and "请减少搜索的字数后重试。" in zh
    assert "414 · Address too long" in en and "请求地址过长 · " in en
    assert "431 · 请求头过大" in pages["zh_CN", 431].decode()
    assert "502 · 门户暂无响应" in pages["zh_CN", 502].decode()


def test_the_fields_are_the_portals_page_headers(app):
    fields = response_fields(app, b"x" * 12).decode("latin-1").split("\r\n")
    assert fields[:3] == ["Connection: close", "Content-Type: text/html; charset=utf-8",
                          "Content-Length: 12"]
    assert f"Content-Security-Policy: {PAGE_CSP}" in fields
    assert {"X-Content-Type-Options: nosniff", "X-Frame-Options: DENY",
            "Referrer-Policy: strict-origin-when-cross-origin"} <= set(fields)
    assert not any(f.startswith("Strict-Transport-Security") for f in fields)  # not production
    assert fields[-1] == ""


def test_the_files_nginx_sends(app, tmp_path):
    written = write_pages(app, tmp_path / "pages")
    assert sorted(p.relative_to(tmp_path / "pages").as_posix() for p in written) == sorted(
        f"{language}/{code}.html" for language in LANGUAGES for code in NGINX_CODES)
    assert "414 · 请求地址过长" in (tmp_path / "pages" / "zh_CN" / "414.html").read_text()
    assert oct((tmp_path / "pages" / "en" / "502.html").stat().st_mode & 0o777) == "0o644"
    assert not list((tmp_path / "pages").rglob(".*"))  # no temporary file left
    write_pages(app, tmp_path / "pages")  # again: replaced in place


def test_the_command(app, tmp_path):
    result = app.test_cli_runner().invoke(args=["error-pages", str(tmp_path / "pages")])
    assert result.exit_code == 0, result.output
    assert f"{2 * len(NGINX_CODES)} error pages written" in result.output
    assert (tmp_path / "pages" / "en" / "431.html").is_file()
