"""Reading request header fields: field access, HTTP-dates and entity tags."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime

from .model import Representation

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
