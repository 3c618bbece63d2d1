"""multipart/byteranges (RFC 9110 §14.6): laying out and streaming a multi-range body."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from .model import Representation

# Subset of RFC 2046 bchars that are also HTTP tchars, so the boundary can be
# used unquoted in the Content-Type parameter and verbatim in the body.
_BOUNDARY_RE = re.compile(r"[0-9A-Za-z'+_.-]{1,70}")


@dataclass(frozen=True)
class MultipartPlan:
    """Everything needed to send a multipart/byteranges body.

    ``parts`` holds ``(header_bytes, start, stop)``; the body is, for each
    part, its header bytes followed by ``rep[start:stop]``, then ``epilogue``.
    ``content_length`` is the exact body length.
    """

    content_type: str
    content_length: int
    parts: tuple[tuple[bytes, int, int], ...]
    epilogue: bytes


class RangeReadError(RuntimeError):
    """read_range produced a different number of bytes than the plan promised."""


def new_boundary() -> str:
    """A fresh random multipart boundary (128 bits, hex).

    Random rather than content-derived so that a stored file cannot be crafted
    to contain the delimiter of its own multipart response.
    """
    return secrets.token_hex(16)


def multipart_plan(
    ranges: Iterable[tuple[int, int]], rep: Representation, boundary: str
) -> MultipartPlan:
    """Lay out a multipart/byteranges body for ``ranges`` of ``rep``.

    ``ranges`` must be non-empty, sorted, non-overlapping, half-open and
    inside ``[0, rep.size)`` (as produced by :func:`evaluate`).  The body is::

        --B CRLF Content-Type: T CRLF Content-Range: bytes a-b/N CRLF CRLF <bytes>
        CRLF --B CRLF ...                                          <bytes>
        CRLF --B-- CRLF

    i.e. the first delimiter has no leading CRLF (the preamble is empty) and
    every later delimiter's leading CRLF is counted in its part header.
    """
    if not isinstance(boundary, str) or not _BOUNDARY_RE.fullmatch(boundary):
        raise ValueError(f"invalid multipart boundary: {boundary!r}")
    spans = tuple((int(a), int(b)) for a, b in ranges)
    if not spans:
        raise ValueError("multipart_plan needs at least one range")
    previous_stop = 0
    for start, stop in spans:
        if not (previous_stop <= start < stop <= rep.size):
            raise ValueError(f"ranges must be sorted, disjoint and within the file: {spans!r}")
        previous_stop = stop

    parts = []
    for index, (start, stop) in enumerate(spans):
        # Every delimiter after the first starts with the CRLF that ends the
        # previous part's body (RFC 2046 §5.1.1).
        lead = "" if index == 0 else "\r\n"
        header = (
            f"{lead}--{boundary}\r\n"
            f"Content-Type: {rep.content_type}\r\n"
            f"Content-Range: bytes {start}-{stop - 1}/{rep.size}\r\n\r\n"
        ).encode("ascii")
        parts.append((header, start, stop))
    epilogue = f"\r\n--{boundary}--\r\n".encode("ascii")
    length = sum(len(header) + stop - start for header, start, stop in parts) + len(epilogue)
    return MultipartPlan(
        content_type=f"multipart/byteranges; boundary={boundary}",
        content_length=length,
        parts=tuple(parts),
        epilogue=epilogue,
    )


def iter_multipart(
    plan: MultipartPlan, read_range: Callable[[int, int], Iterable[bytes]]
) -> Iterator[bytes]:
    """Yield the multipart body of ``plan``, reading part bodies via ``read_range``.

    ``read_range(start, stop)`` must yield exactly ``stop - start`` bytes in
    total.  If it yields more or fewer, :class:`RangeReadError` is raised --
    the advertised Content-Length would otherwise be wrong and the client
    would silently receive a corrupt file; aborting the response is better.
    """
    for header, start, stop in plan.parts:
        yield header
        expected = stop - start
        received = 0
        for chunk in read_range(start, stop):
            if not chunk:
                continue
            received += len(chunk)
            if received > expected:
                raise RangeReadError(f"read_range({start}, {stop}) returned too many bytes")
            yield chunk
        if received != expected:
            raise RangeReadError(
                f"read_range({start}, {stop}) returned {received} of {expected} bytes"
            )
    yield plan.epilogue
