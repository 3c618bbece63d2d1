"""Response bodies for downloads: zero-copy file wrappers and counted byte streams.

Nothing here touches the request, the session or the database session: the views capture
what a body needs before the response starts (STYLE habit 7), and ``on_close`` is called
with the number of bytes really handed to the server once the server closes the body.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator


class TrackedFile(io.FileIO):
    """A file for ``wsgi.file_wrapper`` that reports, when closed, how many bytes went out.

    Under gunicorn with portal.sendfile installed, the zero-copy path stores the count in
    ``bytes_sent`` as it goes (also when the client aborts). Without it, gunicorn reads the
    file through its write loop, and ``tell() - start`` is the count (at most one block high).
    """

    bytes_sent: int | None = None
    pacer = None  # download/limits.Bucket: portal.sendfile paces the copy by it

    def __init__(self, path: str, start: int, length: int,
                 on_close: Callable[[int], None] | None) -> None:
        super().__init__(path, "rb")
        self.start = start
        self.length = length
        self.on_close = on_close
        self.seek(start)

    def close(self) -> None:
        """Report the bytes sent once, then close the file."""
        if not self.closed and self.on_close is not None:
            callback, self.on_close = self.on_close, None
            try:
                sent = self.bytes_sent
                if sent is None:
                    sent = self.tell() - self.start
                sent = max(0, min(sent, self.length))
            except (OSError, ValueError):
                sent = 0
            super().close()
            callback(sent)
            return
        super().close()


class CountedBody:
    """An iterable that counts the bytes the server pulled and reports them on close."""

    def __init__(self, chunks: Iterable[bytes], on_close: Callable[[int], None] | None,
                 pacer=None) -> None:
        self.chunks = iter(chunks)
        self.on_close = on_close
        self.sent = 0
        self.pacer = pacer  # download/limits.Bucket: the person's rate

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        chunk = next(self.chunks)
        if self.pacer is not None:
            self.pacer.take(len(chunk))
        self.sent += len(chunk)
        return chunk

    def close(self) -> None:
        """Close the source and report the count once."""
        close = getattr(self.chunks, "close", None)
        if close is not None:
            close()
        if self.on_close is not None:
            callback, self.on_close = self.on_close, None
            callback(self.sent)


def can_sendfile(environ: dict) -> bool:
    """True under gunicorn, whose file_wrapper sends exactly Content-Length bytes from the
    file's current position with sendfile(2); other servers' wrappers read to EOF, which
    would overrun a range."""
    wrapper = environ.get("wsgi.file_wrapper")
    return getattr(wrapper, "__module__", "").startswith("gunicorn.")
