"""gunicorn's gevent worker, with the warm download answered before gunicorn's request cycle.

Why by hand: a signed-in 64 KiB download cost the worker about 410 µs of CPU under wrk, and
copyparty ``-j 2`` about 240 µs (bench/run_cpu_per_request.py). The portal's own part, the
fast door (download/fast.py), is about a third of it; most of the rest is gunicorn's cycle
around it: its parser, a full WSGI environ, a Response object that validates every header,
the access log's request object. A gevent loop that reads a request head and sends a file
with sendfile(2) costs well under 50 µs, so this worker reads each request head itself and,
when it is a plain one, asks the fast door with a small environ; what the door answers goes
out with the same status line, Server, Date and Connection fields as gunicorn writes, and
the same access line. Nothing is re-implemented for anything else: a request the door
declines, and anything not plainly a GET without a body (other methods, a body, Expect,
Upgrade, a repeated or unusual field, a percent-encoded path), is handed over with the
bytes already read to gunicorn's own parser and cycle, on the same connection, which then
comes back to this loop for its next request. TLS, HTTP/2, the PROXY protocol, a
SCRIPT_NAME, keepalive=0 or gunicorn's Python parser leave every connection to gunicorn.

The head is parsed by the very parser gunicorn uses, gunicorn_h1c's ``parse_request``, with
gunicorn's own limits; every head it refuses goes to gunicorn's cycle, which refuses it the
same way (400 and close). So a bare CR, a control character, obs-fold or a bare LF can never
be read differently here than there. What gunicorn checks in Python after that parser (the
request target's characters, field names with ``_``, repeated singleton fields, the scheme
fields) is either checked here the same way or makes the request gunicorn's. A head has
``keepalive`` seconds to arrive whole, counted from when this loop starts waiting for it:
gunicorn's deadline for ``next(parser)``.

What gunicorn answers itself, a head it refuses (400, 414, 431...) or a request that failed
before its response began (500), keeps gunicorn's status, logging and closing, but the client
reads the portal's error page with the portal's security headers instead of gunicorn's bare
English text (``handle_error``; portal/errorpages.py): rendered when the worker loads the app,
in the head's language when its Accept-Language can be read safely, else in zh_CN.

What differs from gunicorn for lean-served requests, on purpose: the ``pre_request`` and
``post_request`` hooks are not called (gunicorn.conf.py's post_request is the fair turn,
which this loop takes itself), and the environ holds only what the door reads plus the
keys of the access log (``portal.lean`` among them, which tests look at).
``PORTAL_FAST_DOWNLOADS=0`` or ``PORTAL_GUNICORN_WORKER_CLASS=gunicorn.workers.ggevent.
GeventWorker`` gives gunicorn's worker unchanged.
"""

from __future__ import annotations

import errno
import functools
import io
import os
import sys
import time
from datetime import datetime

import gevent
from gunicorn import SERVER, SERVER_SOFTWARE, http, util
from gunicorn.http import message as gunicorn_message
from gunicorn.http import wsgi as gunicorn_wsgi
from gunicorn.http.message import RFC9112_TARGET_INVALID, _ip_in_allow_list
from gunicorn.http2 import negotiation
from gunicorn.workers.ggevent import GeventWorker as GunicornGeventWorker

try:
    import gunicorn_h1c
except ImportError:  # gunicorn then parses in Python, and so every connection is its own
    gunicorn_h1c = None

# Nothing of the app is imported here: gunicorn's master imports this module before the worker
# monkey-patches (gevent), and the app's modules are loaded after it, in load_wsgi.

#: A request head not whole within this many bytes goes to gunicorn's cycle to be read on.
HEAD_LIMIT = 8192
#: Fields whose presence means the request is not plainly a GET without a body.
_NOT_LEAN = frozenset({"CONTENT-LENGTH", "TRANSFER-ENCODING", "EXPECT", "UPGRADE",
                       "HTTP2-SETTINGS", "TE", "TRAILER"})


class GeventWorker(GunicornGeventWorker):
    """gunicorn's gevent worker; warm downloads are answered by the lean cycle below."""

    def load_wsgi(self):
        super().load_wsgi()
        from .download.fast import DECLINED, LEAN
        from .sendfile import send_file_body

        self.declined, self.lean_key, self.send_file_body = DECLINED, LEAN, send_file_body
        app, cfg = self.wsgi, self.cfg
        door = getattr(app, "extensions", {}).get("portal_fast_door")
        # Settings under which every connection is gunicorn's (see the module's docstring).
        lean = (door is not None and door.enabled() and not cfg.is_ssl and cfg.keepalive
                and not (os.environ.get("SCRIPT_NAME") or cfg.env.get("SCRIPT_NAME"))
                and cfg.proxy_protocol in ("off", False, None)
                and gunicorn_message._check_fast_parser(cfg))
        self.lean_app = app.wsgi_app if lean else None
        self._date = (0, "")
        self._trust = ("", False)
        self.secure_headers = dict(cfg.secure_scheme_headers)
        if lean:
            self.parse_head = head_parser(cfg)
        self.error_pages, self.error_language = self._error_pages(app)

    def _error_pages(self, app) -> tuple[dict, object]:
        """({(language, code): fields, blank line and body}, a function of the refused
        request and its raw head giving the page's language) for handle_error: rendered now,
        so that answering a refusal renders nothing. No pages (gunicorn's own then) when the
        app cannot render them: a worker that cannot say it nicely still serves."""
        try:
            from .config import settings
            from .errorpages import (
                GUNICORN_CODES,
                accept_language,
                choose_language,
                render_pages,
                response_fields,
            )

            pages = {key: response_fields(app, body) + b"\r\n" + body
                     for key, body in render_pages(app, GUNICORN_CODES).items()}
            languages, default = settings(app).languages, settings(app).babel_default_locale
        except Exception:
            self.log.exception("the portal's error pages could not be rendered: gunicorn's "
                               "own are sent")
            return {}, None

        def language(req, head: bytes) -> str:
            if req is not None:  # a head gunicorn parsed: its fields are checked already
                values = [value for name, value in req.headers if name == "ACCEPT-LANGUAGE"]
                value = values[0] if len(values) == 1 else None
            else:
                value = accept_language(head)
            return choose_language(value, languages, default)

        return pages, language

    def handle(self, listener, client, addr):
        if (self.lean_app is None or not isinstance(addr, tuple)
                or negotiation.prior_knowledge_allowed(self.cfg, addr)):
            return super().handle(listener, client, addr)
        client.setblocking(1)
        handed = [b""]  # the bytes gunicorn's cycle last parsed from, for an error's language
        try:
            self._serve(listener, client, addr, handed)
        except http.errors.NoMoreData as e:
            self.log.debug("Ignored premature client disconnection. %s", e)
        except StopIteration as e:
            self.log.debug("Closing connection. %s", e)
        except OSError as e:
            if e.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                self.log.exception("Socket error processing request.")
        except Exception as e:  # as gunicorn's handle: an error page where one can still go
            self.handle_error(None, client, addr, e, handed[0])
        finally:
            util.close(client)

    def handle_error(self, req, client, addr, exc, head: bytes = b""):
        """gunicorn's answer to a request it refuses, or that failed before its response
        began, with the portal's error page in place of gunicorn's: gunicorn decides the
        status line, logs and closes as ever; only the fields and the body it writes are
        replaced. ``head``: the raw bytes of a head gunicorn could not parse (the page's
        language is read from them only when ``req`` is None)."""
        if not self.error_pages:
            return super().handle_error(req, client, addr, exc)
        said = _Said(client)
        super().handle_error(req, said, addr, exc)
        written = bytes(said.data)
        status = written.partition(b"\r\n")[0]
        code = status.split(b" ", 2)[1:2]
        page = None
        try:
            if code and code[0].isdigit():
                page = self.error_pages.get((self.error_language(req, head), int(code[0])))
        except Exception:  # a head that defeats the language's reading gets gunicorn's page
            self.log.debug("no language for the error page of %r", head[:100])
        if page is not None:
            written = status + b"\r\n" + page
        try:
            if written:
                util.write_nonblock(client, written)
        except Exception:
            self.log.debug("Failed to send error message.")
        return None

    def _serve(self, listener, client, addr, handed: list) -> None:
        """Serve the connection's requests until it closes or the worker stops; ``handed[0]``
        is kept as the bytes handed to gunicorn's cycle last."""
        listener_name = listener.getsockname()
        pending = b""
        keepalive = self.cfg.keepalive
        while True:
            pending, head, deadline = _read_head(client, pending, keepalive, self.parse_head)
            if pending is None:
                return
            environ = None
            if head is not None and pending[:2] != b"\r\n":  # (an empty line first: gunicorn's)
                environ = self._environ(head, client, addr, listener_name)
            answer = None if environ is None else self._ask(environ)
            if answer is None:
                handed[0] = pending
                pending = self._gunicorn(listener, listener_name, client, addr, pending,
                                         deadline)
                if pending is None:
                    return
                continue
            pending = pending[head["consumed"]:]
            if not self._send(client, environ, answer):
                return
            # The fair turn gunicorn.conf.py's post_request takes in gunicorn's cycle.
            gevent.sleep(1e-6)
            if not self.alive:
                return

    def _ask(self, environ: dict):
        """(status, headers, body) from the fast door, None when it declines."""
        answered = []

        def start_response(status, headers, exc_info=None):
            answered[:] = [status, headers]

        body = self.lean_app(environ, start_response)
        if body is self.declined or not answered:
            return None
        return answered[0], answered[1], body

    def _environ(self, head: dict, client, addr, listener_name) -> dict | None:
        """A small WSGI environ for a plain GET from the parsed head, None for anything
        gunicorn's cycle must answer."""
        minor = head["minor_version"]
        if head["method"] != b"GET" or minor not in (0, 1):
            return None
        target = head["path"].decode("latin-1")
        # gunicorn refuses a target with a byte outside 0x21-0x7e after the C parser;
        # percent-encoding and fragments are its to decode.
        if (not target.startswith("/") or RFC9112_TARGET_INVALID.search(target)
                or "%" in target or "#" in target):
            return None
        protocol = "HTTP/1.1" if minor else "HTTP/1.0"
        path, _, query = target.partition("?")
        fields = []
        environ = {
            self.lean_key: "1",
            "REQUEST_METHOD": "GET",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "RAW_URI": target,
            "SCRIPT_NAME": "",
            "SERVER_PROTOCOL": protocol,
            "SERVER_SOFTWARE": SERVER_SOFTWARE,
            "REMOTE_ADDR": addr[0],
            "REMOTE_PORT": str(addr[1]),
            "SERVER_NAME": str(listener_name[0]),
            "SERVER_PORT": str(listener_name[1]),
            "wsgi.url_scheme": "http",
            "wsgi.version": (1, 0),
            "wsgi.multithread": True,
            "wsgi.multiprocess": self.cfg.workers > 1,
            "wsgi.run_once": False,
            "wsgi.input": io.BytesIO(),
            "wsgi.errors": sys.stderr,
            "wsgi.file_wrapper": gunicorn_wsgi.FileWrapper,
            "gunicorn.socket": client,
            "portal.fields": fields,
        }
        close = protocol == "HTTP/1.0"
        # gunicorn's rule for the scheme: X-Forwarded-Proto and the other secure-scheme
        # fields count only from forwarded_allow_ips (ProxyFix then applies its own rule).
        trusted, secure_scheme = self._trusted_peer(addr), False
        for raw_name, raw_value in head["headers"]:
            upper = raw_name.decode("latin-1").upper()
            key = "HTTP_" + upper.replace("-", "_")
            # "_" in a name: gunicorn refuses, drops or maps it by its header_map setting.
            if upper in _NOT_LEAN or key in environ or "_" in upper:
                return None
            value = raw_value.decode("latin-1")
            if upper == "CONNECTION":
                token = value.lower()
                if token == "close":
                    close = True
                elif token == "keep-alive":
                    close = False
                else:
                    return None
            if upper in self.secure_headers and trusted:
                secure_scheme = True
            fields.append((upper, value))
            environ[key] = value
        if secure_scheme:
            scheme = {"https" if value == self.secure_headers[name] else "http"
                      for name, value in fields if name in self.secure_headers}
            if len(scheme) > 1:
                return None  # gunicorn refuses the request (InvalidSchemeHeaders)
            environ["wsgi.url_scheme"] = scheme.pop()
        environ["portal.close"] = close
        return environ

    def _trusted_peer(self, addr) -> bool:
        """gunicorn's forwarded_allow_ips check (the same function as its parser's)."""
        held = self._trust
        if held[0] != addr[0]:
            cfg = self.cfg
            held = self._trust = (addr[0], _ip_in_allow_list(
                addr[0], cfg.forwarded_allow_ips, cfg.forwarded_allow_networks()))
        return held[1]

    def _send(self, client, environ: dict, answer) -> bool:
        """Write the door's answer; True when the connection may serve another request."""
        started = datetime.now()
        status, headers, body = answer
        length = None
        for name, value in headers:
            if name.lower() == "content-length":
                length = int(value)
        self.nr += 1
        if self.nr >= self.max_requests and self.alive:
            self.log.info("Autorestarting worker after current request.")
            self.alive = False
        close = environ["portal.close"] or length is None or not self.alive
        head = "".join([
            f"{environ['SERVER_PROTOCOL']} {status}\r\nServer: {SERVER}\r\n"
            f"Date: {self._http_date()}\r\nConnection: {'close' if close else 'keep-alive'}"
            "\r\n", *[f"{name}: {value}\r\n" for name, value in headers], "\r\n"]).encode(
                "latin-1")
        sent = _Sent(status, headers)
        try:
            filelike = getattr(body, "filelike", None)
            if (isinstance(body, gunicorn_wsgi.FileWrapper) and length is not None
                    and util.has_fileno(filelike)):
                fileno = filelike.fileno()
                sent.sent = self.send_file_body(client, head, filelike, fileno,
                                                os.lseek(fileno, 0, os.SEEK_CUR), length)
                close = close or sent.sent < length  # the file was shorter than promised
            else:  # the door's other answers are a few bytes (a refusal) or none (a grant)
                chunks = [head]
                for chunk in body:
                    chunks.append(chunk)
                    sent.sent += len(chunk)
                client.sendall(b"".join(chunks))
        finally:
            close_body = getattr(body, "close", None)
            if close_body is not None:
                close_body()
            self.log.access(sent, _Fields(environ["portal.fields"]), environ,
                            datetime.now() - started)
        return not close

    def _gunicorn(self, listener, listener_name, client, addr, data: bytes,
                  deadline: float | None) -> bytes | None:
        """Serve one request with gunicorn's own cycle from the bytes already read, its head
        due by ``deadline`` (monotonic; None: gunicorn's keepalive from now); the bytes read
        past it, or None when the connection is done."""
        parser = http.get_parser(self.cfg, client, addr)
        parser.unreader.unread(data)
        req = None
        # What is left of the head's time (gunicorn's timeout_ctx); a head already read whole
        # is parsed without waiting, so even none left lets gunicorn answer it.
        left = self.cfg.keepalive if deadline is None else deadline - time.monotonic()
        with gevent.Timeout(max(left, 0.001), False):
            req = next(parser, None)
        if not req:
            return None
        if self._try_h2c_upgrade(listener, req, parser, client, addr):
            return None
        try:
            self.handle_request(listener_name, req, client, addr)
        except StopIteration:
            return None
        if req.should_close() or not parser.finish_body():
            return None
        return parser.unreader.take_buffered()

    def _http_date(self) -> str:
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, util.http_date(now))
        return self._date[1]


def head_parser(cfg):
    """gunicorn_h1c's ``parse_request`` with the limits gunicorn's Request gives it."""
    # gunicorn's Request works these out in its constructor, not in a function of its own.
    line = cfg.limit_request_line
    if line < 0 or line >= gunicorn_message.MAX_REQUEST_LINE:
        line = gunicorn_message.MAX_REQUEST_LINE
    elif line == 0:
        line = 1024 * 1024
    fields = cfg.limit_request_fields
    if fields <= 0 or fields > gunicorn_message.MAX_HEADERS:
        fields = gunicorn_message.MAX_HEADERS
    field_size = cfg.limit_request_field_size
    if field_size <= 0:
        field_size = gunicorn_message.DEFAULT_MAX_HEADERFIELD_SIZE
    return functools.partial(
        gunicorn_h1c.parse_request, limit_request_line=line, limit_request_fields=fields,
        limit_request_field_size=field_size,
        permit_unconventional_http_method=cfg.permit_unconventional_http_method,
        permit_unconventional_http_version=cfg.permit_unconventional_http_version)


def _read_head(client, pending: bytes, keepalive: float, parse) -> tuple:
    """(the bytes read, the parsed head or None, the head's deadline or None) for the next
    request: the head is None when gunicorn's parser refuses it or it is not whole within
    HEAD_LIMIT bytes (gunicorn's cycle then answers it); the deadline (monotonic) is set
    once this had to wait. (None, None, None) when the client closed, or did not send a
    whole head within ``keepalive`` seconds of this starting to wait for it."""
    last, deadline = 0, None
    while True:
        if pending:
            try:
                return pending, parse(pending, last_len=last), deadline
            except gunicorn_h1c.IncompleteError:
                last = len(pending)
            except gunicorn_h1c.ParseError:
                return pending, None, deadline
            if len(pending) > HEAD_LIMIT:
                return pending, None, deadline
        if deadline is None:
            deadline = time.monotonic() + keepalive
        left = deadline - time.monotonic()
        if left <= 0:
            return None, None, None
        client.settimeout(left)
        try:
            data = client.recv(65536)
        except TimeoutError:
            return None, None, None
        finally:
            client.settimeout(None)
        if not data:
            return None, None, None
        pending += data


class _Said:
    """The client's socket as gunicorn's handle_error sees it: what gunicorn writes (its error
    page) is kept for handle_error to replace, everything else is the socket's."""

    def __init__(self, sock) -> None:
        self._sock, self.data = sock, bytearray()

    def sendall(self, data: bytes) -> None:
        self.data += data

    def gettimeout(self) -> float | None:
        return None

    def setblocking(self, flag: bool) -> None:
        pass

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


class _Sent:
    """What the access log reads of a response (gunicorn's Response has these too)."""

    __slots__ = ("headers", "sent", "status")

    def __init__(self, status: str, headers) -> None:
        self.status, self.headers, self.sent = status, headers, 0


class _Fields:
    """What the access log reads of a request: its fields, upper-cased as gunicorn's."""

    __slots__ = ("headers",)

    def __init__(self, headers) -> None:
        self.headers = headers
