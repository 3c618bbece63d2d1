"""Tunables and the data model: what the download core is told and what it answers."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

# ---------------------------------------------------------------------------
# Tunables (Policy).  They are module constants rather than parameters so the
# behaviour is identical on every node and easy to audit.
# ---------------------------------------------------------------------------

#: A Range field value longer than this is ignored outright (answer 200).  A
#: legitimate client never needs 8 KiB to describe the ranges it wants, and the
#: cap bounds the work done on attacker-controlled input before anything else.
MAX_RANGE_HEADER_LENGTH = 8192

#: Ranges separated by at most this many bytes are merged.  0 means only
#: overlapping or adjacent ranges are merged, so a client never receives bytes
#: it did not ask for (RFC 9110 §14.2 permits, but does not require, merging
#: across small gaps).
COALESCE_GAP = 0

#: RFC 9110 §14.2 names "more than two overlapping ranges" as egregious.
MAX_OVERLAPPING_SPECS = 2

#: Requested bytes (before coalescing) may exceed twice the representation size
#: only by this slack; anything beyond is an amplification attempt.
OVERLAP_SLACK = 64 * 1024

#: RFC 9110 §14.2 singles out ranges "requested out of order for no apparent
#: reason".  A few descents are tolerated (a reader fetching a trailer first,
#: e.g. a PDF xref table); more than this many is egregious.
MAX_OUT_OF_ORDER = 4


# ---------------------------------------------------------------------------
# Data model
# ---------------------------------------------------------------------------

# opaque-tag characters we allow for *our own* validators: RFC 9110 etagc
# without obs-text, so the tag survives any header encoding unchanged.
_OWN_ETAG_RE = re.compile(r"[\x21\x23-\x7e]*")
# A media type that is safe to copy into a part header: visible ASCII and
# space only, so a stored content type can never inject CR/LF into the body.
_HEADER_SAFE_RE = re.compile(r"[\x20-\x7e]+")


@dataclass(frozen=True)
class Representation:
    """The selected representation of a stored file (RFC 9110 §3.2).

    ``size`` is the length in bytes (may be 0, may exceed 4 GiB); ``etag`` is
    the opaque-tag *without* quotes of a strong validator; ``last_modified``
    must be timezone-aware (it is compared and emitted in UTC at one-second
    resolution); ``content_type`` is copied into multipart part headers.

    Invalid values raise ``ValueError`` at construction so that a bad database
    row fails loudly instead of producing a malformed response.
    """

    size: int
    etag: str
    last_modified: datetime
    content_type: str

    def __post_init__(self) -> None:
        # bool is an int subclass; a True/False size is certainly a bug.
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise ValueError(f"size must be a non-negative int, got {self.size!r}")
        if not isinstance(self.etag, str) or not _OWN_ETAG_RE.fullmatch(self.etag):
            raise ValueError(f"etag is not a valid opaque-tag: {self.etag!r}")
        if not isinstance(self.last_modified, datetime) or self.last_modified.utcoffset() is None:
            raise ValueError("last_modified must be a timezone-aware datetime")
        if not isinstance(self.content_type, str) or not _HEADER_SAFE_RE.fullmatch(
            self.content_type
        ):
            raise ValueError(f"content_type is not header-safe: {self.content_type!r}")


@dataclass(frozen=True)
class Decision:
    """The outcome of :func:`evaluate`.

    ``status`` is one of 200, 206, 304, 412 or 416.

    ``ranges`` is non-empty only for 206: sorted, coalesced, disjoint,
    half-open ``(start, stop)`` byte ranges with ``0 <= start < stop <= size``.
    A single range covering the whole representation is still answered with
    206 (the client asked for a range; we never silently upgrade to 200).

    ``headers`` are the fields the response must carry:

    * 200 (GET and HEAD): ETag, Last-Modified, Accept-Ranges, Content-Length.
    * 206, one range: ETag, Last-Modified, Accept-Ranges, Content-Range,
      Content-Length.
    * 206, several ranges: ETag, Last-Modified, Accept-Ranges only.  The caller
      must call :func:`multipart_plan` with ``ranges`` and a fresh
      :func:`new_boundary` and set ``Content-Type: plan.content_type`` and
      ``Content-Length: plan.content_length`` itself, then stream
      :func:`iter_multipart`.  (The boundary is chosen by the caller so that this
      function stays deterministic.)
    * 304: ETag and Last-Modified only (no Content-Length).
    * 412: nothing; the caller sends a short error body of its own.
    * 416: ``Content-Range: bytes */SIZE`` and Accept-Ranges.

    Content-Type / Content-Disposition of the file itself are never included;
    the caller owns them (see :func:`content_disposition`,
    :func:`is_active_content`).

    ``send_body`` is True when the representation bytes (full, one range or
    multipart) must be sent: a 200 or 206 to any method but HEAD.  It is False
    for HEAD, 304, 412 and 416 -- bodies for 412/416, if any, are the caller's
    business.
    """

    status: int
    ranges: tuple[tuple[int, int], ...]
    headers: list[tuple[str, str]]
    send_body: bool

    @property
    def is_multipart(self) -> bool:
        """True for a 206 that must be sent as multipart/byteranges."""
        return self.status == 206 and len(self.ranges) > 1
