"""Raw HTTP/1.1 on a socket, for the tests that hold the portal's worker to gunicorn's own.

``lean_and_plain`` starts the two real gunicorns on one instance: ``lean`` with the portal's
worker (the default) and ``plain`` with gunicorn's GeventWorker. ``exchange`` sends the same
bytes to either and reads back what a client would see: each response's status line, fields
(Date aside, Set-Cookie by name) and body, and whether the server closed the connection.
``assert_answered_alike`` holds the two to the same answers, but for the one thing the
portal's worker says differently on purpose: its error page where gunicorn sends its own.
"""

from __future__ import annotations

import contextlib
import errno
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from servers import Browser, Gunicorn, Instance, write_random

from portal.security import page_headers

PLAIN_WORKER = "gunicorn.workers.ggevent.GeventWorker"
# Which case sent a line, and whether the lean cycle answered it ("1") or gunicorn ("-").
LOG_FORMAT = "ACCESS %(a)s %({portal.lean}e)s %(s)s %(B)s"
LOG_ENV = {"GUNICORN_CMD_ARGS": f"--access-logformat '{LOG_FORMAT}'"}
#: Longest a server may take to answer or close in these tests (a loaded machine's worst).
PATIENCE = 30


@contextlib.contextmanager
def lean_and_plain(instance: Instance, root: Path) -> Iterator[tuple]:
    """(lean, plain, {"private": id, "public": id}, a signed-in cookie valid on both): two
    one-worker gunicorns on ``instance``, its access lines in LOG_FORMAT."""
    write_random(root / "private.bin", 70_000)
    write_random(root / "public.bin", 5_000)
    ids = {"private": instance.add_file(root / "private.bin", title="private", access="login"),
           "public": instance.add_file(root / "public.bin", title="public")}
    lean = Gunicorn(instance, workers=1, env=dict(LOG_ENV)).start()
    plain = None
    try:
        plain = Gunicorn(instance, workers=1,
                         env={**LOG_ENV, "PORTAL_GUNICORN_WORKER_CLASS": PLAIN_WORKER}).start()
        cookie = None
        for server in (lean, plain):
            browser = Browser(server.base_url).login("alice")
            cookie = "; ".join(f"{c.name}={c.value}" for c in browser.jar)
        yield lean, plain, ids, cookie
    finally:
        lean.stop()
        if plain is not None:
            plain.stop()


def req(case: str, path: str, *extra: str, method: str = "GET", version: str = "HTTP/1.1",
        body: bytes = b"") -> bytes:
    """One request's bytes; ``case`` goes into its User-Agent (and so into the access line)."""
    lines = [f"{method} {path} {version}", "Host: portal.test", f"User-Agent: case-{case}",
             *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


#: How gunicorn's own error page begins (gunicorn.util.write_error).
GUNICORN_PAGE = b"<html>\n  <head>\n    <title>"


def gunicorn_error_page(response: tuple) -> bool:
    """Whether a response is gunicorn's own error page (gunicorn.util.write_error), what
    gunicorn's worker sends for a head it refuses; its body is not read after a HEAD."""
    _, fields, body = response
    return ([name for name, _ in fields] == ["Connection", "Content-Type", "Content-Length"]
            and fields[:2] == [("Connection", "close"), ("Content-Type", "text/html")]
            and (body == b"" or body.startswith(GUNICORN_PAGE)))


def assert_portal_error_page(response: tuple, status: str, language: str = "zh_CN") -> None:
    """``response`` is the portal's error page (portal/errorpages.py) under ``status`` (a
    status line), in ``language``, with the portal's security headers, closing."""
    got, fields, body = response
    assert got == status, (got, status)
    named = dict(fields)
    assert len(named) == len(fields), fields
    assert named["Connection"] == "close"
    assert named["Content-Type"] == "text/html; charset=utf-8"
    assert int(named["Content-Length"]) == len(body)
    for name, value in page_headers(production=False):
        assert named.get(name) == value, (name, fields)
    page = body.decode("utf-8")
    assert f"<h1>{status.split()[1]} · " in page, page[:400]
    assert f'<html lang="{"zh-CN" if language == "zh_CN" else language}">' in page, page[:200]


def assert_answered_alike(got: tuple, want: tuple, context: object = None) -> None:
    """The lean server's answers on a connection (``exchange``'s or ``exchange_all``'s) are
    the plain server's: the same responses and closing; where gunicorn's worker sent
    gunicorn's own error page, the portal's worker sent the portal's, under the same status
    line. After a HEAD, whose response is read without a body, gunicorn sends the page's
    body all the same: it is what ``exchange_all`` finds after the last response."""
    assert [r[0] for r in got[0]] == [r[0] for r in want[0]], context
    got_after, want_after = list(got[1:]), list(want[1:])
    for i, (mine, theirs) in enumerate(zip(got[0], want[0], strict=True)):
        if not gunicorn_error_page(theirs):
            assert mine == theirs, context
            continue
        body = mine[2]
        if not theirs[2] and i == len(want[0]) - 1 and len(want) == 3 and want[1]:
            assert want[1].startswith(GUNICORN_PAGE), context  # a HEAD's unread page
            body, got_after[0], want_after[0] = got[1], b"", b""
        assert_portal_error_page((mine[0], mine[1], body), theirs[0])
    assert got_after == want_after, context


def exchange(server: Gunicorn, raw: bytes, expect: int) -> tuple[list, bool]:
    """Send ``raw`` on one connection; read up to ``expect`` responses (each: status line,
    fields, body) and whether the server then closed the connection. A HEAD is only ever
    sent alone here: its response has no body whatever its Content-Length says."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=PATIENCE)
    try:
        sock.sendall(raw)
        reader = _Responses(sock, head_only=raw.startswith(b"HEAD "))
        responses = []
        while len(responses) < expect:
            response = reader.next()
            if response is None:
                return responses, True
            responses.append(response)
        closed = reader.closed
        if not closed:
            sock.settimeout(0.5)
            try:
                closed = sock.recv(1) == b""
            except TimeoutError:
                closed = False
            except ConnectionResetError:
                closed = True
        return responses, closed
    finally:
        sock.close()


def exchange_all(server: Gunicorn, pieces: list[bytes]) -> tuple:
    """Send ``pieces`` one at a time, each once the server has read the one before, then end
    the sending side (FIN); read every response until the server closes. (responses, the
    bytes after the last whole response, whether the server closed within PATIENCE s)."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=PATIENCE)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        for i, piece in enumerate(pieces):
            if i:
                wait_until_read(server.port, sock.getsockname()[1])
            try:
                sock.sendall(piece)
            except OSError as e:  # the server refused the head and closed meanwhile
                if e.errno not in (errno.EPIPE, errno.ECONNRESET):
                    raise
                break
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        reader = _Responses(sock, head_only=b"".join(pieces).startswith(b"HEAD "))
        responses = []
        try:
            while (response := reader.next()) is not None:
                responses.append(response)
        except TimeoutError:
            return responses, reader.buf, False
        return responses, reader.buf, True
    finally:
        sock.close()


def wait_until_read(server_port: int, client_port: int, patience: float = 2.0) -> None:
    """Wait until the server has read every byte sent on this loopback connection: the
    client's send queue is acknowledged and the server's receive queue is empty
    (/proc/net/tcp). A parser's answer to a malformed head can depend on how much of it has
    arrived (gunicorn's does), so a test that cuts a head into pieces must not let the kernel
    join them. Gives up after ``patience`` seconds (a server that stopped reading, say while
    it sends a big response nobody reads yet) or once the server's side is no longer open."""
    ours = (f"0100007F:{client_port:04X}", f"0100007F:{server_port:04X}")
    theirs = (ours[1], ours[0])
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        queues = {}
        with open("/proc/net/tcp", encoding="ascii") as table:
            for row in table.readlines()[1:]:
                cols = row.split()
                if (cols[1], cols[2]) in (ours, theirs):
                    tx, rx = (int(q, 16) for q in cols[4].split(":"))
                    queues[cols[1], cols[2]] = (cols[3], tx, rx)
        server_side = queues.get(theirs)
        if server_side is None or server_side[0] != "01":  # 01: ESTABLISHED
            return
        client_side = queues.get(ours)
        if client_side is not None and client_side[1] == 0 and server_side[2] == 0:
            return
        time.sleep(0.0005)


class _Responses:
    """Responses read off a socket one at a time, normalised for comparison."""

    def __init__(self, sock: socket.socket, head_only: bool) -> None:
        self.sock, self.head_only = sock, head_only
        self.buf, self.closed = b"", False

    def _more(self) -> bool:
        if self.closed:
            return False
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:  # a close with unread bytes: what was sent is read first
            data = b""
        self.buf += data
        self.closed = not data
        return bool(data)

    def next(self) -> tuple | None:
        """The next (status, fields, body), None once the server closed before one."""
        while b"\r\n\r\n" not in self.buf:
            if not self._more():
                return None
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status, *lines = head.decode("latin-1").split("\r\n")
        fields = [tuple(line.split(": ", 1)) for line in lines]
        length = next((int(v) for k, v in fields if k.lower() == "content-length"), None)
        code = status.split()[1] if len(status.split()) > 1 else ""
        if self.head_only or code[:1] == "1" or code in ("204", "304"):
            length = 0
        if length is None:
            while self._more():
                pass
            body, self.buf = self.buf, b""
        else:
            while len(self.buf) < length and self._more():
                pass
            body, self.buf = self.buf[:length], self.buf[length:]
        boundary = re.search(r"boundary=(\w+)", head.decode("latin-1"))
        if boundary:  # random per response
            body = body.replace(boundary.group(1).encode(), b"BOUNDARY")
            fields = [(k, v.replace(boundary.group(1), "BOUNDARY")) for k, v in fields]
        # A page's CSRF token is signed afresh for each response.
        body = re.sub(rb'(name="csrf[-_]token" (?:content|value)=")[^"]*', rb"\1T", body)
        return status, normalised(fields), body


def normalised(fields: list) -> list:
    """The fields without Date, Set-Cookie by cookie name only (their values are signed)."""
    out = []
    for name, value in fields:
        if name.lower() == "date":
            continue
        if name.lower() == "set-cookie":
            value = value.split("=", 1)[0]
        out.append((name, value))
    return out


def lean_lines(server: Gunicorn, since: int = 0) -> dict[str, list[str]]:
    """{case: ["1" or "-" for each of its requests, in order]} from the access log (from
    character ``since`` on)."""
    found: dict[str, list[str]] = {}
    for match in re.finditer(r"ACCESS case-(\S+) (\S+) ",
                             server.log.read_text("utf-8")[since:]):
        found.setdefault(match.group(1), []).append(match.group(2))
    return found
