"""Response bodies for downloads: zero-copy file wrappers and counted byte streams.

Nothing here touches the request, the session or the database session: the views capture
what a body needs before the response starts (STYLE habit 7), and ``on_close`` is called
with the number of bytes really handed to the server once the server closes the body.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator

from ..instruments import TALLY
from ..sendfile import Acknowledged


class TrackedFile(io.FileIO):
    """A file for ``wsgi.file_wrapper`` that reports, when closed, how many bytes went out.

    Under gunicorn with portal.sendfile installed, the zero-copy path stores the count in
    ``bytes_sent`` as it goes (also when the client aborts). Without it, gunicorn reads the
    file through its write loop, and ``tell() - start`` is the count (at most one block high).
    """

    bytes_sent: int | None = None
    pacer = None  # download/limits.Bucket: portal.sendfile paces the copy by it
    _active = False  # counted among the downloads being sent (instruments.TALLY)

    def __init__(self, path: str, start: int, length: int,
                 on_close: Callable[[int], None] | None) -> None:
        super().__init__(path, "rb")
        self.start = start
        self.length = length
        self.on_close = on_close
        TALLY.opened()
        self._active = True
        self.seek(start)

    def close(self) -> None:
        """Report the bytes sent once, then close the file."""
        if not self._active:
            super().close()
            return
        self._active = False
        callback, self.on_close = self.on_close, None
        sent = 0
        if callback is not None:  # None: never handed to the server (refused by the limits)
            try:
                sent = self.bytes_sent
                if sent is None:
                    sent = self.tell() - self.start
                sent = max(0, min(sent, self.length))
            except (OSError, ValueError):
                sent = 0
        super().close()
        TALLY.closed("sendfile", sent)
        if callback is not None:
            callback(sent)


class CountedBody:
    """An iterable of chunks that reports, on close, the bytes the client received.

    A chunk the server pulled is not a chunk the client got: gunicorn writes a chunk with
    ``sendall`` and only then asks for the next one, so a chunk counts once the next one is
    asked for (or the body is exhausted). And what ``sendall`` handed over may still sit in
    the kernel's send buffer (megabytes per connection) when the client goes away; with the
    connection's socket (gunicorn's ``environ["gunicorn.socket"]``) an unfinished body counts
    what the client's TCP acknowledged, as the zero-copy path does (portal/sendfile.py),
    which may include part of the chunk being written; a body the server took whole counts
    whole once the client took all but the last SETTLE_TAIL of it (``Acknowledged.settle``).
    Without the socket (another WSGI server, the test client) nothing tells what was
    written: the count is what the server was handed, at most one chunk above the truth.
    """

    def __init__(self, chunks: Iterable[bytes], on_close: Callable[[int], None] | None,
                 sock=None, pacer=None) -> None:
        self.chunks = iter(chunks)
        self.on_close = on_close
        self.written = 0  # bytes of the chunks the server finished writing
        self.pending = 0  # bytes of the chunk it is writing
        self.exhausted = False
        self.acked = Acknowledged(sock)
        self.pacer = pacer  # download/limits.Bucket: the person's rate
        TALLY.opened()
        self._active = True  # counted among the downloads being sent until closed

    @property
    def sent(self) -> int:
        """The bytes the client received (see the class)."""
        if self.exhausted:
            return self.acked.settle(self.written)
        if self.acked.sock is None:  # not gunicorn: what the server was handed, as WSGI says
            return self.written + self.pending
        acked = self.acked.acknowledged()
        return self.written if acked is None else min(acked, self.written + self.pending)

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self.pending:  # asked for the next chunk: the last one was written
            self.written += self.pending
            self.pending = 0
            self.acked.handed(self.written)
        elif not self.written:
            self.acked.opening()
        try:
            chunk = next(self.chunks)
        except StopIteration:
            self.exhausted = True
            raise
        if self.pacer is not None:
            self.pacer.take(len(chunk))
        self.pending = len(chunk)
        return chunk

    def close(self) -> None:
        """Close the source and report the count once."""
        close = getattr(self.chunks, "close", None)
        if close is not None:
            close()
        if self._active:
            self._active = False
            callback, self.on_close = self.on_close, None
            try:
                sent = self.sent
            except OSError:
                sent = self.written
            TALLY.closed("stream", sent)
            if callback is not None:
                callback(sent)


def can_sendfile(environ: dict) -> bool:
    """True under gunicorn, whose file_wrapper sends exactly Content-Length bytes from the
    file's current position with sendfile(2); other servers' wrappers read to EOF, which
    would overrun a range."""
    wrapper = environ.get("wsgi.file_wrapper")
    return getattr(wrapper, "__module__", "").startswith("gunicorn.")
