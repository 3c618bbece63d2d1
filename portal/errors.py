"""Error pages in the user's language, JSON for API callers.

A database that cannot be reached (PostgreSQL restarting, a failover, SQLite locked past
its busy timeout) is not a bug: such a request is answered 503 with Retry-After, and the
session's half-done transaction is rolled back so that the next request of this worker
starts clean (tests/functional/test_postgres_restart.py).
"""

from __future__ import annotations

import contextlib
import logging

from flask import Flask, current_app, jsonify, render_template, request
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_wtf.csrf import CSRFError
from sqlalchemy.exc import (
    DBAPIError,
    InterfaceError,
    OperationalError,
    PendingRollbackError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from werkzeug.exceptions import HTTPException, InternalServerError

from .extensions import db

log = logging.getLogger(__name__)

#: Seconds a client is asked to wait when the database is unreachable: a PostgreSQL restart
#: (pg_ctl restart -m fast, the service's restart) takes one to a few, with its checkpoint.
DATABASE_RETRY_AFTER = 5

#: PostgreSQL error classes that say "not now" rather than "wrong query": connection
#: exception, insufficient resources (too many connections), operator intervention (admin
#: shutdown, the database system is starting up, statement timeout).
_UNAVAILABLE_SQLSTATES = ("08", "53", "57")
#: SQLite result codes of the same kind (extended codes such as SQLITE_BUSY_SNAPSHOT too).
_UNAVAILABLE_SQLITE = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_CANTOPEN", "SQLITE_IOERR")

MESSAGES = {
    400: (_l("Bad request"),
          _l("The request could not be understood. Check the form and try again.")),
    401: (_l("Sign-in required"), _l("Please sign in to continue.")),
    403: (_l("Forbidden"), _l("You are not allowed to do this.")),
    404: (_l("Not found"), _l("There is no such page or file, or you may not read it.")),
    405: (_l("Method not allowed"), _l("This address does not accept that kind of request.")),
    412: (_l("Precondition failed"), _l("The file changed since you started; download it again.")),
    413: (_l("Too large"), _l("The upload is larger than the portal accepts.")),
    414: (_l("Address too long"),
          _l("The address, with what was typed into the search, is longer than the portal "
             "accepts. Search with fewer words and try again.")),
    416: (_l("Range not satisfiable"), _l("The requested part of the file does not exist.")),
    417: (_l("Expectation failed"),
          _l("The portal cannot do what the request's Expect header asks for.")),
    429: (_l("Too many requests"), _l("Please wait a moment before trying again.")),
    431: (_l("Request headers too large"),
          _l("Your browser sent more header data than the portal accepts, usually too many "
             "or too large cookies. Delete this site's cookies and try again.")),
    500: (_l("Server error"), _l("Something went wrong on our side. It has been logged.")),
    501: (_l("Not supported"), _l("The request uses a feature the portal does not support.")),
    502: (_l("Portal not answering"),
          _l("The portal is restarting or down for a moment. Try again in a minute.")),
    503: (_l("Service unavailable"),
          _l("The portal is busy or under maintenance. Try again soon.")),
    504: (_l("Portal too slow"),
          _l("The portal did not answer in time. Try again in a moment.")),
}


def wants_json() -> bool:
    """API paths and clients that prefer JSON get JSON errors."""
    if request.path.startswith("/api/"):
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json" and request.accept_mimetypes[best] > request.accept_mimetypes[
        "text/html"
    ]


def render_error(code: int, detail: str | None = None):
    """The response for an error code: a page or JSON."""
    title, message = MESSAGES.get(code, MESSAGES[500] if code >= 500 else MESSAGES[400])
    if wants_json():
        return jsonify(error=str(title), message=str(detail or message)), code
    return render_template("errors/error.html", code=code, title=title,
                           message=detail or message), code


def database_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` means the database cannot answer now, so that the same request may
    succeed in a moment; False for errors a retry would repeat (a constraint, a bad query)."""
    if isinstance(exc, PoolTimeoutError):  # every pooled connection is busy
        return True
    if isinstance(exc, PendingRollbackError):
        # "Can't reconnect until invalid transaction is rolled back": this request lost its
        # connection earlier and some code went on after catching that error.
        return exc.code == "8s2b"
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated or isinstance(exc, InterfaceError):
        return True  # the dialect recognised a lost connection
    if not isinstance(exc, OperationalError):
        return False
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate:
        return sqlstate.startswith(_UNAVAILABLE_SQLSTATES)
    sqlite_code = getattr(exc.orig, "sqlite_errorname", None)
    if sqlite_code:
        return sqlite_code.startswith(_UNAVAILABLE_SQLITE)
    return True  # no server answer at all: the connection could not be opened (refused)


def database_unavailable_response(exc: SQLAlchemyError):
    """503 with Retry-After, after rolling the request's session back.

    The page is the usual error page; should rendering it need the database too (the
    signed-in user not loaded yet), a plain-text answer says the same.
    """
    with contextlib.suppress(SQLAlchemyError):
        db.session.rollback()
    reason = f"{exc.__class__.__name__}: {getattr(exc, 'orig', None) or exc}"
    log.warning("database unavailable on %s %s: %s", request.method, request.path,
                reason.splitlines()[0][:300])
    try:
        response = current_app.make_response(render_error(503))
    except SQLAlchemyError:
        with contextlib.suppress(SQLAlchemyError):
            db.session.rollback()
        response = current_app.make_response(
            ("503 Service Unavailable: the database is unavailable; try again in a moment.\n",
             503, {"Content-Type": "text/plain; charset=utf-8"}))
    response.headers["Retry-After"] = str(DATABASE_RETRY_AFTER)
    return response


def register(app: Flask) -> None:
    """Attach the handlers."""

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if exc.code is None or exc.code < 400:
            return exc
        detail = None
        if isinstance(exc, CSRFError):  # say which token, for the people and scripts it stops
            detail = _("The security token (CSRF) is missing or no longer matches your "
                       "session: reload the page and try again. Scripts send the token of "
                       "the page's csrf-token meta tag in the X-CSRFToken header.")
        response = render_error(exc.code, detail)
        body, code = response
        resp = app.make_response((body, code))
        for name, value in exc.get_headers():  # keep Retry-After, Allow, WWW-Authenticate
            if name.lower() != "content-type":
                resp.headers[name] = value
        return resp

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return render_error(InternalServerError.code)

    @app.errorhandler(SQLAlchemyError)
    def database_error(exc: SQLAlchemyError):
        if database_unavailable(exc):
            return database_unavailable_response(exc)
        return unexpected(exc)

    # Runs before Flask-SQLAlchemy's own teardown (teardowns run in reverse order), which
    # then has nothing left to close.
    app.teardown_appcontext(close_session)


def close_session(_exc: BaseException | None = None) -> None:
    """End the request's database session without turning its answer into a 500.

    Closing rolls the transaction back on its connection; when the server has just ended
    that connection (a restart right after the request's last query), SQLAlchemy
    invalidates the connection and raises, from a teardown, where no error handler runs
    and gunicorn replaces the finished response with an empty 500. The connection is gone
    either way, so the close is repeated (it succeeds then) and the request's answer stands.
    """
    try:
        db.session.remove()
    except SQLAlchemyError as exc:
        log.warning("database connection lost while closing a session: %s",
                    str(exc).splitlines()[0][:300])
        with contextlib.suppress(SQLAlchemyError):
            db.session.remove()
