"""What the portal does with untrusted input and for untrusted browsers.

- Security headers on every page, JSON answer and error (``register``): a CSP without inline
  script, no framing, no MIME sniffing, a Referrer-Policy, and HSTS in production.
  ``deploy/nginx.conf`` sends the same values for what nginx answers itself.
- The ``id`` URL converter: a database id is ASCII digits with a value the id columns can hold,
  so a crafted id (past 64 bits, ``١٢``) is a 404 before it reaches SQL, never a 500.
- ``json_object``: the body of a JSON API call, which must be a JSON object, else 400.
"""

from __future__ import annotations

from typing import NoReturn

from flask import Flask, Response, abort, current_app, jsonify, make_response, request
from werkzeug.routing import BaseConverter, ValidationError

#: The largest id a row can have: ids are INTEGER columns, 32 bits on PostgreSQL.
MAX_ID = 2**31 - 1

#: The page policy. Scripts, styles and everything else only from the portal itself (no inline
#: script or style: templates keep code in static/js and styles in static/css; JSON data
#: blocks are not scripts); nobody may frame a page (clickjacking), change its base URL, post
#: its forms elsewhere, or embed plugins.
PAGE_CSP = ("default-src 'self'; frame-ancestors 'none'; base-uri 'self'; "
            "form-action 'self'; object-src 'none'")
HSTS = "max-age=31536000; includeSubDomains"

#: A signed link is a bearer token in the URL: nothing reached from it may learn the URL.
LINK_REFERRER_POLICY = "no-referrer"

_PAGE_HEADERS = (
    ("Content-Security-Policy", PAGE_CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "strict-origin-when-cross-origin"),
)


class IdConverter(BaseConverter):
    """``<id:name>`` in a route: a row id, 1 to MAX_ID, written in ASCII digits.

    Werkzeug's ``int`` converter matches any Unicode digits (``/files/١٢``) and any size, and
    an id past the column's range then fails in the database (SQLite cannot bind a number past
    64 bits, PostgreSQL answers "integer out of range" past 32): a 500. Here such a path
    matches no route, a 404, whoever asks.
    """

    regex = r"[0-9]{1,10}"
    weight = 50  # as Werkzeug's number converters: static path parts still win

    def to_python(self, value: str) -> int:
        """The id, or ValidationError (no route matches: 404) when no row can have it."""
        number = int(value)
        if not 1 <= number <= MAX_ID:
            raise ValidationError()
        return number

    def to_url(self, value: int) -> str:
        """The id as it appears in a URL."""
        return str(int(value))


def parse_id(raw: str) -> int | None:
    """An id from a query string or a form (``?id=12``), with the same rule as the converter;
    None when no row can have it."""
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 10):
        return None
    number = int(raw)
    return number if 1 <= number <= MAX_ID else None


#: The largest JSON body an API call may send (the link API's are a few dozen bytes).
JSON_MAX_BYTES = 64 * 1024


#: Bodies Flask reads as a form before any view runs (the CSRF check looks for its field).
_FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})


def json_object() -> dict:
    """The request body as a JSON object; an empty body is ``{}``. Anything else (an array, a
    string, a number, ``null``, text that is not JSON, a form) aborts with 400 and a JSON
    error, a body over JSON_MAX_BYTES with 413.

    A body labelled text/plain or not labelled at all is read as JSON too; a form is refused
    with a hint, since ``curl -d '{...}'`` without ``-H 'Content-Type: application/json'``
    sends one, and ignoring it would silently drop the options it carries.
    """
    if request.content_length is not None and request.content_length > JSON_MAX_BYTES:
        abort(413)
    if request.mimetype in _FORM_TYPES:
        if request.content_length or request.form or request.files:
            bad_request("the request body must be a JSON object (Content-Type: "
                        "application/json), not a form")
        return {}
    if not request.get_data(cache=True):
        return {}
    payload = request.get_json(force=True, silent=True)
    if not isinstance(payload, dict):
        bad_request("the request body must be a JSON object")
    return payload


def bad_request(message: str) -> NoReturn:
    """Abort with 400 and ``{"error": message}`` (an API call's malformed input)."""
    abort(make_response(jsonify(error=message), 400))


def page_headers(production: bool) -> list[tuple[str, str]]:
    """The security headers of a page: every page the app answers, and the error pages the
    web servers send themselves (portal/errorpages.py)."""
    headers = list(_PAGE_HEADERS)
    if production:
        headers.append(("Strict-Transport-Security", HSTS))
    return headers


def register(app: Flask) -> None:
    """Register the ``id`` converter (before any blueprint uses it) and the header hook."""
    app.url_map.converters["id"] = IdConverter
    app.after_request(add_security_headers)


def add_security_headers(response: Response) -> Response:
    """The page headers on every response the portal answers, except file representations.

    A download (200, 206, 304, 412, 416; views.common_headers, shared with the fast path in
    download/fast.py, which answers in front of Flask and never passes through here) already
    carries its own policy, marked by its X-Content-Type-Options: a sandbox CSP for active
    content and nothing that would stop a browser's PDF viewer (``object-src 'none'`` does).
    It is left exactly as built, so the fast path and the view send identical headers.
    Everything else the download blueprint answers (the bad-link page, refusals, the link
    API's JSON) is a page. A header a response already carries is never replaced, except that
    whatever answers a signed link (file or page) is sent with ``Referrer-Policy: no-referrer``.
    """
    headers = response.headers
    by_link = request.endpoint == "download.by_link"
    representation = request.blueprint == "download" and "X-Content-Type-Options" in headers
    if not representation:
        for name, value in page_headers(current_app.config["ENV"] == "production"):
            headers.setdefault(name, value)
    if by_link:
        headers["Referrer-Policy"] = LINK_REFERRER_POLICY
    return response
