"""Sans-IO HTTP semantics for serving a stored file representation.

This module decides *what* a download response must look like -- status,
selected byte ranges and the representation headers -- from the request
method, the request header fields and a description of the stored file.  It
never touches sockets, files or Flask, so it can be tested exhaustively and
reused by any front end.

Normative references:

* RFC 9110 §8.8 (validators), §13 (conditional requests), §14 (range
  requests), §15.3.7 / §15.5.17 (206 / 416).
* RFC 2046 §5.1.1 and RFC 9110 §14.6 (multipart/byteranges).
* RFC 6266 + RFC 8187 (Content-Disposition with a UTF-8 filename).
* RFC 9530 (Repr-Digest).

Policy choices that RFC 9110 leaves to the server are documented next to the
code that implements them (search for "Policy").
"""

from __future__ import annotations

import base64
import functools
import re
import secrets
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from itertools import pairwise
from urllib.parse import quote

from werkzeug.http import http_date

from ..filenames import FALLBACK_NAME, cap_length, clean_filename, split_extension

__all__ = [
    "MAX_RANGE_HEADER_LENGTH",
    "Decision",
    "MultipartPlan",
    "RangeOutcome",
    "RangeReadError",
    "RangeSelection",
    "Representation",
    "content_disposition",
    "evaluate",
    "field",
    "is_active_content",
    "is_plain_byte_range",
    "is_single_byte_range",
    "iter_multipart",
    "multipart_plan",
    "new_boundary",
    "parse_http_date",
    "repr_digest",
    "select_ranges",
    "strong_etag",
]

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


# ---------------------------------------------------------------------------
# Header field access
# ---------------------------------------------------------------------------


def _field_values(headers: Mapping[str, str], name: str) -> list[str]:
    """All field lines named ``name``, case-insensitively.

    werkzeug's Headers/EnvironHeaders expose every line through ``getlist``;
    for a plain mapping we scan the items so that tests (and callers) may pass
    a dict with any capitalisation.
    """
    environ = getattr(headers, "environ", None)
    if isinstance(environ, dict):
        # A request's EnvironHeaders: read the one WSGI key directly (the server has joined
        # repeated lines already); its getlist() walks the whole environ on every call,
        # which made evaluate() about 30 us a download.
        value = environ.get("HTTP_" + name.upper().replace("-", "_"))
        values = [] if value is None else [value]
        return [v for v in values if isinstance(v, str)]
    getlist = getattr(headers, "getlist", None)
    if callable(getlist):
        values = getlist(name)
    else:
        lname = name.lower()
        values = [v for k, v in headers.items() if isinstance(k, str) and k.lower() == lname]
    return [v for v in values if isinstance(v, str)]


def field(headers: Mapping[str, str], name: str) -> str | None:
    """A field's value as one string (repeated lines joined with ", "), None when absent:
    what the download plan asks of a request's headers outside evaluate."""
    values = _field_values(headers, name)
    return ", ".join(values) if values else None


def _singleton_field(headers: Mapping[str, str], name: str) -> str | None:
    """Value of a field that must occur once, or None if absent.

    Several lines of a singleton field (e.g. two Range lines) cannot be
    interpreted; we return "" which every caller treats as invalid, so the
    field is ignored in the same way as a syntactically broken one.
    """
    values = _field_values(headers, name)
    if not values:
        return None
    if len(values) > 1:
        return ""
    return values[0].strip(" \t")


def _list_field(headers: Mapping[str, str], name: str) -> str | None:
    """Combined value of a list-based field (RFC 9110 §5.3), or None if absent."""
    values = _field_values(headers, name)
    if not values:
        return None
    return ", ".join(v.strip(" \t") for v in values)


# ---------------------------------------------------------------------------
# HTTP-date (RFC 9110 §5.6.7)
# ---------------------------------------------------------------------------

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MON = r"(?P<mon>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_TIME = r"(?P<h>[0-9]{2}):(?P<mi>[0-9]{2}):(?P<s>[0-9]{2})"
# re.ASCII matters: with IGNORECASE alone Python folds e.g. U+017F (long s) to
# "s" and U+212A (Kelvin) to "k", which would accept non-ASCII look-alikes.
_DATE_FLAGS = re.ASCII | re.IGNORECASE
_IMF_FIXDATE = re.compile(
    rf"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), (?P<d>[0-9]{{2}}) {_MON} (?P<y>[0-9]{{4}}) {_TIME} GMT",
    _DATE_FLAGS,
)
_RFC850_DATE = re.compile(
    r"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), "
    rf"(?P<d>[0-9]{{2}})-{_MON}-(?P<y>[0-9]{{2}}) {_TIME} GMT",
    _DATE_FLAGS,
)
_ASCTIME_DATE = re.compile(
    rf"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) {_MON} (?P<d>[0-9]{{2}}| [0-9]) {_TIME} (?P<y>[0-9]{{4}})",
    _DATE_FLAGS,
)


def parse_http_date(value: str) -> datetime | None:
    """Parse an HTTP-date (IMF-fixdate, rfc850-date or asctime-date) to aware UTC.

    Returns None for anything that is not exactly one valid HTTP-date --
    including lists of dates, numeric time zones and trailing garbage --
    because RFC 9110 §13.1.3/§13.1.4 require such conditional fields to be
    ignored rather than guessed at (werkzeug's ``parse_date`` is more lenient,
    which is why it is not used here).  Day and month names are matched
    case-insensitively (robustness, §5.6.7); the weekday is not cross-checked.
    """
    value = value.strip(" \t")
    m = _IMF_FIXDATE.fullmatch(value) or _ASCTIME_DATE.fullmatch(value)
    two_digit_year = False
    if m is None:
        m = _RFC850_DATE.fullmatch(value)
        two_digit_year = m is not None
    if m is None:
        return None
    year = int(m["y"])
    if two_digit_year:
        # §5.6.7: a two-digit year that appears to be more than 50 years in the
        # future denotes the most recent past year with the same last digits.
        now_year = datetime.now(UTC).year
        year += now_year - now_year % 100
        if year > now_year + 50:
            year -= 100
    # HTTP allows a leap second (60); datetime does not, and one second of
    # precision loss cannot change a validator comparison meaningfully.
    second = min(int(m["s"]), 59)
    try:
        return datetime(
            year,
            _MONTHS.index(m["mon"].title()) + 1,
            int(m["d"]),
            int(m["h"]),
            int(m["mi"]),
            second,
            tzinfo=UTC,
        )
    except ValueError:  # e.g. 31 Feb, hour 25, year 0000
        return None


def _last_modified_seconds(rep: Representation) -> datetime:
    # HTTP-dates have one-second resolution; comparing the sub-second part
    # would make a freshly stored file look "modified since" its own header.
    return rep.last_modified.astimezone(UTC).replace(microsecond=0)


# ---------------------------------------------------------------------------
# Entity tags (RFC 9110 §8.8.3)
# ---------------------------------------------------------------------------

# entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE ; etagc includes "," so a list
# cannot be split on commas -- it has to be scanned.
_ENTITY_TAG_RE = re.compile(r'(W/)?"([\x21\x23-\x7e\x80-\xff]*)"')


def _parse_etag_list(value: str) -> list[tuple[bool, str]] | None:
    """Parse ``#entity-tag`` into ``[(weak, opaque), ...]``; None if malformed.

    Empty list elements are accepted (RFC 9110 §5.6.1).  A malformed list is
    reported as a whole rather than partially used: the callers then treat it
    as "matches nothing", which fails closed for If-Match and merely disables
    the cache shortcut for If-None-Match.
    """
    tags: list[tuple[bool, str]] = []
    pos, end = 0, len(value)
    expect_separator = False
    while pos < end:
        ch = value[pos]
        if ch in " \t":
            pos += 1
        elif ch == ",":
            expect_separator = False
            pos += 1
        elif expect_separator:
            return None
        else:
            m = _ENTITY_TAG_RE.match(value, pos)
            if m is None:
                return None
            tags.append((m.group(1) is not None, m.group(2)))
            pos = m.end()
            expect_separator = True
    return tags


def _if_match_passes(value: str, rep: Representation) -> bool:
    # §13.1.1: "*" is true whenever a current representation exists, which is
    # always the case here.  Otherwise the *strong* comparison is used.
    if value.strip(" \t") == "*":
        return True
    tags = _parse_etag_list(value)
    return bool(tags) and any(not weak and tag == rep.etag for weak, tag in tags)


def _if_none_match_matches(value: str, rep: Representation) -> bool:
    # §13.1.2: weak comparison -- W/"x" matches our strong "x".
    if value.strip(" \t") == "*":
        return True
    tags = _parse_etag_list(value)
    return bool(tags) and any(tag == rep.etag for _weak, tag in tags)


def _if_range_passes(value: str, rep: Representation, last_modified: datetime) -> bool:
    """Evaluate If-Range (§13.1.5); an invalid value evaluates to false."""
    # §13.1.5: an entity-tag is recognised by its leading DQUOTE (or W/).
    if value.startswith(('"', "W/")):
        m = _ENTITY_TAG_RE.fullmatch(value)
        # Strong comparison only: a weak tag can never select a range, since
        # byte ranges from two "equivalent" representations do not splice.
        return m is not None and m.group(1) is None and m.group(2) == rep.etag
    date = parse_http_date(value)
    # Exact match, not "<=": an older or newer date means the client holds a
    # different representation than the one we would be slicing.
    return date is not None and date == last_modified


# ---------------------------------------------------------------------------
# Range (RFC 9110 §14)
# ---------------------------------------------------------------------------


class RangeOutcome(Enum):
    """How a Range field value was judged by :func:`select_ranges`."""

    INVALID = "invalid"  # not a valid bytes ranges-specifier -> ignore (200)
    EGREGIOUS = "egregious"  # valid but abusive (see select_ranges) -> ignore (200)
    IGNORED = "ignored"  # satisfiable but inexpressible as 206 (empty file) -> 200
    UNSATISFIABLE = "unsatisfiable"  # no satisfiable range-spec -> 416
    SATISFIABLE = "satisfiable"  # -> 206 with ``ranges``


@dataclass(frozen=True)
class RangeSelection:
    """Result of :func:`select_ranges`: outcome, final ranges and a log reason."""

    outcome: RangeOutcome
    ranges: tuple[tuple[int, int], ...] = ()
    reason: str = ""


class _InvalidRange(Exception):
    """Raised internally when a range-spec violates the grammar."""


_INT_RANGE_RE = re.compile(r"([0-9]+)-([0-9]*)")  # [0-9], not \d: ASCII digits only
_SUFFIX_RANGE_RE = re.compile(r"-([0-9]+)")


def _iter_elements(value: str) -> Iterator[str]:
    """Lazily split on commas so parsing can stop early without a full split."""
    pos = 0
    while True:
        comma = value.find(",", pos)
        if comma < 0:
            yield value[pos:]
            return
        yield value[pos:comma]
        pos = comma + 1


def _digits_key(digits: str) -> tuple[int, str]:
    # Orders decimal strings numerically without int(): Python refuses to
    # convert strings over 4300 digits, and we do not want to pay for it.
    stripped = digits.lstrip("0") or "0"
    return len(stripped), stripped


def _bounded_int(digits: str, size: int) -> int:
    """int(digits), or ``size + 1`` when it obviously exceeds ``size``.

    Every consumer only needs to know "is it >= size" once a value is larger
    than the representation, so huge numbers (10**30, 5000 digits) are
    saturated instead of being converted.
    """
    stripped = digits.lstrip("0") or "0"
    if len(stripped) > len(str(size)):
        return size + 1
    return int(stripped)


def _parse_spec(spec: str, size: int) -> tuple[int, int] | None:
    """One range-spec -> half-open span, None if unsatisfiable.

    Raises _InvalidRange for a grammar violation or first-pos > last-pos.
    Returns ``(0, 0)`` for a non-zero suffix-range on an empty representation:
    RFC 9110 §14.1.1 calls that satisfiable, yet it selects no bytes.
    """
    m = _INT_RANGE_RE.fullmatch(spec)
    if m is not None:
        first_digits, last_digits = m.group(1), m.group(2)
        if last_digits and _digits_key(first_digits) > _digits_key(last_digits):
            raise _InvalidRange(spec)
        first = _bounded_int(first_digits, size)
        if first >= size:
            return None  # §14.1.1: int-range satisfiable iff first-pos < length
        if not last_digits:
            return first, size
        return first, min(_bounded_int(last_digits, size), size - 1) + 1
    m = _SUFFIX_RANGE_RE.fullmatch(spec)
    if m is not None:
        length = _bounded_int(m.group(1), size)
        if length == 0:
            return None  # §14.1.1: suffix-length 0 is unsatisfiable
        if size == 0:
            return 0, 0
        return max(0, size - length), size
    raise _InvalidRange(spec)


def _coalesce(spans: list[tuple[int, int]]) -> tuple[tuple[tuple[int, int], ...], int]:
    """Sort and merge spans; also count specs that overlap an earlier one."""
    ordered = sorted(spans)
    merged: list[list[int]] = [list(ordered[0])]
    overlapping = 0
    for start, stop in ordered[1:]:
        current = merged[-1]
        if start < current[1]:
            overlapping += 1
        if start <= current[1] + COALESCE_GAP:
            current[1] = max(current[1], stop)
        else:
            merged.append([start, stop])
    return tuple((a, b) for a, b in merged), overlapping


#: One byte range in the plainest form: lower-case unit, no spaces, at most 15 digits a
#: position. nginx (grants) and S3 (redirects) parse those exactly as select_ranges does.
_PLAIN_RANGE = re.compile(r"bytes=(?:[0-9]{1,15}-[0-9]{0,15}|-[0-9]{1,15})")


def is_plain_byte_range(value: str) -> bool:
    """True for ``bytes=A-``, ``bytes=A-B`` or ``bytes=-N`` written plainly (see above)."""
    return _PLAIN_RANGE.fullmatch(value) is not None


def is_single_byte_range(value: str) -> bool:
    """True for one range ``bytes=A-``, ``bytes=A-B`` or ``bytes=-N`` in ASCII digits, with
    the spaces and unit case select_ranges also accepts (what S3 takes as one range)."""
    unit, _, spec = value.strip().partition("=")
    first, dash, last = spec.strip().partition("-")
    if unit.strip().lower() != "bytes" or not dash:
        return False

    def digits(text: str) -> bool:
        return text.isascii() and text.isdigit()

    return (digits(first) and (last == "" or digits(last))) or (first == "" and digits(last))


def select_ranges(value: str, size: int, *, max_ranges: int = 64) -> RangeSelection:
    """Judge a Range field value against a representation of ``size`` bytes.

    Grammar (RFC 9110 §14.1.1/§14.1.2): ``bytes=`` followed by a comma list of
    ``first-[last]`` or ``-suffix`` specs; the unit is case-insensitive, OWS
    around list elements and empty elements are accepted, digits are ASCII
    only, and ``first > last`` anywhere invalidates the whole field.  Numbers
    of any length are accepted and saturated (never converted wholesale).

    Policy -- a syntactically valid field is *egregious* (RFC 9110 §14.2,
    CVE-2011-3192) and ignored, i.e. answered with 200, when any of:

    1. the raw value is longer than ``MAX_RANGE_HEADER_LENGTH`` (8 KiB);
    2. it has more than ``max_ranges`` non-empty range-specs (parsing stops
       at spec ``max_ranges + 1``, so at most ``max_ranges`` spans are ever
       held in memory and work is O(8 KiB) regardless of the input);
    3. more than ``MAX_OVERLAPPING_SPECS`` (2) satisfiable specs overlap an
       earlier one (in sorted order);
    4. the satisfiable specs request more than ``2 * size + OVERLAP_SLACK``
       bytes in total before coalescing (amplification through overlap);
    5. more than ``MAX_OUT_OF_ORDER`` (4) satisfiable specs start before the
       spec preceding them in the request;
    6. more than ``max_ranges`` ranges remain after coalescing (implied by 2,
       checked anyway so the bound does not depend on the merge logic).

    Unsatisfiable specs are dropped (§14.1.1); if none is satisfiable the
    outcome is UNSATISFIABLE (416).  Exception: on an empty representation a
    non-zero suffix-range is satisfiable per §14.1.1 but selects no bytes and
    a 206 cannot express that, so the Range is IGNORED (200, empty body), as
    §14.2 allows.  Satisfiable spans are sorted and merged when overlapping or
    adjacent (``COALESCE_GAP``).
    """
    if max_ranges < 1:
        raise ValueError("max_ranges must be >= 1")
    if len(value) > MAX_RANGE_HEADER_LENGTH:
        return RangeSelection(RangeOutcome.EGREGIOUS, reason="field value too long")
    unit, equals, range_set = value.strip(" \t").partition("=")
    # isascii() first: str.lower() maps some non-ASCII letters onto ASCII
    # (U+212A KELVIN SIGN -> "k"); none hits "bytes" today, but the unit is an
    # ASCII token and should be compared as one regardless of Unicode tables.
    if not equals or not unit.isascii() or unit.lower() != "bytes":
        return RangeSelection(RangeOutcome.INVALID, reason="not a bytes range unit")

    spans: list[tuple[int, int]] = []
    n_specs = 0
    empty_hit = False
    for element in _iter_elements(range_set):
        spec = element.strip(" \t")
        if not spec:
            continue  # empty list element (RFC 9110 §5.6.1)
        n_specs += 1
        if n_specs > max_ranges:
            return RangeSelection(RangeOutcome.EGREGIOUS, reason="too many range-specs")
        try:
            span = _parse_spec(spec, size)
        except _InvalidRange:
            return RangeSelection(RangeOutcome.INVALID, reason=f"invalid range-spec {spec[:40]!r}")
        if span is None:
            continue
        if span[0] == span[1]:
            empty_hit = True
            continue
        spans.append(span)

    if n_specs == 0:
        return RangeSelection(RangeOutcome.INVALID, reason="empty range-set")
    if not spans:
        if empty_hit:
            return RangeSelection(RangeOutcome.IGNORED, reason="suffix range on empty file")
        return RangeSelection(RangeOutcome.UNSATISFIABLE, reason="no satisfiable range")

    ranges, overlapping = _coalesce(spans)
    if overlapping > MAX_OVERLAPPING_SPECS:
        return RangeSelection(RangeOutcome.EGREGIOUS, reason="too many overlapping ranges")
    if sum(stop - start for start, stop in spans) > 2 * size + OVERLAP_SLACK:
        return RangeSelection(RangeOutcome.EGREGIOUS, reason="requested bytes far exceed size")
    descents = sum(1 for prev, cur in pairwise(spans) if cur[0] < prev[0])
    if descents > MAX_OUT_OF_ORDER:
        return RangeSelection(RangeOutcome.EGREGIOUS, reason="too many out-of-order ranges")
    if len(ranges) > max_ranges:
        return RangeSelection(RangeOutcome.EGREGIOUS, reason="too many ranges after coalescing")
    return RangeSelection(RangeOutcome.SATISFIABLE, ranges=ranges)


# ---------------------------------------------------------------------------
# The decision procedure
# ---------------------------------------------------------------------------


def _validator_headers(rep: Representation, last_modified: datetime) -> list[tuple[str, str]]:
    return [("ETag", f'"{rep.etag}"'), ("Last-Modified", http_date(last_modified))]


def evaluate(
    method: str,
    headers: Mapping[str, str],
    rep: Representation,
    *,
    max_ranges: int = 64,
) -> Decision:
    """Decide the response to ``method`` on ``rep`` given the request ``headers``.

    Preconditions are evaluated in the order of RFC 9110 §13.2.2:

    1. If-Match (strong comparison, ``*`` matches) false -> 412.
    2. Otherwise, without If-Match, a valid If-Unmodified-Since earlier than
       Last-Modified -> 412.
    3. If-None-Match (weak comparison, ``*`` matches) matching -> 304 for
       GET/HEAD, 412 for other methods.
    4. Otherwise, without If-None-Match, for GET/HEAD a valid
       If-Modified-Since not earlier than Last-Modified -> 304.
    5. For GET only, Range (see :func:`select_ranges`) guarded by If-Range
       (strong entity-tag or exact date; anything else ignores Range).

    Dates are compared at one-second resolution and invalid dates are
    ignored.  HEAD never looks at Range: it returns the headers of a full
    200.  ``method`` is case-sensitive (RFC 9110 §9.1), so "get" is *not*
    GET.  For methods other than GET/HEAD only the preconditions are
    meaningful; if they pass, a 200 with representation headers is returned
    and the caller decides what to do with the method.  ``headers`` may be a
    werkzeug ``Headers``/``EnvironHeaders`` or any mapping (looked up
    case-insensitively).  See :class:`Decision` for the headers produced.
    """
    if max_ranges < 1:
        raise ValueError("max_ranges must be >= 1")
    last_modified = _last_modified_seconds(rep)
    is_get = method == "GET"
    is_head = method == "HEAD"
    precondition_failed = Decision(412, (), [], False)

    # Step 1 / 2: the lost-update guards.
    if_match = _list_field(headers, "If-Match")
    if if_match is not None:
        if not _if_match_passes(if_match, rep):
            return precondition_failed
    else:
        if_unmodified = _singleton_field(headers, "If-Unmodified-Since")
        if if_unmodified is not None:
            date = parse_http_date(if_unmodified)
            if date is not None and last_modified > date:
                return precondition_failed

    # Step 3 / 4: the cache-validation shortcuts.
    if_none_match = _list_field(headers, "If-None-Match")
    if if_none_match is not None:
        if _if_none_match_matches(if_none_match, rep):
            if is_get or is_head:
                return Decision(304, (), _validator_headers(rep, last_modified), False)
            return precondition_failed
    elif is_get or is_head:
        if_modified = _singleton_field(headers, "If-Modified-Since")
        if if_modified is not None:
            date = parse_http_date(if_modified)
            if date is not None and last_modified <= date:
                return Decision(304, (), _validator_headers(rep, last_modified), False)

    base = [*_validator_headers(rep, last_modified), ("Accept-Ranges", "bytes")]

    # Step 5: range handling is defined for GET only (§14.2).
    if is_get:
        range_value = _singleton_field(headers, "Range")
        if range_value is not None:
            if_range = _singleton_field(headers, "If-Range")
            if if_range is None or _if_range_passes(if_range, rep, last_modified):
                selection = select_ranges(range_value, rep.size, max_ranges=max_ranges)
                if selection.outcome is RangeOutcome.UNSATISFIABLE:
                    return Decision(
                        416,
                        (),
                        [("Content-Range", f"bytes */{rep.size}"), ("Accept-Ranges", "bytes")],
                        False,
                    )
                if selection.outcome is RangeOutcome.SATISFIABLE:
                    ranges = selection.ranges
                    if len(ranges) == 1:
                        start, stop = ranges[0]
                        base += [
                            ("Content-Range", f"bytes {start}-{stop - 1}/{rep.size}"),
                            ("Content-Length", str(stop - start)),
                        ]
                    return Decision(206, ranges, base, True)
                # INVALID / EGREGIOUS / IGNORED: fall through to a full 200.

    base.append(("Content-Length", str(rep.size)))
    return Decision(200, (), base, not is_head)


# ---------------------------------------------------------------------------
# multipart/byteranges (RFC 9110 §14.6)
# ---------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------
# Content-Disposition (RFC 6266, RFC 8187)
# ---------------------------------------------------------------------------

# RFC 8187 attr-char minus what urllib.parse.quote already leaves alone.
_ATTR_CHAR_EXTRA = "!#$&+^`|"


def _ascii_fallback(name: str) -> str:
    """ASCII-only approximation of an already cleaned name for ``filename=``."""
    out: list[str] = []
    # NFKD splits accented letters into base + combining mark (é -> e) and
    # maps compatibility forms (fullwidth letters, ligatures) to ASCII.
    for ch in unicodedata.normalize("NFKD", name):
        if unicodedata.combining(ch):
            continue
        if ch.isascii() and ch.isprintable():
            if ch in '"\\':
                continue  # cannot appear inside a quoted-string unescaped
            # "/" can come back from NFKD (fullwidth solidus); "%" followed by
            # hex is percent-decoded by some agents (RFC 6266 appendix D).
            ch = "_" if ch in "/%" else ch
            out.append(ch)
        elif not out or out[-1] != "_":
            out.append("_")  # one "_" per run of non-ASCII characters
    fallback = re.sub(" {2,}", " ", "".join(out)).strip(" .")
    fallback = cap_length(fallback)
    stem, ext = split_extension(fallback)
    if not stem.strip("_ ."):
        # Nothing recognisable survived (e.g. an all-CJK stem): a generic stem
        # with the real extension is more useful than "_.pdf".
        fallback = FALLBACK_NAME + ext
    return fallback


@functools.lru_cache(maxsize=4096)  # pure, ~10 us, and asked on every download of a file
def content_disposition(filename: str, *, inline: bool = False) -> str:
    """Build a Content-Disposition value (RFC 6266) for ``filename``.

    The name is passed through :func:`clean_filename`.  The result is
    ``attachment; filename="<ascii fallback>"`` followed, whenever the fallback
    differs from the cleaned name, by ``; filename*=UTF-8''<percent-encoded>``
    (RFC 8187).  A name that is already plain, safe ASCII therefore gets only
    ``filename=``.  ``inline=True`` uses the ``inline`` disposition type.
    """
    name = clean_filename(filename)
    fallback = _ascii_fallback(name)
    value = f'{"inline" if inline else "attachment"}; filename="{fallback}"'
    if fallback != name:
        value += "; filename*=UTF-8''" + quote(name, safe=_ATTR_CHAR_EXTRA, encoding="utf-8")
    return value


# ---------------------------------------------------------------------------
# Content-type safety, digests, validators
# ---------------------------------------------------------------------------

# Types a browser may execute or render as a document with script access to
# the portal's origin.  Anything "+xml" is also active (XSLT / XHTML / SVG /
# MathML processing).  Legacy IE/Flash types are included because the cost of
# a false positive (forced download) is low and a false negative is XSS.
_ACTIVE_TYPES = frozenset(
    {
        "text/html",
        "application/xhtml+xml",
        "image/svg+xml",
        "text/xml",
        "application/xml",
        "application/xml-dtd",
        "text/xml-external-parsed-entity",
        "application/xml-external-parsed-entity",
        "text/xsl",
        "text/javascript",
        "application/javascript",
        "application/x-javascript",
        "text/x-javascript",
        "text/ecmascript",
        "application/ecmascript",
        "application/x-ecmascript",
        "text/x-ecmascript",
        "text/jscript",
        "text/livescript",
        "text/javascript1.0",
        "text/javascript1.1",
        "text/javascript1.2",
        "text/javascript1.3",
        "text/javascript1.4",
        "text/javascript1.5",
        "text/x-component",
        "application/hta",
        "application/x-shockwave-flash",
        "application/futuresplash",
        "text/vnd.wap.wml",
        "multipart/x-mixed-replace",
    }
)
_TOKEN_RE = re.compile(r"[!#$%&'+.^_`|~0-9a-z-]+")


def is_active_content(mime: str) -> bool:
    """True if a browser could run script from a response of type ``mime``.

    Parameters (``;charset=...``) and case are ignored.  Unparseable values
    (empty, missing subtype, wildcards, non-token characters) are reported as
    active: a browser would sniff them, so the caller should treat them as
    dangerous (force ``attachment`` and ``nosniff``).
    """
    essence = mime.split(";", 1)[0].strip(" \t").lower()
    main, slash, sub = essence.partition("/")
    if not slash or not _TOKEN_RE.fullmatch(main) or not _TOKEN_RE.fullmatch(sub):
        return True
    return essence in _ACTIVE_TYPES or sub.endswith("+xml")


_SHA256_HEX_RE = re.compile(r"[0-9a-fA-F]{64}")


def _check_sha256_hex(sha256_hex: str) -> str:
    if not isinstance(sha256_hex, str) or not _SHA256_HEX_RE.fullmatch(sha256_hex):
        raise ValueError(f"not a SHA-256 hex digest: {sha256_hex!r}")
    return sha256_hex.lower()


def repr_digest(sha256_hex: str) -> str:
    """RFC 9530 Repr-Digest value for a SHA-256 hex digest: ``sha-256=:<b64>:``."""
    raw = bytes.fromhex(_check_sha256_hex(sha256_hex))
    return f"sha-256=:{base64.b64encode(raw).decode('ascii')}:"


def strong_etag(sha256_hex: str) -> str:
    """Opaque-tag (no quotes) for content with this SHA-256: the lower-case hex.

    Derived only from the content, so every node produces the same strong
    validator for the same bytes (RFC 9110 §8.8.3) without coordination.
    """
    return _check_sha256_hex(sha256_hex)
