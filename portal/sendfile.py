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
    # What was written on this connection before the body (headers, earlier responses):
    # read once the first call leaves something to send (written = acked + still queued),
    # so that a body the kernel takes whole, the common case, costs no extra system call.
    before = None

    def delivered() -> int:
        now = None if before is None else peer_acked(sock)
        return sent if now is None else max(0, min(sent, now - before))

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
            if sent < count and before is None:
                acked, queued = peer_acked(sock), unacknowledged(sock)
                if acked is not None and queued is not None:
                    before = acked + queued - sent
            if progress is not None and sent < count:
                progress(delivered())
    except OSError:
        if progress is not None:
            progress(delivered())
        raise
    if progress is not None:
        progress(sent)
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

    def progress(n: int) -> None:
        filelike.bytes_sent = n

    progress(0)
    # Corked: the headers leave in the same segment as the file's first bytes, so the
    # client's TCP is woken once per response, not twice (nginx does the same with
    # tcp_nopush). Uncorked whatever happens, which sends what is queued.
    corked = _cork(self.sock, True)
    try:
        self.send_headers()
        sent = send_range(self.sock, fileno, offset, self.response_length, progress,
                          getattr(filelike, "pacer", None))
    finally:
        if corked:
            _cork(self.sock, False)
    self.sent += sent
    return True


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
