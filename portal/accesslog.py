"""gunicorn's access log, with each atom worked out only when the format asks for it.

Why by hand: gunicorn's ``Logger.access`` builds every atom of every possible format for
each line -- a dict of all request headers, all response headers and the whole WSGI environ,
then a second, escaped copy of it -- and the portal's format uses six of them. Under wrk that
was 15 % of a gevent worker's samples (py-spy, docs/performance.md, "The stalls"). This logger
gives the format the same values gunicorn would, including ``-`` for what is missing and the
escaping of double quotes, computed on lookup. ``gunicorn.conf.py`` selects it.

One difference on purpose: a byte outside printable ASCII in a value (a control character
or obs-text in a header the parser let through, such as a tab or 0x9b, a terminal's CSI)
is written as ``\\xHH``, as nginx writes it, so that no line can carry a terminal escape or
forge a second line; gunicorn's Logger writes it raw. And a second: a CAS ticket in any
value (the callback's ``?ticket=ST-...`` in the request line, the query, a Referer) is
written as ``ticket=[redacted]``, and so it is in gunicorn's error log (portal/redact.py).
"""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Iterator, Mapping

from gunicorn.glogging import Logger

from . import logs
from .redact import RedactTickets, redact_tickets

_REDACT = RedactTickets()  # one instance: a reload's setup does not add a second


class AccessLogger(Logger):
    """gunicorn's Logger, whose access line computes only the atoms its format names."""

    structured = False  # PORTAL_LOG_FORMAT=json: JSON lines (portal/logs.py)

    def setup(self, cfg) -> None:
        """gunicorn's setup; its error log then redacts CAS tickets, and under
        PORTAL_LOG_FORMAT=json both logs write JSON lines."""
        from .settings import from_environ

        super().setup(cfg)
        self.error_log.addFilter(_REDACT)
        self.structured = from_environ().log_format == "json"
        if self.structured:
            logs.to_json([*self.error_log.handlers, *self.access_log.handlers])

    def access(self, resp, req, environ, request_time):
        """One access line (the same text gunicorn's own Logger writes)."""
        if not self.access_log_enabled:
            return
        try:
            atoms = LazyAtoms(self, resp, req, environ, request_time)
            if self.structured:  # fixed fields, whatever access_log_format says
                fields = atoms.fields()
                self.access_log.info("%s %s %s", fields["method"], fields["path"],
                                     fields["status"], extra=fields)
                return
            streams = self._plain_streams()
            if streams is None:
                self.access_log.info(self.cfg.access_log_format, atoms)
                return
            line = self.cfg.access_log_format % atoms
            for handler in streams:
                with handler.lock:
                    handler.stream.write(line + handler.terminator)
                    handler.flush()
        except Exception:
            self.error(traceback.format_exc())

    def _plain_streams(self) -> list[logging.StreamHandler] | None:
        """The access log's handlers when each only writes the message to a stream (what
        gunicorn sets up for a file or stdout), so the line can be written without a
        LogRecord (6 % of a worker's time per download under wrk); None otherwise (syslog,
        filters, a custom format), and logging writes it."""
        log = self.access_log
        if log.filters or not log.isEnabledFor(logging.INFO):
            return None
        handlers = log.handlers
        for handler in handlers:
            if (type(handler) not in (logging.StreamHandler, logging.FileHandler)
                    or handler.filters or handler.stream is None or handler.level > logging.INFO
                    or getattr(handler.formatter, "_fmt", None) != "%(message)s"):
                return None
        return handlers if handlers and not log.propagate else None


class LazyAtoms(Mapping):
    """The atoms of one access line, each computed when the format looks it up."""

    __slots__ = ("environ", "logger", "req", "request_time", "resp")

    def __init__(self, logger: Logger, resp, req, environ: dict, request_time) -> None:
        self.logger = logger
        self.resp = resp
        self.req = req
        self.environ = environ
        self.request_time = request_time

    def __getitem__(self, key: str):
        value = self.field(key)
        return value.replace('"', '\\"') if isinstance(value, str) else value

    def field(self, key: str):
        """An atom's value as a field of a JSON line: tickets redacted, bytes outside
        printable ASCII escaped as in the text line, double quotes left to JSON."""
        value = self._value(key)
        if not isinstance(value, str):
            return value
        if "ticket" in value:
            value = redact_tickets(value)
        if not (value.isascii() and value.isprintable()):
            value = value.translate(_ESCAPES)
        return value

    def fields(self) -> dict:
        """The access line's values as the fields of a JSON line (PORTAL_LOG_FORMAT=json)."""
        status = self.field("s")
        return {
            "request_id": self.environ.get(logs.ENVIRON_KEY), "remote_addr": self.field("h"),
            "method": self.field("m"), "path": self.field("U"), "query": self.field("q"),
            "protocol": self.field("H"),
            "status": int(status) if isinstance(status, str) and status.isdigit() else status,
            "bytes": self.field("B"), "duration_us": self.field("D"),
            "user_agent": self.field("a"), "referer": self.field("f"),
        }

    # logging formats ``msg % args`` with a non-empty Mapping: these two only make it one.
    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def _value(self, key: str):
        environ, elapsed = self.environ, self.request_time
        if key.startswith("{"):
            return self._field(key.lower())
        if key in _ENVIRON:
            return environ.get(_ENVIRON[key])  # None (printed so) when absent, as gunicorn
        if key in _ENVIRON_OR_DASH:
            return environ.get(_ENVIRON_OR_DASH[key], "-")
        match key:
            case "h":
                return environ.get("REMOTE_ADDR", "-")
            case "l":
                return "-"
            case "u":
                return self.logger._get_user(environ) or "-"
            case "t":
                return self.logger.now()
            case "r":
                return (f"{environ['REQUEST_METHOD']} {environ['RAW_URI']} "
                        f"{environ['SERVER_PROTOCOL']}")
            case "s":
                status = self.resp.status
                return status.split(None, 1)[0] if isinstance(status, str) else status
            case "b":
                sent = getattr(self.resp, "sent", None)
                return str(sent) if sent is not None else "-"
            case "B":
                return getattr(self.resp, "sent", None)
            case "T":
                return elapsed.seconds
            case "D":
                return elapsed.seconds * 1_000_000 + elapsed.microseconds
            case "M":
                return elapsed.seconds * 1000 + int(elapsed.microseconds / 1000)
            case "L":
                return f"{elapsed.seconds}.{elapsed.microseconds:06d}"
            case "p":
                return f"<{os.getpid()}>"
        return "-"

    def _field(self, key: str):
        """``{name}i`` (request header), ``{name}o`` (response header), ``{name}e`` (environ),
        matched case-insensitively as gunicorn does; the last of repeated headers wins."""
        name, kind = key[1:-2], key[-2:]
        if kind == "}i":
            pairs = getattr(self.req, "headers", self.req)
        elif kind == "}o":
            pairs = self.resp.headers
        elif kind == "}e":
            pairs = self.environ
        else:
            return "-"
        if hasattr(pairs, "items"):
            pairs = pairs.items()
        found = "-"
        for field, value in pairs:
            if field.lower() == name:
                found = value
        return found


#: Atoms that are one environ value each.
_ENVIRON = {"m": "REQUEST_METHOD", "U": "PATH_INFO", "q": "QUERY_STRING", "H": "SERVER_PROTOCOL"}
_ENVIRON_OR_DASH = {"f": "HTTP_REFERER", "a": "HTTP_USER_AGENT"}
#: What a value's bytes outside printable ASCII become in a line (values are latin-1 text).
_ESCAPES = {code: f"\\x{code:02X}" for code in (*range(0x20), *range(0x7F, 0x100))}
