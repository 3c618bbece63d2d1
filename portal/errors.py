"""Error pages in the user's language, JSON for API callers."""

from __future__ import annotations

import logging

from flask import Flask, jsonify, render_template, request
from flask_babel import lazy_gettext as _l
from werkzeug.exceptions import HTTPException, InternalServerError

log = logging.getLogger(__name__)

MESSAGES = {
    400: (_l("Bad request"),
          _l("The request could not be understood. Check the form and try again.")),
    401: (_l("Sign-in required"), _l("Please sign in to continue.")),
    403: (_l("Forbidden"), _l("You are not allowed to do this.")),
    404: (_l("Not found"), _l("There is no such page or file, or you may not read it.")),
    405: (_l("Method not allowed"), _l("This address does not accept that kind of request.")),
    412: (_l("Precondition failed"), _l("The file changed since you started; download it again.")),
    413: (_l("Too large"), _l("The upload is larger than the portal accepts.")),
    416: (_l("Range not satisfiable"), _l("The requested part of the file does not exist.")),
    429: (_l("Too many requests"), _l("Please wait a moment before trying again.")),
    500: (_l("Server error"), _l("Something went wrong on our side. It has been logged.")),
    503: (_l("Service unavailable"),
          _l("The portal is busy or under maintenance. Try again soon.")),
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


def register(app: Flask) -> None:
    """Attach the handlers."""

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if exc.code is None or exc.code < 400:
            return exc
        response = render_error(exc.code)
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
