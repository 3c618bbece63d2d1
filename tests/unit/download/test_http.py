"""Tests for portal.download.http, the sans-IO RFC 9110 download core.

clean_filename itself is tested in tests/unit/test_filenames.py.
"""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import random
import re
import unicodedata
from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.datastructures import Headers
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from portal.download import http
from portal.filenames import clean_filename

# ---------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------

ETAG = hashlib.sha256(b"portal test file").hexdigest()
# Microseconds on purpose: comparisons must be done at one-second resolution.
LAST_MODIFIED = datetime(2024, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC)
LM_HTTP = "Tue, 02 Jan 2024 03:04:05 GMT"
LM_EARLIER = "Tue, 02 Jan 2024 03:04:04 GMT"
LM_LATER = "Tue, 02 Jan 2024 03:04:06 GMT"
BIG = 5 * 2**30 + 7  # > 4 GiB, not a power of two
HUGE = str(10**30)
SIZE = 1000

# One random buffer, sliced per size, so a wrong offset can never produce the
# right bytes by accident (unlike a repeating pattern).
DATA = random.Random(20240102).randbytes(10**6)

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    database=None,  # do not write .hypothesis/ into the repository
    suppress_health_check=[HealthCheck.too_slow],
)


def make_rep(size: int = SIZE, content_type: str = "application/pdf") -> http.Representation:
    return http.Representation(
        size=size, etag=ETAG, last_modified=LAST_MODIFIED, content_type=content_type
    )


def header(decision: http.Decision, name: str) -> str | None:
    values = [v for k, v in decision.headers if k.lower() == name.lower()]
    assert len(values) <= 1, f"duplicate {name} in {decision.headers}"
    return values[0] if values else None


def full_200_headers(size: int = SIZE) -> list[tuple[str, str]]:
    return [
        ("ETag", f'"{ETAG}"'),
        ("Last-Modified", LM_HTTP),
        ("Accept-Ranges", "bytes"),
        ("Content-Length", str(size)),
    ]


def parse_multipart(body: bytes, boundary: str) -> list[tuple[str, int, int, int, bytes]]:
    """Strict independent parser: [(content_type, start, stop, size, data), ...]."""
    delimiter = b"--" + boundary.encode("ascii")
    parts = []
    pos = 0
    while True:
        assert body[pos : pos + len(delimiter)] == delimiter, (pos, body[pos : pos + 80])
        pos += len(delimiter)
        if body[pos : pos + 2] == b"--":
            assert body[pos + 2 :] == b"\r\n"
            return parts
        assert body[pos : pos + 2] == b"\r\n"
        pos += 2
        end = body.index(b"\r\n\r\n", pos)
        fields = dict(line.split(": ", 1) for line in body[pos:end].decode("ascii").split("\r\n"))
        assert set(fields) == {"Content-Type", "Content-Range"}
        m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", fields["Content-Range"])
        assert m is not None
        first, last, size = (int(g) for g in m.groups())
        pos = end + 4
        data = body[pos : pos + last - first + 1]
        pos += last - first + 1
        assert body[pos : pos + 2] == b"\r\n"
        pos += 2
        parts.append((fields["Content-Type"], first, last + 1, size, data))


def reader(data: bytes, chunk: int = 7):
    def read_range(start: int, stop: int):
        for offset in range(start, stop, chunk):
            yield data[offset : min(offset + chunk, stop)]

    return read_range


def merge(spans):
    """Reference union of half-open spans (independent of the module's code)."""
    out: list[list[int]] = []
    for start, stop in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], stop)
        else:
            out.append([start, stop])
    return [tuple(s) for s in out]


# ---------------------------------------------------------------------------
# Preconditions (RFC 9110 §13.2.2)
# ---------------------------------------------------------------------------

PRECONDITION_CASES = [
    # id, method, headers, expected status
    ("plain-get", "GET", {}, 200),
    ("plain-head", "HEAD", {}, 200),
    # 1. If-Match: strong comparison
    ("im-star", "GET", {"If-Match": "*"}, 200),
    ("im-match", "GET", {"If-Match": f'"{ETAG}"'}, 200),
    ("im-list-match", "GET", {"If-Match": f'"nope", "{ETAG}"'}, 200),
    ("im-list-empty-elems", "GET", {"If-Match": f' , "x",, "{ETAG}" ,'}, 200),
    ("im-weak-is-not-strong", "GET", {"If-Match": f'W/"{ETAG}"'}, 412),
    ("im-mismatch", "GET", {"If-Match": '"other"'}, 412),
    ("im-unquoted-malformed", "GET", {"If-Match": ETAG}, 412),
    ("im-star-in-list-malformed", "GET", {"If-Match": f'*, "{ETAG}"'}, 412),
    ("im-false-with-range", "GET", {"If-Match": '"other"', "Range": "bytes=0-1"}, 412),
    ("im-false-head", "HEAD", {"If-Match": '"other"'}, 412),
    # 2. If-Unmodified-Since only without If-Match
    ("ius-earlier", "GET", {"If-Unmodified-Since": LM_EARLIER}, 412),
    ("ius-equal-subsecond", "GET", {"If-Unmodified-Since": LM_HTTP}, 200),
    ("ius-later", "GET", {"If-Unmodified-Since": LM_LATER}, 200),
    ("ius-invalid-ignored", "GET", {"If-Unmodified-Since": "yesterday"}, 200),
    ("ius-list-ignored", "GET", {"If-Unmodified-Since": f"{LM_EARLIER}, {LM_EARLIER}"}, 200),
    (
        "ius-ignored-when-if-match",
        "GET",
        {"If-Match": f'"{ETAG}"', "If-Unmodified-Since": LM_EARLIER},
        200,
    ),
    (
        "ius-earlier-with-range",
        "GET",
        {"If-Unmodified-Since": LM_EARLIER, "Range": "bytes=0-1"},
        412,
    ),
    # 3. If-None-Match: weak comparison
    ("inm-match", "GET", {"If-None-Match": f'"{ETAG}"'}, 304),
    ("inm-weak-match", "GET", {"If-None-Match": f'W/"{ETAG}"'}, 304),
    ("inm-star", "GET", {"If-None-Match": "*"}, 304),
    ("inm-list", "GET", {"If-None-Match": f'"a", W/"b", "{ETAG}"'}, 304),
    ("inm-no-match", "GET", {"If-None-Match": '"a", "b"'}, 200),
    ("inm-malformed", "GET", {"If-None-Match": ETAG}, 200),
    ("inm-match-head", "HEAD", {"If-None-Match": f'"{ETAG}"'}, 304),
    ("inm-match-with-range", "GET", {"If-None-Match": f'"{ETAG}"', "Range": "bytes=0-1"}, 304),
    ("inm-match-post", "POST", {"If-None-Match": f'"{ETAG}"'}, 412),
    ("inm-star-put", "PUT", {"If-None-Match": "*"}, 412),
    (
        "inm-present-disables-ims",
        "GET",
        {"If-None-Match": '"other"', "If-Modified-Since": LM_LATER},
        200,
    ),
    # 4. If-Modified-Since only without If-None-Match, GET/HEAD only
    ("ims-equal-subsecond", "GET", {"If-Modified-Since": LM_HTTP}, 304),
    ("ims-later", "GET", {"If-Modified-Since": LM_LATER}, 304),
    ("ims-earlier", "GET", {"If-Modified-Since": LM_EARLIER}, 200),
    ("ims-head", "HEAD", {"If-Modified-Since": LM_HTTP}, 304),
    ("ims-invalid", "GET", {"If-Modified-Since": "not a date"}, 200),
    (
        "ims-numeric-zone-invalid",
        "GET",
        {"If-Modified-Since": "Tue, 02 Jan 2024 03:04:05 +0000"},
        200,
    ),
    ("ims-post-ignored", "POST", {"If-Modified-Since": LM_LATER}, 200),
    ("ims-with-range", "GET", {"If-Modified-Since": LM_HTTP, "Range": "bytes=0-1"}, 304),
    # Order / combinations
    ("im-true-inm-match", "GET", {"If-Match": "*", "If-None-Match": f'"{ETAG}"'}, 304),
    ("im-false-beats-inm", "GET", {"If-Match": '"x"', "If-None-Match": f'"{ETAG}"'}, 412),
    ("ius-fail-beats-inm", "GET", {"If-Unmodified-Since": LM_EARLIER, "If-None-Match": "*"}, 412),
    (
        "ius-fail-beats-ims",
        "GET",
        {"If-Unmodified-Since": LM_EARLIER, "If-Modified-Since": LM_HTTP},
        412,
    ),
]


@pytest.mark.parametrize(
    ("method", "fields", "status"),
    [case[1:] for case in PRECONDITION_CASES],
    ids=[case[0] for case in PRECONDITION_CASES],
)
def test_preconditions(method, fields, status):
    decision = http.evaluate(method, Headers(fields), make_rep())
    assert decision.status == status
    if status == 304:
        assert decision.headers == [("ETag", f'"{ETAG}"'), ("Last-Modified", LM_HTTP)]
        assert decision.send_body is False
        assert decision.ranges == ()
    elif status == 412:
        assert decision.headers == []
        assert decision.send_body is False
        assert decision.ranges == ()
    elif status == 200:
        assert decision.headers == full_200_headers()
        assert decision.send_body is (method != "HEAD")


# ---------------------------------------------------------------------------
# Range and If-Range (RFC 9110 §13.1.5, §14)
# ---------------------------------------------------------------------------

RANGE_CASES = [
    # id, size, headers, status, ranges
    ("simple", SIZE, {"Range": "bytes=0-9"}, 206, ((0, 10),)),
    ("unit-case-insensitive", SIZE, {"Range": "BYTES=0-9"}, 206, ((0, 10),)),
    ("outer-ows", SIZE, {"Range": " \tbytes=0-9 "}, 206, ((0, 10),)),
    ("element-ows", SIZE, {"Range": "bytes= 0-1 ,\t5-6 "}, 206, ((0, 2), (5, 7))),
    ("empty-elements", SIZE, {"Range": "bytes=0-1,,5-6"}, 206, ((0, 2), (5, 7))),
    ("leading-trailing-commas", SIZE, {"Range": "bytes=,0-1,"}, 206, ((0, 2),)),
    ("whole-file-is-206", SIZE, {"Range": "bytes=0-999"}, 206, ((0, SIZE),)),
    ("open-ended", SIZE, {"Range": "bytes=990-"}, 206, ((990, SIZE),)),
    ("open-ended-from-zero", SIZE, {"Range": "bytes=0-"}, 206, ((0, SIZE),)),
    ("last-byte", SIZE, {"Range": "bytes=999-"}, 206, ((999, SIZE),)),
    ("clamp-last", SIZE, {"Range": "bytes=990-5000"}, 206, ((990, SIZE),)),
    ("suffix", SIZE, {"Range": "bytes=-100"}, 206, ((900, SIZE),)),
    ("suffix-larger-than-file", SIZE, {"Range": "bytes=-2000"}, 206, ((0, SIZE),)),
    ("suffix-zero-unsatisfiable", SIZE, {"Range": "bytes=-0"}, 416, ()),
    ("suffix-zero-plus-valid", SIZE, {"Range": "bytes=-0,0-0"}, 206, ((0, 1),)),
    ("leading-zeros", SIZE, {"Range": "bytes=0000000000000000000000000005-009"}, 206, ((5, 10),)),
    ("overflow-last", SIZE, {"Range": f"bytes=0-{HUGE}"}, 206, ((0, SIZE),)),
    ("overflow-first", SIZE, {"Range": f"bytes={HUGE}-"}, 416, ()),
    ("overflow-both", SIZE, {"Range": f"bytes={HUGE}-{HUGE}"}, 416, ()),
    ("overflow-suffix", SIZE, {"Range": f"bytes=-{HUGE}"}, 206, ((0, SIZE),)),
    ("overflow-5000-digits", SIZE, {"Range": "bytes=1-" + "9" * 5000}, 206, ((1, SIZE),)),
    ("overflow-first-gt-last", SIZE, {"Range": f"bytes={HUGE}1-{HUGE}"}, 200, ()),
    ("first-equals-size", SIZE, {"Range": "bytes=1000-"}, 416, ()),
    ("unsatisfiable-dropped", SIZE, {"Range": "bytes=5000-6000,0-0"}, 206, ((0, 1),)),
    ("all-unsatisfiable", SIZE, {"Range": "bytes=5000-6000,1000-"}, 416, ()),
    # invalid syntax -> ignore Range (200)
    ("unknown-unit", SIZE, {"Range": "items=0-1"}, 200, ()),
    ("no-equals", SIZE, {"Range": "bytes 0-1"}, 200, ()),
    ("no-spec", SIZE, {"Range": "bytes="}, 200, ()),
    ("only-commas", SIZE, {"Range": "bytes= , ,"}, 200, ()),
    ("empty-value", SIZE, {"Range": ""}, 200, ()),
    ("first-gt-last", SIZE, {"Range": "bytes=5-4"}, 200, ()),
    ("one-bad-spec-poisons-all", SIZE, {"Range": "bytes=0-1,9-3"}, 200, ()),
    ("dash-only", SIZE, {"Range": "bytes=-"}, 200, ()),
    ("letters", SIZE, {"Range": "bytes=a-b"}, 200, ()),
    ("inner-space", SIZE, {"Range": "bytes=0 - 1"}, 200, ()),
    ("double-dash", SIZE, {"Range": "bytes=--1"}, 200, ()),
    ("plus-sign", SIZE, {"Range": "bytes=+1-2"}, 200, ()),
    ("hex", SIZE, {"Range": "bytes=0x1-2"}, 200, ()),
    ("negative-last", SIZE, {"Range": "bytes=1--2"}, 200, ()),
    ("trailing-garbage", SIZE, {"Range": "bytes=0-1;x"}, 200, ()),
    ("arabic-indic-digits", SIZE, {"Range": "bytes=\u0663-\u0665"}, 200, ()),
    ("fullwidth-digits", SIZE, {"Range": "bytes=\uff10-\uff11"}, 200, ()),
    ("superscript-digit", SIZE, {"Range": "bytes=0-\u00b9"}, 200, ()),
    ("non-ascii-unit", SIZE, {"Range": "\uff42ytes=0-1"}, 200, ()),
    ("two-range-lines", SIZE, Headers([("Range", "bytes=0-1"), ("Range", "bytes=2-3")]), 200, ()),
    # coalescing
    ("adjacent-merged", SIZE, {"Range": "bytes=0-4,5-9"}, 206, ((0, 10),)),
    ("overlap-merged", SIZE, {"Range": "bytes=0-5,3-9"}, 206, ((0, 10),)),
    ("contained-merged", SIZE, {"Range": "bytes=0-99,10-19"}, 206, ((0, 100),)),
    ("unsorted-sorted", SIZE, {"Range": "bytes=20-29,0-9"}, 206, ((0, 10), (20, 30))),
    ("gap-not-merged", SIZE, {"Range": "bytes=0-0,2-2"}, 206, ((0, 1), (2, 3))),
    ("suffix-and-head", SIZE, {"Range": "bytes=-10,0-9"}, 206, ((0, 10), (990, SIZE))),
    ("suffix-overlaps-open", SIZE, {"Range": "bytes=-10,985-"}, 206, ((985, SIZE),)),
    # empty representation
    ("empty-int-range", 0, {"Range": "bytes=0-"}, 416, ()),
    ("empty-int-range-closed", 0, {"Range": "bytes=0-0"}, 416, ()),
    ("empty-suffix-zero", 0, {"Range": "bytes=-0"}, 416, ()),
    # §14.1.1: a non-zero suffix is satisfiable on an empty file but selects
    # nothing, which 206 cannot express -> Range ignored.
    ("empty-suffix-nonzero", 0, {"Range": "bytes=-5"}, 200, ()),
    ("empty-mixed", 0, {"Range": "bytes=0-,-5"}, 200, ()),
    # > 4 GiB
    ("big-suffix", BIG, {"Range": "bytes=-10"}, 206, ((BIG - 10, BIG),)),
    ("big-open", BIG, {"Range": f"bytes={BIG - 3}-"}, 206, ((BIG - 3, BIG),)),
    ("big-clamp", BIG, {"Range": f"bytes={BIG - 3}-{BIG + 100}"}, 206, ((BIG - 3, BIG),)),
    ("big-beyond", BIG, {"Range": f"bytes={BIG}-"}, 416, ()),
    ("big-multi", BIG, {"Range": f"bytes=0-0,{BIG - 1}-"}, 206, ((0, 1), (BIG - 1, BIG))),
    ("big-over-32-bit", BIG, {"Range": "bytes=4294967296-4294967299"}, 206, ((2**32, 2**32 + 4),)),
    # If-Range
    (
        "if-range-strong-match",
        SIZE,
        {"Range": "bytes=0-9", "If-Range": f'"{ETAG}"'},
        206,
        ((0, 10),),
    ),
    ("if-range-mismatch", SIZE, {"Range": "bytes=0-9", "If-Range": '"old"'}, 200, ()),
    ("if-range-weak-never", SIZE, {"Range": "bytes=0-9", "If-Range": f'W/"{ETAG}"'}, 200, ()),
    ("if-range-date-exact", SIZE, {"Range": "bytes=0-9", "If-Range": LM_HTTP}, 206, ((0, 10),)),
    ("if-range-date-earlier", SIZE, {"Range": "bytes=0-9", "If-Range": LM_EARLIER}, 200, ()),
    ("if-range-date-later", SIZE, {"Range": "bytes=0-9", "If-Range": LM_LATER}, 200, ()),
    ("if-range-garbage", SIZE, {"Range": "bytes=0-9", "If-Range": "garbage"}, 200, ()),
    ("if-range-empty", SIZE, {"Range": "bytes=0-9", "If-Range": ""}, 200, ()),
    ("if-range-etag-list", SIZE, {"Range": "bytes=0-9", "If-Range": f'"{ETAG}", "x"'}, 200, ()),
    ("if-range-without-range", SIZE, {"If-Range": '"old"'}, 200, ()),
    ("if-range-ok-416", SIZE, {"Range": "bytes=5000-", "If-Range": f'"{ETAG}"'}, 416, ()),
    ("if-range-fail-no-416", SIZE, {"Range": "bytes=5000-", "If-Range": '"old"'}, 200, ()),
]


@pytest.mark.parametrize(
    ("size", "fields", "status", "ranges"),
    [case[1:] for case in RANGE_CASES],
    ids=[case[0] for case in RANGE_CASES],
)
def test_range(size, fields, status, ranges):
    headers = fields if isinstance(fields, Headers) else Headers(fields)
    decision = http.evaluate("GET", headers, make_rep(size))
    assert decision.status == status
    assert decision.ranges == ranges
    if status == 200:
        assert decision.headers == full_200_headers(size)
        assert decision.send_body is True
    elif status == 416:
        assert decision.headers == [
            ("Content-Range", f"bytes */{size}"),
            ("Accept-Ranges", "bytes"),
        ]
        assert decision.send_body is False
    elif len(ranges) == 1:
        (start, stop) = ranges[0]
        assert decision.headers == [
            ("ETag", f'"{ETAG}"'),
            ("Last-Modified", LM_HTTP),
            ("Accept-Ranges", "bytes"),
            ("Content-Range", f"bytes {start}-{stop - 1}/{size}"),
            ("Content-Length", str(stop - start)),
        ]
        assert decision.send_body is True
        assert not decision.is_multipart
    else:
        assert decision.is_multipart
        assert decision.send_body is True
        # The caller owns Content-Type/Content-Length for multipart.
        assert decision.headers == [
            ("ETag", f'"{ETAG}"'),
            ("Last-Modified", LM_HTTP),
            ("Accept-Ranges", "bytes"),
        ]


def test_single_range_headers_for_big_file_exact():
    decision = http.evaluate("GET", Headers({"Range": "bytes=-10"}), make_rep(BIG))
    assert header(decision, "Content-Range") == "bytes 5368709117-5368709126/5368709127"
    assert header(decision, "Content-Length") == "10"


@pytest.mark.parametrize("method", ["HEAD", "POST", "get", "OPTIONS"])
def test_range_only_for_get(method):
    decision = http.evaluate(method, Headers({"Range": "bytes=0-9"}), make_rep())
    assert decision.status == 200
    assert decision.ranges == ()
    # HEAD mirrors the headers of an unconditional GET 200.
    assert decision.headers == http.evaluate("GET", Headers(), make_rep()).headers
    assert decision.send_body is (method != "HEAD")


def test_head_sends_no_body_but_same_headers():
    get = http.evaluate("GET", Headers(), make_rep(BIG))
    head = http.evaluate("HEAD", Headers({"Range": "bytes=0-0"}), make_rep(BIG))
    assert (head.status, head.headers, head.send_body) == (200, get.headers, False)
    assert header(head, "Content-Length") == str(BIG)


def test_last_modified_is_emitted_in_gmt_truncated():
    tz = timezone(timedelta(hours=8))
    rep = http.Representation(10, ETAG, datetime(2024, 1, 2, 11, 4, 5, 999_999, tzinfo=tz), "a/b")
    decision = http.evaluate("GET", Headers(), rep)
    assert header(decision, "Last-Modified") == LM_HTTP
    # ...and If-Range with that exact value matches despite the offset/microseconds.
    ranged = http.evaluate("GET", Headers({"Range": "bytes=0-0", "If-Range": LM_HTTP}), rep)
    assert ranged.status == 206


def test_environ_headers_and_plain_dict_are_accepted():
    environ = EnvironBuilder(
        headers=[("Range", "bytes=0-1,4-5"), ("If-Range", f'"{ETAG}"')]
    ).get_environ()
    decision = http.evaluate("GET", Request(environ).headers, make_rep())
    assert (decision.status, decision.ranges) == (206, ((0, 2), (4, 6)))
    lower = http.evaluate("GET", {"range": "bytes=0-1", "if-none-match": '"zzz"'}, make_rep())
    assert (lower.status, lower.ranges) == (206, ((0, 2),))


def test_if_match_field_lines_are_combined():
    headers = Headers([("If-Match", '"a"'), ("If-Match", f'"{ETAG}"')])
    assert http.evaluate("GET", headers, make_rep()).status == 200


def test_max_ranges_must_be_positive():
    with pytest.raises(ValueError):
        http.evaluate("GET", Headers(), make_rep(), max_ranges=0)


# ---------------------------------------------------------------------------
# Egregious range sets (RFC 9110 §14.2, CVE-2011-3192)
# ---------------------------------------------------------------------------


def disjoint_specs(n: int, step: int = 10) -> str:
    return ",".join(f"{i * step}-{i * step + 1}" for i in range(n))


EGREGIOUS_CASES = [
    # id, size, range value, max_ranges, expected status, expected number of ranges
    ("64-disjoint-ok", SIZE, "bytes=" + disjoint_specs(64), 64, 206, 64),
    ("65-disjoint-too-many", SIZE, "bytes=" + disjoint_specs(65), 64, 200, 0),
    ("max-ranges-2", SIZE, "bytes=0-0,2-2,4-4", 2, 200, 0),
    ("max-ranges-1-single-ok", SIZE, "bytes=4-4", 1, 206, 1),
    # counting is of specs, so even mergeable specs count
    ("max-ranges-1-two-specs", SIZE, "bytes=0-4,5-9", 1, 200, 0),
    ("unsatisfiable-specs-count", SIZE, "bytes=" + ",".join(["5000-"] * 65), 64, 200, 0),
    ("two-overlaps-ok", SIZE, "bytes=0-10,5-15,10-20", 64, 206, 1),
    ("three-overlaps", SIZE, "bytes=0-10,5-15,10-20,15-25", 64, 200, 0),
    ("repeated-whole-file", SIZE, "bytes=0-,0-,0-,0-", 64, 200, 0),
    # overlaps <= 2 but 3*size requested and size > slack
    ("amplification", 10**6, "bytes=0-,0-,0-", 64, 200, 0),
    ("amplification-small-file-ok", SIZE, "bytes=0-,0-,0-", 64, 206, 1),
    ("four-descents-ok", SIZE, "bytes=40-41,30-31,20-21,10-11,0-1", 64, 206, 5),
    ("five-descents", SIZE, "bytes=50-51,40-41,30-31,20-21,10-11,0-1", 64, 200, 0),
]


@pytest.mark.parametrize(
    ("size", "value", "max_ranges", "status", "n_ranges"),
    [case[1:] for case in EGREGIOUS_CASES],
    ids=[case[0] for case in EGREGIOUS_CASES],
)
def test_egregious(size, value, max_ranges, status, n_ranges):
    decision = http.evaluate(
        "GET", Headers({"Range": value}), make_rep(size), max_ranges=max_ranges
    )
    assert decision.status == status
    assert len(decision.ranges) == n_ranges
    if status == 200:
        assert decision.headers == full_200_headers(size)


def test_huge_header_is_ignored():
    value = "bytes=" + "0-," * 100_000
    decision = http.evaluate("GET", Headers({"Range": value}), make_rep())
    assert (decision.status, decision.ranges) == (200, ())
    selection = http.select_ranges(value, SIZE)
    assert selection.outcome is http.RangeOutcome.EGREGIOUS
    assert selection.reason == "field value too long"


def test_header_at_length_limit_is_parsed():
    value = "bytes=0-0" + " " * (http.MAX_RANGE_HEADER_LENGTH - len("bytes=0-0"))
    assert len(value) == http.MAX_RANGE_HEADER_LENGTH
    assert http.select_ranges(value, SIZE).ranges == ((0, 1),)
    assert http.select_ranges(value + " ", SIZE).outcome is http.RangeOutcome.EGREGIOUS


def test_many_specs_below_length_limit_stop_early():
    # 2000 specs fit in 8 KiB; parsing must stop at spec 65, so the garbage
    # at the end is never reached (outcome EGREGIOUS, not INVALID).
    value = "bytes=" + "0-0," * 2000 + "garbage"
    assert len(value) <= http.MAX_RANGE_HEADER_LENGTH
    selection = http.select_ranges(value, SIZE)
    assert selection.outcome is http.RangeOutcome.EGREGIOUS
    assert selection.reason == "too many range-specs"
    # With few specs the same garbage is seen and reported as invalid.
    assert http.select_ranges("bytes=0-0,garbage", SIZE).outcome is http.RangeOutcome.INVALID


@pytest.mark.parametrize(
    ("value", "size", "outcome"),
    [
        ("bytes=0-1", 10, http.RangeOutcome.SATISFIABLE),
        ("bytes=10-", 10, http.RangeOutcome.UNSATISFIABLE),
        ("bytes=-3", 0, http.RangeOutcome.IGNORED),
        ("bits=0-1", 10, http.RangeOutcome.INVALID),
        ("bytes=0-1,0-1,0-1,0-1", 10, http.RangeOutcome.EGREGIOUS),
    ],
)
def test_select_ranges_outcomes(value, size, outcome):
    assert http.select_ranges(value, size).outcome is outcome


# ---------------------------------------------------------------------------
# HTTP-date parsing
# ---------------------------------------------------------------------------

NOV_6_1994 = datetime(1994, 11, 6, 8, 49, 37, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Sun, 06 Nov 1994 08:49:37 GMT", NOV_6_1994),
        ("Sunday, 06-Nov-94 08:49:37 GMT", NOV_6_1994),
        ("Sun Nov  6 08:49:37 1994", NOV_6_1994),
        ("sun, 06 nov 1994 08:49:37 gmt", NOV_6_1994),
        ("  Sun, 06 Nov 1994 08:49:37 GMT\t", NOV_6_1994),
        ("Mon, 01-Jan-24 00:00:00 GMT", None),  # rfc850 needs the long day name
        ("Monday, 01-Jan-24 00:00:00 GMT", datetime(2024, 1, 1, tzinfo=UTC)),
        ("Sat, 31 Dec 2016 23:59:60 GMT", datetime(2016, 12, 31, 23, 59, 59, tzinfo=UTC)),
        ("Sun, 06 Nov 1994 08:49:37 +0000", None),
        ("Sun, 06 Nov 1994 08:49:37 UTC", None),
        ("Sun, 06 Nov 1994 08:49:37 GMT, Sun, 06 Nov 1994 08:49:37 GMT", None),
        ("Sun, 06 Nov 1994 08:49:37 GMTx", None),
        ("Sun, 6 Nov 1994 08:49:37 GMT", None),
        ("Thu, 31 Feb 2024 00:00:00 GMT", None),
        ("Sun, 06 Nov 1994 24:00:00 GMT", None),
        ("Sun, 06 Nov 0000 08:49:37 GMT", None),
        ("Sun, 06 \u017fep 1994 08:49:37 GMT", None),  # long s must not fold to "s"
        ("Sun, \u0660\u0666 Nov 1994 08:49:37 GMT", None),
        ("1994-11-06T08:49:37Z", None),
        ("", None),
    ],
)
def test_parse_http_date(value, expected):
    assert http.parse_http_date(value) == expected


# ---------------------------------------------------------------------------
# Representation validation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"size": -1},
        {"size": True},
        {"size": 1.0},
        {"etag": 'has"quote'},
        {"etag": "has space"},
        {"etag": "caf\u00e9"},
        {"last_modified": datetime(2024, 1, 1)},  # naive
        {"content_type": "text/plain\r\nX-Evil: 1"},
        {"content_type": ""},
    ],
)
def test_representation_rejects_bad_values(kwargs):
    base = {
        "size": 1,
        "etag": ETAG,
        "last_modified": LAST_MODIFIED,
        "content_type": "application/pdf",
    }
    with pytest.raises(ValueError):
        http.Representation(**{**base, **kwargs})


# ---------------------------------------------------------------------------
# multipart/byteranges
# ---------------------------------------------------------------------------


def test_multipart_plan_exact_bytes():
    data = bytes(range(48, 48 + 40))  # "0123456789:;<=>?@ABC..."
    rep = make_rep(40, "text/plain")
    plan = http.multipart_plan(((0, 3), (10, 12)), rep, "XYZ")
    expected = (
        b"--XYZ\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-2/40\r\n\r\n012"
        b"\r\n--XYZ\r\nContent-Type: text/plain\r\nContent-Range: bytes 10-11/40\r\n\r\n:;"
        b"\r\n--XYZ--\r\n"
    )
    body = b"".join(http.iter_multipart(plan, reader(data, chunk=2)))
    assert body == expected
    assert plan.content_length == len(expected)
    assert plan.content_type == "multipart/byteranges; boundary=XYZ"
    assert plan.epilogue == b"\r\n--XYZ--\r\n"
    assert [(s, e) for _h, s, e in plan.parts] == [(0, 3), (10, 12)]


def test_multipart_round_trip_through_email_package():
    data = DATA[:5000]
    decision = http.evaluate("GET", Headers({"Range": "bytes=-100,0-99,2000-2499"}), make_rep(5000))
    assert decision.ranges == ((0, 100), (2000, 2500), (4900, 5000))
    boundary = http.new_boundary()
    plan = http.multipart_plan(decision.ranges, make_rep(5000), boundary)
    body = b"".join(http.iter_multipart(plan, reader(data, chunk=333)))
    assert len(body) == plan.content_length
    message = email.message_from_bytes(
        f"Content-Type: {plan.content_type}\r\n\r\n".encode() + body,
        policy=email.policy.HTTP,
    )
    assert message.is_multipart()
    parts = list(message.iter_parts())
    assert len(parts) == 3
    for part, (start, stop) in zip(parts, decision.ranges, strict=True):
        assert part["Content-Type"] == "application/pdf"
        assert part["Content-Range"] == f"bytes {start}-{stop - 1}/5000"
        assert part.get_payload(decode=True) == data[start:stop]


def test_new_boundary_is_random_and_usable():
    boundaries = {http.new_boundary() for _ in range(20)}
    assert len(boundaries) == 20
    for b in boundaries:
        assert re.fullmatch(r"[0-9a-f]{32}", b)
        http.multipart_plan(((0, 1),), make_rep(), b)


@pytest.mark.parametrize(
    "ranges",
    [
        (),
        ((1, 1),),
        ((5, 3),),
        ((-1, 3),),
        ((0, SIZE + 1),),
        ((10, 20), (0, 5)),
        ((0, 10), (5, 15)),
    ],
)
def test_multipart_plan_rejects_bad_ranges(ranges):
    with pytest.raises(ValueError):
        http.multipart_plan(ranges, make_rep(), "b")


@pytest.mark.parametrize("boundary", ["", "a b", "x" * 71, "a\r\nb", 'a"b', "a;b", "caf\u00e9"])
def test_multipart_plan_rejects_bad_boundary(boundary):
    with pytest.raises(ValueError):
        http.multipart_plan(((0, 1),), make_rep(), boundary)


@pytest.mark.parametrize("delta", [-1, 1])
def test_iter_multipart_detects_wrong_read_length(delta):
    plan = http.multipart_plan(((0, 10), (20, 30)), make_rep(), "b")

    def bad_reader(start, stop):
        yield DATA[start : stop + delta]

    with pytest.raises(http.RangeReadError):
        b"".join(http.iter_multipart(plan, bad_reader))


# ---------------------------------------------------------------------------
# Content-Disposition and file names
# ---------------------------------------------------------------------------

CHINESE = "2026年秋季学期课程表.pdf"
CHINESE_PCT = "2026%E5%B9%B4%E7%A7%8B%E5%AD%A3%E5%AD%A6%E6%9C%9F%E8%AF%BE%E7%A8%8B%E8%A1%A8.pdf"


@pytest.mark.parametrize(
    ("name", "inline", "expected"),
    [
        ("report.pdf", False, 'attachment; filename="report.pdf"'),
        ("report.pdf", True, 'inline; filename="report.pdf"'),
        (CHINESE, False, "attachment; filename=\"2026NianQiuJiXueQiKeChengBiao.pdf\"; "
                         f"filename*=UTF-8''{CHINESE_PCT}"),
        (
            "课程表.pdf",
            False,
            "attachment; filename=\"KeChengBiao.pdf\"; filename*=UTF-8''"
            "%E8%AF%BE%E7%A8%8B%E8%A1%A8.pdf",
        ),
        (
            "数据结构-第02章-线性表.pdf",
            False,
            "attachment; filename=\"ShuJuJieGou-Di02Zhang-XianXingBiao.pdf\"; filename*=UTF-8''"
            "%E6%95%B0%E6%8D%AE%E7%BB%93%E6%9E%84-%E7%AC%AC02%E7%AB%A0-"
            "%E7%BA%BF%E6%80%A7%E8%A1%A8.pdf",
        ),
        ("Привет мир.txt", False, "attachment; filename=\"Privet mir.txt\"; filename*=UTF-8''"
                                  "%D0%9F%D1%80%D0%B8%D0%B2%D0%B5%D1%82%20%D0%BC%D0%B8%D1%80.txt"),
        # An emoji's name comes back as ":grinning:": no colon in a file name.
        ("ok 😀.txt", False, "attachment; filename=\"ok _grinning_.txt\"; filename*=UTF-8''"
                            "ok%20%F0%9F%98%80.txt"),
        # A private-use character no table knows: a generic stem, the real extension.
        ("\U000f0000.pdf", False, "attachment; filename=\"download.pdf\"; filename*=UTF-8''"
                                  "%F3%B0%80%80.pdf"),
        (
            'my "quoted" file.txt',
            False,
            'attachment; filename="my _quoted_ file.txt"',
        ),
        ("../../etc/passwd", False, 'attachment; filename="passwd"'),
        ("C:\\Users\\x\\evil.exe", False, 'attachment; filename="evil.exe"'),
        ("\u202egnp.exe", False, 'attachment; filename="gnp.exe"'),
        (
            "Résumé.pdf",
            False,
            "attachment; filename=\"Resume.pdf\"; filename*=UTF-8''R%C3%A9sum%C3%A9.pdf",
        ),
        ("100%.txt", False, "attachment; filename=\"100_.txt\"; filename*=UTF-8''100%25.txt"),
        (
            "a\uff0fb.txt",
            False,
            "attachment; filename=\"a_b.txt\"; filename*=UTF-8''a%EF%BC%8Fb.txt",
        ),
        ("", False, 'attachment; filename="download"'),
        ("weird!#$&+^`|~.txt", False, 'attachment; filename="weird!#$&+^`_~.txt"'),
    ],
)
def test_content_disposition(name, inline, expected):
    assert http.content_disposition(name, inline=inline) == expected


def test_overlong_chinese_name_disposition():
    value = http.content_disposition("字" * 300 + ".pdf")
    fallback = re.search(r'filename="([^"]*)"', value).group(1)
    encoded = value.split("filename*=UTF-8''", 1)[1]
    assert fallback == "Zi" * 98 + ".pdf"  # (200 characters, the extension kept)
    assert unquote(encoded) == "字" * 196 + ".pdf"


# ---------------------------------------------------------------------------
# Active content, digests, validators
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mime", "active"),
    [
        ("text/html", True),
        ("TEXT/HTML; charset=utf-8", True),
        (" text/html ;charset=x", True),
        ("application/xhtml+xml", True),
        ("image/svg+xml", True),
        ("text/xml", True),
        ("application/xml", True),
        ("application/rss+xml", True),
        ("application/mathml+xml", True),
        ("text/javascript", True),
        ("application/javascript", True),
        ("application/x-javascript", True),
        ("text/ecmascript", True),
        ("application/ecmascript", True),
        ("text/x-javascript", True),
        ("application/x-shockwave-flash", True),
        ("", True),
        ("html", True),
        ("text/", True),
        ("*/*", True),
        ("text/h\u0074ml\u00e9", True),
        ("application/pdf", False),
        ("text/plain", False),
        ("text/plain; charset=utf-8", False),
        ("text/csv", False),
        ("image/png", False),
        ("application/octet-stream", False),
        ("application/json", False),
        ("application/zip", False),
        ("video/mp4", False),
    ],
)
def test_is_active_content(mime, active):
    assert http.is_active_content(mime) is active


EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_repr_digest_known_vector():
    assert (
        http.repr_digest(EMPTY_SHA256) == "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"
    )
    assert http.repr_digest(EMPTY_SHA256.upper()) == http.repr_digest(EMPTY_SHA256)


def test_repr_digest_matches_hashlib():
    digest = hashlib.sha256(b"abc")
    expected = "sha-256=:" + base64.b64encode(digest.digest()).decode() + ":"
    assert http.repr_digest(digest.hexdigest()) == expected
    assert expected == "sha-256=:ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=:"


def test_strong_etag():
    assert http.strong_etag(EMPTY_SHA256.upper()) == EMPTY_SHA256
    rep = make_rep()
    tagged = http.Representation(1, http.strong_etag(EMPTY_SHA256), LAST_MODIFIED, "a/b")
    assert rep.etag != tagged.etag
    decision = http.evaluate("GET", Headers({"If-None-Match": f'"{EMPTY_SHA256}"'}), tagged)
    assert decision.status == 304


@pytest.mark.parametrize("bad", ["", "abc", EMPTY_SHA256 + "0", "g" * 64, " " + EMPTY_SHA256[1:]])
def test_digest_helpers_reject_bad_input(bad):
    with pytest.raises(ValueError):
        http.repr_digest(bad)
    with pytest.raises(ValueError):
        http.strong_etag(bad)


# ---------------------------------------------------------------------------
# Property tests
# ---------------------------------------------------------------------------

sizes = st.one_of(
    st.integers(0, 10**6),
    st.integers(0, 64),
    st.sampled_from([BIG, 2**32, 2**32 - 1, 2**32 + 1, 2**63 - 1]),
)


@st.composite
def structured_ranges(draw):
    """(size, header, specs) with realistic bytes= lists and known intent."""
    size = draw(sizes)
    anywhere = st.integers(0, min(size + 20, 10**7))
    position = st.one_of(
        anywhere,
        anywhere,
        anywhere,
        st.integers(max(0, size - 20), size + 20),
        st.sampled_from([0, 10**30, 2**64]),
    )
    length = st.integers(0, max(1, min(size // 16, 10**6)))
    closed = st.builds(lambda first, n: ("int", first, first + n), position, length)
    branches = [
        closed,  # listed several times: one_of picks branches uniformly
        closed,
        closed,
        closed,
        st.tuples(st.just("int"), position, st.none()),
        st.tuples(st.just("suffix"), st.one_of(length, position)),
        st.just(("empty",)),
    ]
    if draw(st.integers(0, 3)) == 0:
        # Independent first/last: often first > last, i.e. an invalid field.
        branches.append(st.tuples(st.just("int"), position, position))
    spec = st.one_of(branches)
    specs = draw(st.lists(spec, min_size=0, max_size=12) | st.lists(spec, min_size=2, max_size=6))
    texts = []
    for s in specs:
        if s[0] == "int":
            texts.append(f"{s[1]}-" + ("" if s[2] is None else str(s[2])))
        elif s[0] == "suffix":
            texts.append(f"-{s[1]}")
        else:
            texts.append("")
    separator = draw(st.sampled_from([",", ", ", " ,", "\t,\t", " , "]))
    unit = draw(st.sampled_from(["bytes", "BYTES", "Bytes"]))
    return size, f"{unit}={separator.join(texts)}", specs


def check_decision(decision: http.Decision, size: int) -> None:
    """Invariants that hold for every GET decision on a representation of ``size``."""
    assert decision.status in {200, 206, 416}
    if decision.status == 200:
        assert decision.ranges == ()
        assert header(decision, "Content-Length") == str(size)
        return
    if decision.status == 416:
        assert decision.ranges == ()
        assert header(decision, "Content-Range") == f"bytes */{size}"
        return
    ranges = decision.ranges
    assert 1 <= len(ranges) <= 64
    previous_stop = -1
    for start, stop in ranges:
        assert 0 <= start < stop <= size
        assert start > previous_stop  # sorted, disjoint, not even adjacent
        previous_stop = stop
    small = size <= len(DATA)
    data = DATA[:size] if small else b""
    if len(ranges) == 1:
        (start, stop) = ranges[0]
        assert header(decision, "Content-Range") == f"bytes {start}-{stop - 1}/{size}"
        assert header(decision, "Content-Length") == str(stop - start)
        if small:
            assert len(data[start:stop]) == stop - start
        return
    assert header(decision, "Content-Length") is None
    assert header(decision, "Content-Type") is None
    boundary = http.new_boundary()
    plan = http.multipart_plan(ranges, make_rep(size), boundary)
    if small:
        body = b"".join(http.iter_multipart(plan, reader(data, chunk=4096)))
        assert len(body) == plan.content_length
        parts = parse_multipart(body, boundary)
        assert [(p[1], p[2]) for p in parts] == list(ranges)
        for content_type, start, stop, total, part in parts:
            assert content_type == "application/pdf"
            assert total == size
            assert part == data[start:stop]
    else:
        headers_len = sum(len(h) for h, _s, _e in plan.parts)
        expected = headers_len + sum(e - s for s, e in ranges) + len(plan.epilogue)
        assert plan.content_length == expected


@SETTINGS
@given(size=sizes, value=st.text(max_size=300))
def test_property_arbitrary_text_never_raises(size, value):
    decision = http.evaluate("GET", {"Range": value}, make_rep(size))
    check_decision(decision, size)


@SETTINGS
@given(
    size=sizes,
    value=st.text(alphabet="bytes=0123456789-, \t\u0663", max_size=80).map(lambda s: "bytes=" + s),
)
def test_property_range_like_text(size, value):
    check_decision(http.evaluate("GET", {"Range": value}, make_rep(size)), size)


@SETTINGS
@given(structured_ranges())
def test_property_structured_ranges(case):
    size, value, specs = case
    decision = http.evaluate("GET", Headers({"Range": value}), make_rep(size))
    check_decision(decision, size)

    # Independent model of the request's intent.
    real = [s for s in specs if s[0] != "empty"]
    invalid = any(s[0] == "int" and s[2] is not None and s[1] > s[2] for s in real)
    wanted = []
    for s in real:
        if s[0] == "int" and s[1] < size:
            stop = size if s[2] is None else min(s[2], size - 1) + 1
            wanted.append((s[1], stop))
        elif s[0] == "suffix" and s[1] > 0 and size > 0:
            wanted.append((max(0, size - s[1]), size))
    if not real or invalid:
        assert decision.status == 200
    elif decision.status == 206:
        # Coalescing must neither lose nor invent bytes.
        assert list(decision.ranges) == merge(wanted)
    elif decision.status == 416:
        assert wanted == []
        assert not (size == 0 and any(s[0] == "suffix" and s[1] > 0 for s in real))
    if len(real) == 1 and not invalid and wanted:
        assert decision.status == 206  # a single satisfiable spec is never egregious


@st.composite
def disjoint_multiranges(draw):
    """(size, spans in request order): 2-8 non-overlapping closed ranges."""
    size = draw(st.one_of(st.integers(4, 10**6), st.sampled_from([BIG, 2**32 + 3])))
    cuts = draw(
        st.lists(st.integers(0, size - 1), min_size=4, max_size=16, unique=True).map(sorted)
    )
    if len(cuts) % 2:
        cuts = cuts[:-1]
    spans = [(cuts[i], cuts[i + 1]) for i in range(0, len(cuts), 2)]  # closed [a, b]
    return size, draw(st.permutations(spans))


@SETTINGS
@given(disjoint_multiranges())
def test_property_disjoint_multirange(case):
    size, spans = case
    value = "bytes=" + ",".join(f"{a}-{b}" for a, b in spans)
    decision = http.evaluate("GET", Headers({"Range": value}), make_rep(size))
    check_decision(decision, size)
    descents = sum(1 for p, c in pairwise(spans) if c[0] < p[0])
    if descents > http.MAX_OUT_OF_ORDER:
        assert decision.status == 200
    else:
        assert decision.status == 206
        assert list(decision.ranges) == merge((a, b + 1) for a, b in spans)


header_text = st.one_of(
    st.text(max_size=60),
    st.sampled_from(["*", f'"{ETAG}"', f'W/"{ETAG}"', LM_HTTP, LM_EARLIER, LM_LATER, ""]),
)


@SETTINGS
@given(
    method=st.sampled_from(["GET", "HEAD", "POST", "DELETE"]),
    fields=st.dictionaries(
        st.sampled_from(
            ["If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since", "If-Range"]
        ),
        header_text,
    ),
    range_value=st.one_of(st.none(), st.sampled_from(["bytes=0-9", "bytes=0-1,5-6", "x"])),
    size=sizes,
)
def test_property_conditionals_never_raise(method, fields, range_value, size):
    if range_value is not None:
        fields = {**fields, "Range": range_value}
    decision = http.evaluate(method, fields, make_rep(size))
    assert decision.status in {200, 206, 304, 412, 416}
    if decision.status == 206:
        assert method == "GET"
    if decision.status == 304:
        assert method in {"GET", "HEAD"}
    if decision.status in {200, 206}:
        assert decision.send_body is (method != "HEAD")
    else:
        assert decision.send_body is False


_BIDI_AND_CONTROLS = re.compile(
    "[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c\ud800-\udfff]"
)


@SETTINGS
@given(name=st.text(max_size=400), inline=st.booleans())
def test_property_content_disposition(name, inline):
    cleaned = clean_filename(name)
    assert cleaned
    assert len(cleaned) <= 200
    assert "/" not in cleaned and "\\" not in cleaned
    assert not _BIDI_AND_CONTROLS.search(cleaned)
    assert cleaned == cleaned.strip(" .")
    assert unicodedata.is_normalized("NFC", cleaned)
    value = http.content_disposition(name, inline=inline)
    assert re.fullmatch(r"[\x20-\x7e]+", value)  # header-safe, ASCII only
    m = re.fullmatch(
        r"(attachment|inline); filename=\"([^\"\\]*)\""
        r"(?:; filename\*=UTF-8''([A-Za-z0-9!#$&+.^_`|~%-]+))?",
        value,
    )
    assert m is not None, value
    assert m.group(1) == ("inline" if inline else "attachment")
    fallback, encoded = m.group(2), m.group(3)
    assert fallback and "/" not in fallback and "%" not in fallback
    if encoded is None:
        assert fallback == cleaned  # plain ASCII names need no filename*
    else:
        assert fallback != cleaned
        assert unquote(encoded, errors="strict") == cleaned
