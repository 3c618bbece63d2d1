"""Range (RFC 9110 §14): judging a Range field value against a representation."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from itertools import pairwise

from .model import (
    COALESCE_GAP,
    MAX_OUT_OF_ORDER,
    MAX_OVERLAPPING_SPECS,
    MAX_RANGE_HEADER_LENGTH,
    OVERLAP_SLACK,
)


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
