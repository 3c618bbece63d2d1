"""Zero-copy sending for gunicorn that also tells the app how many bytes went out.

gunicorn's own ``Response.sendfile`` hands the file to ``socket.sendfile``. Two things are
missing for this portal, so this module replaces that one method when a worker starts
(``gunicorn.conf.py``, ``post_worker_init``):

* Under gevent, ``socket.sendfile`` is a Python read()/send() loop: the bytes pass through
  Python. Here ``os.sendfile(2)`` is called on the socket's descriptor and, when the kernel
  buffer is full, the greenlet waits for writability (``gevent.socket.wait_write``), so the
  copy stays in the kernel and other downloads run meanwhile.
* gunicorn rewinds the file and never reports the bytes sent, so an aborted download would be
  recorded as complete or as nothing. Here the count is stored on the file object
  (``bytes_sent``), where the download view's ``TrackedFile`` reads it when the body closes.

Nothing else of gunicorn changes: the same preconditions (no TLS, sendfile not disabled, a
real file descriptor, a known Content-Length) decide whether this path is taken; otherwise
gunicorn's ordinary write loop runs.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import socket
import struct
import termios
import time

# A client that accepts no byte for this long is dropped (seconds).
STALL_TIMEOUT = 120.0
BLOCK = 1 << 30  # os.sendfile takes at most this much per call on some kernels


def _waiter(sock):
    """A function that blocks until the socket is writable: cooperative under gevent."""
    if type(sock).__module__.startswith("gevent"):
        from gevent.socket import wait_write

        return lambda fd: wait_write(fd, timeout=STALL_TIMEOUT)

    def wait(fd):
        _, ready, _ = select.select([], [fd], [], STALL_TIMEOUT)
        if not ready:
            raise TimeoutError("client stalled")

    return wait


def unacknowledged(sock) -> int | None:
    """Bytes written to a TCP socket that the peer has not acknowledged yet (Linux SIOCOUTQ,
    which equals TIOCOUTQ); None where the platform cannot tell."""
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (OSError, AttributeError):
        return None
    return struct.unpack("i", raw)[0]


# struct tcp_info (linux/tcp.h): the u64 tcpi_bytes_acked sits at this offset (kernel 4.2+).
_TCPI_BYTES_ACKED = 120


def peer_acked(sock) -> int | None:
    """Bytes of this connection the peer's TCP has acknowledged so far (Linux TCP_INFO); it
    stays readable after a reset. None where the platform cannot tell."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    except (OSError, AttributeError):
        return None
    if len(info) < _TCPI_BYTES_ACKED + 8:
        return None
    return struct.unpack_from("=Q", info, _TCPI_BYTES_ACKED)[0]


#: A finished body counts whole once at most this much of it waits unacknowledged in the
#: kernel; more, and ``Acknowledged.settle`` waits for the client to take it first.
SETTLE_TAIL = 1 << 20
_TCP_ESTABLISHED, _TCP_CLOSE_WAIT = 1, 8


def _tcp_state(sock) -> int | None:
    """The connection's TCP state (linux/tcp_states.h), None where it cannot be read."""
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    except (OSError, AttributeError, IndexError):
        return None


def peer_closed(sock) -> bool:
    """True once the peer has closed its side of this TCP connection (any state but
    ESTABLISHED); False while it is open, or where the state cannot be read."""
    state = _tcp_state(sock)
    return state is not None and state != _TCP_ESTABLISHED


class Acknowledged:
    """How much of a body written to a TCP socket the peer has acknowledged.

    Written on a connection = acknowledged + still queued in the kernel (SIOCOUTQ). Once
    some of the body has been handed over, ``handed(n)`` reads both once and so learns what
    the connection carried before the body (headers, earlier keep-alive responses);
    ``opening()``, called before the first byte, gives a rougher baseline (the headers then
    count as body) for a body cut off before that. ``delivered(n)`` is then the body bytes
    the client's TCP acknowledged, at most ``n``. Where the kernel cannot tell (not Linux,
    not TCP, no socket), ``delivered(n)`` is ``n``. Shared by the zero-copy path and the
    streamed bodies (download/body.py), so both count the same thing.
    """

    def __init__(self, sock) -> None:
        self.sock = sock
        self.before: int | None = None
        self.tried = sock is None

    def _written(self) -> int | None:
        acked, queued = peer_acked(self.sock), unacknowledged(self.sock)
        return None if acked is None or queued is None else acked + queued

    def opening(self) -> None:
        """Nothing of the body is written yet: note a baseline that includes the headers."""
        if self.sock is not None and self.before is None:
            self.before = self._written()

    def handed(self, sent: int) -> None:
        """``sent`` body bytes are in the kernel now: note the exact baseline (once)."""
        if self.tried:
            return
        self.tried = True
        written = self._written()
        if written is not None:
            self.before = written - sent

    def acknowledged(self) -> int | None:
        """The body bytes the peer acknowledged so far; None where that is not known."""
        now = None if self.before is None else peer_acked(self.sock)
        return None if now is None else max(0, now - self.before)

    def delivered(self, sent: int) -> int:
        """The body bytes the peer acknowledged, at most ``sent`` (``sent`` if unknown)."""
        acked = self.acknowledged()
        return sent if acked is None else min(sent, acked)

    def settle(self, sent: int) -> int:
        """The bytes delivered of a body handed over whole (``sent``).

        Handed over is not received: megabytes may still sit in the kernel when the client
        goes away (a killed wget, aria2c closing a connection). A body whose unacknowledged
        rest is at most SETTLE_TAIL counts whole at once (every small body: no system call).
        Otherwise this waits, cooperatively, until it is (the client is taking it: whole),
        or the connection is reset or stalls STALL_TIMEOUT (what was acknowledged). A
        client sends its next request only once it has the whole response, so a healthy
        one loses nothing by the wait.
        """
        if sent <= SETTLE_TAIL or self.sock is None:
            return sent
        self.handed(sent)
        if self.before is None:
            return sent
        pause, last, since = 0.005, -1, time.monotonic()
        while True:
            queued = unacknowledged(self.sock)
            state = _tcp_state(self.sock)
            if queued is None or state is None:
                return sent
            if state not in (_TCP_ESTABLISHED, _TCP_CLOSE_WAIT):
                return self.delivered(sent)
            if queued <= SETTLE_TAIL:
                return sent
            acked = self.acknowledged() or 0
            if acked != last:
                last, since = acked, time.monotonic()
            elif time.monotonic() - since > STALL_TIMEOUT:
                return self.delivered(sent)
            time.sleep(pause)  # gevent's, under the gevent worker (monkey-patched)
            pause = min(0.1, pause * 2)


def send_range(sock, fileno: int, offset: int, count: int, progress=None, pacer=None) -> int:
    """Send count bytes of the file from offset with sendfile(2); return the bytes sent.

    ``progress(n)`` is called after every successful call and once more when an OSError ends
    the loop (the client went away), so that a caller learns how far it got. While sending,
    n counts the bytes the client's TCP acknowledged, not what still waits in the kernel's
    send buffer (megabytes per connection, lost when the client aborts); once everything is
    handed over, n = count. Where the kernel cannot tell, n is the bytes handed over.

    ``pacer`` (download/limits.Bucket: the person's rate) is asked before each call for the
    bytes it may send; it waits by sleeping, which yields to other greenlets.
    """
    sockfd = sock.fileno()
    wait = None
    sent = 0
    # The baseline is read once the first call leaves something to send, so that a body
    # the kernel takes whole, the common case, costs no extra system call.
    acked = Acknowledged(sock)
    try:
        paid = 0  # bytes the pacer allowed and the kernel has not taken yet
        while sent < count:
            step = min(count - sent, BLOCK)
            if pacer is not None:
                if not paid:
                    paid = min(step, pacer.chunk())
                    pacer.take(paid)
                step = paid
            try:
                n = os.sendfile(sockfd, fileno, offset + sent, step)
            except BlockingIOError:
                wait = wait or _waiter(sock)
                wait(sockfd)
                continue
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            if n == 0:  # the file is shorter than promised: stop, the server closes
                break
            if paid:
                if n < paid:
                    pacer.take(n - paid)  # give back what the kernel did not take
                paid = 0
            sent += n
            if sent < count:
                acked.handed(sent)
                if progress is not None:
                    progress(acked.delivered(sent))
    except OSError:
        if progress is not None:
            progress(acked.delivered(sent))
        raise
    if progress is not None:
        progress(acked.settle(sent) if sent == count else sent)
    return sent


def gunicorn_sendfile(self, respiter) -> bool:
    """Replacement for gunicorn.http.wsgi.Response.sendfile (same contract: True when sent)."""
    from gunicorn import util

    if self.cfg.is_ssl or not self.can_sendfile() or self.response_length is None:
        return False
    filelike = respiter.filelike
    if not util.has_fileno(filelike) or self.is_chunked():
        return False
    fileno = filelike.fileno()
    try:
        offset = os.lseek(fileno, 0, os.SEEK_CUR)
    except OSError:
        return False
    if self._omits_body:
        self.send_headers()
        return True

    self.sent += send_file_body(self.sock, self.send_headers, filelike, fileno, offset,
                                self.response_length)
    return True


def send_file_body(sock, head, filelike, fileno: int, offset: int, length: int) -> int:
    """Send the response head and ``length`` bytes of the file from ``offset``; return the
    body bytes sent. ``head`` is the head's bytes, or a function that sends it (gunicorn's
    ``send_headers``). ``filelike.bytes_sent`` follows what the client received (see
    send_range); ``filelike.pacer``, if set, paces it. Shared by gunicorn's cycle (above)
    and the lean one (portal/worker.py).

    The head leaves in the same segment as the file's first bytes, so the client's TCP is
    woken once per response, not twice (nginx does the same with tcp_nopush): bytes are
    sent with MSG_MORE, which holds them until sendfile's last page; a function (or a paced
    body, whose first bytes may wait) is run corked (TCP_CORK, which the kernel flushes
    after 200 ms at the latest), uncorked whatever happens, which sends what is queued.
    """

    def progress(n: int) -> None:
        filelike.bytes_sent = n

    pacer = getattr(filelike, "pacer", None)
    progress(0)
    if isinstance(head, bytes) and _MSG_MORE and pacer is None:  # a pacer may wait: cork
        sock.sendall(head, _MSG_MORE)
        return send_range(sock, fileno, offset, length, progress, pacer)
    corked = _cork(sock, True)
    try:
        if isinstance(head, bytes):
            sock.sendall(head)
        else:
            head()
        return send_range(sock, fileno, offset, length, progress, pacer)
    finally:
        if corked:
            _cork(sock, False)


_MSG_MORE = getattr(socket, "MSG_MORE", 0)  # Linux


def _cork(sock, on: bool) -> bool:
    """Set TCP_CORK (Linux); False where it cannot be set (another platform, not TCP)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1 if on else 0)
    except (OSError, AttributeError):
        return False
    return True


def install() -> None:
    """Patch gunicorn's Response.sendfile in this worker process."""
    from gunicorn.http import wsgi

    wsgi.Response.sendfile = gunicorn_sendfile
