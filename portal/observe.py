"""Every request the app answers, seen once: counted by route class and status class, timed
to its response head (instruments.py), and under PORTAL_LOG_FORMAT=json given the request id
that each of its log lines carries and its answer echoes (logs.py).

A WSGI middleware just inside ProxyFix, so that every door passes it: Flask's views, the
fast door, nginx's grants, and the lean cycle of portal/worker.py, which calls the same
stack. A request the fast door declines in the lean cycle (``download.fast.DECLINED``, no
status) is not counted there: gunicorn's cycle then calls the stack again, and that call
counts it. Requests gunicorn answers without the app (a head its parser refuses) are in its
access log only.
"""

from __future__ import annotations

from time import perf_counter

from sqlalchemy import event
from sqlalchemy.engine import Engine

from . import logs
from .instruments import TALLY


def route_class(path: str) -> str:
    """The class a request path is counted under: download (files, zips, signed links),
    grant (nginx's), api, static, page (the site's pages), or other (health, metrics and
    paths the portal does not serve)."""
    if path.startswith("/files/"):
        if path.endswith("/download") or path == "/files/zip":
            return "download"
        return "page"
    if path.startswith("/d/"):
        return "download"
    if path.startswith("/api/"):
        return "api"
    if path.startswith("/static/") or path == "/favicon.ico":
        return "static"
    if path.startswith("/_portal/grant"):
        return "grant"
    if path == "/" or path.startswith(_PAGES):
        return "page"
    return "other"


#: The first segments of the site's pages (besides / and /files/<id>).
_PAGES = ("/admin/", "/login", "/logout", "/me/", "/account/", "/lang/")


class RequestObserver:
    """``app.wsgi_app``: counts and times each request, and under JSON logs gives it its
    request id (``X-Request-ID`` in the environ, the log lines and the answer)."""

    def __init__(self, wsgi_app, *, request_ids: bool) -> None:
        self.wsgi_app = wsgi_app
        self.request_ids = request_ids

    def __call__(self, environ, start_response):
        began = perf_counter()
        answered = []
        if self.request_ids:
            request_id = logs.begin_request(environ)

            def start(status, headers, exc_info=None):
                answered.append(status)
                return start_response(status, [*headers, ("X-Request-ID", request_id)],
                                      exc_info)
        else:
            def start(status, headers, exc_info=None):
                answered.append(status)
                return start_response(status, headers, exc_info)
        try:
            body = self.wsgi_app(environ, start)
        except BaseException:
            TALLY.request(route_class(environ.get("PATH_INFO", "")), "5",
                          perf_counter() - began)
            raise
        if answered:
            TALLY.request(route_class(environ.get("PATH_INFO", "")), answered[-1][0],
                          perf_counter() - began)
        return body


def _watch_pool(connection) -> None:
    TALLY.watch_pool(connection.engine.pool)


def register(app) -> None:
    """Wrap the app's WSGI stack (call before ProxyFix wraps it) and report the database
    pools' use."""
    from .config import settings

    if not event.contains(Engine, "engine_connect", _watch_pool):
        event.listen(Engine, "engine_connect", _watch_pool)
    app.wsgi_app = RequestObserver(app.wsgi_app,
                                   request_ids=settings(app).log_format == "json")
