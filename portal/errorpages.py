"""The portal's error page for the answers the web servers give without asking the app.

gunicorn refuses a request head it cannot or will not parse (400, 414 for a request line
over ``limit_request_line``, 431 for fields over its limits, and a few rarer ones) before
Flask sees it, and nginx answers for a portal node that is down or slow (502, 504) and for
its own limits (400, 413, 414, 494). Both send the portal's own error page
(templates/errors/error.html) with the portal's security headers instead of their bare
English text:

- gunicorn: the portal's worker (portal/worker.py) renders the pages with ``render_pages``
  when it loads the app and sends them from memory when gunicorn refuses a request; nothing
  is rendered while an error is handled, and nothing is read of the refused head but its
  Accept-Language, when that can be read safely (``accept_language``).
- nginx: ``flask --app wsgi error-pages DIR`` writes the same pages as files,
  ``DIR/<language>/<code>.html``, which deploy/nginx.conf's ``error_page`` serves.

Each page is in the language the request asks for (zh_CN when it cannot be told) and
repeats its title and message in the other language, since a refused head often says
nothing about its language (a request line over the limit is refused before its fields).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import click
from flask import Flask, current_app, render_template
from flask.cli import with_appcontext
from flask_babel import force_locale
from werkzeug.datastructures import LanguageAccept
from werkzeug.http import parse_accept_header

from .config import settings
from .errors import MESSAGES
from .security import page_headers

#: What gunicorn answers itself (portal/worker.py): a malformed head (400), a forbidden proxy
#: or TLS client (403), a request line or fields over its limits (414, 431), Expect (417), an
#: error before the response began (500), an unknown transfer coding (501).
GUNICORN_CODES = (400, 403, 414, 417, 431, 500, 501)
#: What nginx answers itself (deploy/nginx.conf's error_page): its header and body limits
#: (400, 413, 414, and 431 in place of its 494), and a portal node that is down or slow.
NGINX_CODES = (400, 413, 414, 431, 500, 502, 503, 504)

#: The most of a refused head read for its Accept-Language.
_HEAD_READ = 65536
#: An Accept-Language value as browsers send it: language tags, q-values, commas, spaces.
_LANGUAGE_VALUE = re.compile(rb"[ \t]*([A-Za-z0-9*;=., \t-]{1,256}?)[ \t]*")


def render_pages(app: Flask, codes: tuple[int, ...]) -> dict[tuple[str, int], bytes]:
    """{(language, code): the page's UTF-8 bytes} for every language of the portal.

    Rendered in a request context of its own (no user, no session), so the page holds
    nothing of anyone's: no CSRF token, no sign-in state, no language switch that would
    need one (``server_page`` leaves them out of the layout).
    """
    languages = settings(app).languages
    texts = {}
    with app.test_request_context("/"):
        for language in languages:
            with force_locale(language):
                for code in codes:
                    title, message = MESSAGES.get(code, MESSAGES[500 if code >= 500 else 400])
                    texts[language, code] = (str(title), str(message))
        pages = {}
        for language in languages:
            other = next((lang for lang in languages if lang != language), None)
            for code in codes:
                title, message = texts[language, code]
                also = None
                if other is not None:
                    also = {"lang": _html_lang(other), "title": texts[other, code][0],
                            "message": texts[other, code][1]}
                with force_locale(language):
                    html = render_template("errors/error.html", code=code, title=title,
                                           message=message, server_page=True, also=also)
                pages[language, code] = html.encode("utf-8")
    return pages


def _html_lang(language: str) -> str:
    return "zh-CN" if language == "zh_CN" else language


def response_fields(app: Flask, body: bytes) -> bytes:
    """The fields of an error page sent by gunicorn's worker: gunicorn's own (the
    connection closes), the page's type and length, the portal's security headers."""
    fields = [("Connection", "close"), ("Content-Type", "text/html; charset=utf-8"),
              ("Content-Length", str(len(body))),
              *page_headers(app.config["ENV"] == "production")]
    return "".join(f"{name}: {value}\r\n" for name, value in fields).encode("latin-1")


def accept_language(head: bytes) -> str | None:
    """The Accept-Language value of a raw request head gunicorn refused, None unless it can
    be read without doubt: the field once, on a line of its own ended by CRLF, its value of
    nothing but what language tags and q-values are made of.

    A refused head may be anything (a bare CR inside a value, obs-fold, a field cut off by a
    limit); whatever is not plainly one such line is not believed, and the page is then in
    the default language.
    """
    head = head[:_HEAD_READ]
    end = head.find(b"\r\n\r\n")
    lines = (head if end < 0 else head[:end + 2]).split(b"\r\n")[1:-1]
    found = [line[16:] for line in lines if line[:16].lower() == b"accept-language:"]
    if len(found) != 1:
        return None
    match = _LANGUAGE_VALUE.fullmatch(found[0])
    return match.group(1).decode("ascii") if match else None


def choose_language(value: str | None, languages: tuple[str, ...], default: str) -> str:
    """The portal's language for an Accept-Language value, as the app chooses it
    (portal.select_locale without a session): the best match, else ``default``."""
    if not value:
        return default
    try:
        return parse_accept_header(value, LanguageAccept).best_match(languages) or default
    except ValueError:
        return default


def write_pages(app: Flask, folder: Path, codes: tuple[int, ...] = NGINX_CODES) -> list[Path]:
    """Write ``folder/<language>/<code>.html`` for nginx; each file replaced whole (renamed
    into place), so nginx never sends half of one. The paths written."""
    written = []
    for (language, code), body in sorted(render_pages(app, codes).items()):
        target = folder / language / f"{code}.html"
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{code}.")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(body)
            os.chmod(temporary, 0o644)  # nginx's workers run as another user
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        written.append(target)
    return written


@click.command("error-pages")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@with_appcontext
def error_pages_command(folder: Path) -> None:
    """Write the error pages nginx sends (deploy/nginx.conf) into FOLDER."""
    written = write_pages(current_app._get_current_object(), folder)
    click.echo(f"{len(written)} error pages written to {folder}")
