"""Structured logs (``PORTAL_LOG_FORMAT=json``) and the request id that ties a request's lines.

Text is the default and changes nothing: gunicorn's access and error lines as they always
were, the app's warnings as Python prints them. With ``json`` every line is one JSON object,
made by python-json-logger's formatter (on orjson): gunicorn's error log and access log
(portal/accesslog.py switches their handlers), and the app's own loggers, which then write
to stderr through one handler on the root logger (``configure``, from the app factory).
Python's warnings go through logging too, so that they are JSON lines as well.

Each request gets an id (``begin_request``, called by observe.RequestObserver): nginx's
``X-Request-ID`` (deploy/nginx.conf sets it to its ``$request_id``), or a client's, kept to
``[A-Za-z0-9._-]`` and MAX_LENGTH characters, or a new uuid4 hex when none is left. It is
put in the environ (the access line reads it there), in a context variable (every line the
request's greenlet logs carries it, by ``RequestIdFilter``) and in the answer's
``X-Request-ID``. Under text logs no id is made: the answers stay byte for byte what they were.
"""

from __future__ import annotations

import logging
import re
import sys
import uuid
from contextvars import ContextVar

#: The request id of the request this greenlet (or thread) is serving.
REQUEST_ID: ContextVar[str | None] = ContextVar("portal_request_id", default=None)
#: Where the request id is kept in the WSGI environ (the access line reads it there).
ENVIRON_KEY = "portal.request_id"
#: The longest request id kept from a request's X-Request-ID (nginx's are 32 characters).
MAX_LENGTH = 64
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
#: The name of the root logger's JSON handler (one per process).
HANDLER_NAME = "portal-json"


def sanitized(value: str | None) -> str:
    """A supplied request id reduced to what a log line may carry safely: the characters
    ``[A-Za-z0-9._-]``, at most MAX_LENGTH of them ("" when none is left)."""
    if not value:
        return ""
    return _UNSAFE.sub("", value[:4 * MAX_LENGTH])[:MAX_LENGTH]


def begin_request(environ: dict) -> str:
    """The id of the request ``environ`` describes (its X-Request-ID sanitized, else a new
    one), noted in the environ and in this greenlet's context."""
    request_id = sanitized(environ.get("HTTP_X_REQUEST_ID")) or uuid.uuid4().hex
    environ[ENVIRON_KEY] = request_id
    REQUEST_ID.set(request_id)
    return request_id


class RequestIdFilter(logging.Filter):
    """Gives each record the id of the request being served (None outside a request),
    unless it carries one of its own (the access line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Always keep the record."""
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        return True


_FILTER = RequestIdFilter()


def json_formatter() -> logging.Formatter:
    """One JSON object a line: time (ISO 8601, UTC), level, logger, pid, message, the
    request id, a traceback as ``exc_info``, and any ``extra`` fields of the record."""
    from pythonjsonlogger.orjson import OrjsonFormatter

    return OrjsonFormatter("%(levelname)s %(name)s %(process)d %(message)s", timestamp="time",
                           rename_fields={"levelname": "level", "name": "logger",
                                          "process": "pid"})


def to_json(handlers) -> None:
    """Make these handlers write JSON lines that carry the request id."""
    formatter = json_formatter()
    for handler in handlers:
        handler.setFormatter(formatter)
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)


def configure(log_format: str) -> None:
    """Under ``json``: the root logger writes JSON lines to stderr (one handler per process,
    whatever number of apps) and Python's warnings go through logging. Under ``text``:
    nothing."""
    if log_format != "json":
        return
    root = logging.getLogger()
    if any(handler.get_name() == HANDLER_NAME for handler in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(HANDLER_NAME)
    to_json([handler])
    root.addHandler(handler)
    logging.captureWarnings(True)
    # No line shows a thread or a multiprocessing name, and looking them up is a good part
    # of making each record (a greenlet's "thread" is made on demand under gevent).
    logging.logThreads = False
    logging.logMultiprocessing = False
