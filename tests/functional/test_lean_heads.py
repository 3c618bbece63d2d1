"""Every request head, however malformed, gets the same answer from the portal's worker as
from gunicorn's own GeventWorker, said with the portal's error page where gunicorn refuses it.

The portal's worker (portal/worker.py) reads request heads itself for warm downloads; a head
it reads differently from gunicorn is a smuggling path (a bare CR that one reads as a line end
and the other refuses hides a second request). Two real gunicorns on one instance get the same
bytes: Hypothesis generates heads with every byte in names and values, CR/LF/CRLF line ends,
obs-fold, Content-Length and Transfer-Encoding together and apart, sizes at gunicorn's limits,
several requests pipelined, sent split across TCP segments. Each connection's responses
(status line, fields but Date, body) and its closing must be equal, except that where
gunicorn's worker sends gunicorn's own error page the portal's sends the portal's page under
the same status line (wire.assert_answered_alike). The named cases are the
findings that started this: each was answered differently before the worker used gunicorn's
parser.
"""

from __future__ import annotations

import itertools
import os
import socket
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wire import (
    PATIENCE,
    assert_answered_alike,
    assert_portal_error_page,
    exchange_all,
    lean_and_plain,
    lean_lines,
    req,
)

from tests.helpers import wait_for

pytestmark = pytest.mark.slow

#: Generated connections per run; CI runs the default. PORTAL_TEST_HEAD_CASES raises it.
CASES = int(os.environ.get("PORTAL_TEST_HEAD_CASES", "600"))
#: gunicorn's limits under gunicorn.conf.py: request line (raised there), field size and
#: fields (gunicorn's defaults).
LINE_LIMIT, FIELD_LIMIT, FIELDS_LIMIT = 20480, 8190, 100


@pytest.fixture(scope="module")
def servers(portal_instance, tmp_path_factory):
    with lean_and_plain(portal_instance, tmp_path_factory.mktemp("heads")) as pair:
        lean, plain, ids, cookie = pair
        for server in (lean, plain):  # warm: the workers' copies hold the files and the user
            for _ in range(3):
                for path, extra in (warm_paths(ids, cookie)):
                    exchange_all(server, [req("warm", path, *extra)])
        yield pair


def warm_paths(ids: dict, cookie: str) -> list[tuple[str, tuple[str, ...]]]:
    """The downloads the lean cycle answers when their heads are plain."""
    return [(f"/files/{ids['private']}/download", (f"Cookie: {cookie}",)),
            (f"/files/{ids['public']}/download", ())]


def same_on_both(servers, pieces: list[bytes]) -> None:
    """The lean and the plain server answer these segments alike, and close alike (with the
    portal's error page where gunicorn's worker sends its own)."""
    lean, plain = servers[0], servers[1]
    got = exchange_all(lean, pieces)
    want = exchange_all(plain, pieces)
    raw = b"".join(pieces)
    assert got[2] and want[2], ("a server neither answered nor closed", raw[:300])
    assert_answered_alike(got, want, raw[:300])
    for status, _, _ in got[0]:
        assert status.split()[1] not in ("500", "502"), (status, raw[:300])


# ---------------------------------------------------------------------------
# Generated heads
# ---------------------------------------------------------------------------

ANY_BYTES = st.binary(min_size=0, max_size=12)
TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
#: A field value's bytes that gunicorn's parser accepts: visible ASCII, obs-text, SP, HTAB.
LEGAL_VALUE = st.binary(max_size=12).map(
    lambda raw: bytes(b for b in raw if b in (0x20, 0x09) or 0x21 <= b <= 0x7E or b >= 0x80))
LINE_ENDS = st.sampled_from([b"\n", b"\r", b"\r\r\n", b"\n\r"])
KNOWN_NAMES = [b"X-Pad", b"Range", b"Connection", b"Content-Length", b"Transfer-Encoding",
               b"Host", b"Cookie", b"Expect", b"Upgrade", b"If-Range", b"X-Forwarded-Proto",
               b"X-Forwarded-For", b"X_Forwarded_For", b"Accept", b"TE", b"Trailer",
               b"User-Agent", b"If-None-Match", b"Keep-Alive"]
NAMES = st.one_of(st.sampled_from(KNOWN_NAMES), st.binary(min_size=0, max_size=8))
LEGAL_NAMES = st.one_of(st.sampled_from(KNOWN_NAMES),
                        st.lists(st.sampled_from(TCHAR), min_size=1, max_size=8).map(bytes))
KNOWN_VALUES = [b"bytes=0-9", b"bytes=-7", b"bytes=0-1,5-6", b"bytes=99999-", b"close",
                b"keep-alive", b"Keep-Alive", b"close, keep-alive", b"chunked", b"gzip, chunked",
                b"0", b"5", b"77", b"-1", b"https", b"http", b"100-continue", b"x", b"*",
                b'"abc"', b"a\rContent-Length: 77", b"a\rTransfer-Encoding: chunked"]
VALUES = st.one_of(
    st.sampled_from(KNOWN_VALUES), ANY_BYTES,
    st.tuples(st.sampled_from(KNOWN_VALUES), ANY_BYTES, ANY_BYTES).map(b"".join))
LEGAL_VALUES = st.one_of(
    st.sampled_from([v for v in KNOWN_VALUES if b"\r" not in v]), LEGAL_VALUE,
    st.tuples(st.sampled_from([b"bytes=0-9", b"close", b"5", b"a"]), LEGAL_VALUE).map(
        b"".join))
BODIES = st.sampled_from([b"", b"hello", b"5\r\nhello\r\n0\r\n\r\n", b"0\r\n\r\n",
                          b"x" * 77])


@st.composite
def fields(draw, legal: bool) -> list[bytes]:
    """Field lines (without their line end): as gunicorn's parser accepts them, or with any
    bytes, odd separators and obs-fold."""
    lines = []
    for _ in range(draw(st.integers(0, 4))):
        if legal:
            name, value = draw(LEGAL_NAMES), draw(LEGAL_VALUES).strip(b" \t")
            separator = draw(st.sampled_from([b": ", b":", b":\t", b":  "]))
            lines.append(name + separator + value + draw(st.sampled_from([b"", b" ", b"\t"])))
            continue
        name, value = draw(NAMES), draw(VALUES)
        separator = draw(st.sampled_from([b": ", b":", b" : ", b":\t", b"::"]))
        lines.append(name + separator + value + draw(st.sampled_from([b"", b" ", b"\t"])))
        if draw(st.integers(0, 7)) == 0:
            lines.append(draw(st.sampled_from([b" folded", b"\tfolded", b" "])))
    return lines


@st.composite
def framing(draw) -> tuple[list[bytes], bytes]:
    """Content-Length and Transfer-Encoding together, apart, repeated or broken; a body."""
    body = draw(BODIES)
    length = str(len(body)).encode()
    choice = draw(st.sampled_from([
        [b"Content-Length: " + length], [b"Transfer-Encoding: chunked"],
        [b"Content-Length: " + length, b"Transfer-Encoding: chunked"],
        [b"Transfer-Encoding: chunked", b"Content-Length: " + length],
        [b"Content-Length: " + length, b"Content-Length: " + length],
        [b"Content-Length: +" + length], [b"Content-Length: " + length + b" , " + length],
        [b"Transfer-Encoding: gzip"], [b"Transfer-Encoding: chunked, chunked"],
        [b"Transfer-Encoding: identity"], [b"Transfer-Encoding:\x0bchunked"]]))
    return choice, body


@st.composite
def sized(draw) -> list[bytes]:
    """Fields at gunicorn's limits: one field line near its size limit, or about as many
    fields as it allows."""
    if draw(st.booleans()):
        size = FIELD_LIMIT + draw(st.integers(-4, 4))
        return [b"X-Filler: " + b"a" * (size - len(b"X-Filler: "))]
    return [b"X-F%d: v" % i for i in range(FIELDS_LIMIT - 4 + draw(st.integers(-3, 5)))]


@st.composite
def request(draw, paths: list[tuple[str, tuple[str, ...]]]) -> bytes:
    """One request's bytes: a download the lean cycle would answer, with legal variations
    (half of them), or made malformed in one or more ways."""
    path, extra = draw(st.sampled_from(paths))
    legal = draw(st.booleans())
    method, target, version = b"GET", path.encode(), b"HTTP/1.1"
    if draw(st.integers(0, 3)) == 0:
        version = b"HTTP/1.0"
    if draw(st.integers(0, 7)) == 0:
        method = draw(st.sampled_from([b"HEAD", b"POST", b"PUT"] if legal else
                                      [b"get", b"G\x00T", b"GET\t", b""]))
    if draw(st.integers(0, 7)) == 0:
        target = draw(st.sampled_from(
            [target + b"?version=1", b"//" + target[1:], target + b"?",
             b"/files/%31/download", b"/" + b"a" * (LINE_LIMIT - 15 + draw(st.integers(-3, 3)))]
            if legal else
            [target + draw(ANY_BYTES), b"", b"*", target + b"#x", target + b"\x7f"]))
    if not legal and draw(st.integers(0, 7)) == 0:
        version = draw(st.sampled_from([b"HTTP/1.2", b"HTTP/2.0", b"http/1.1", b"HTTP/1.1 ",
                                        b"HTTP/1"]))
    line = method + b" " + target + b" " + version
    if draw(st.integers(0, 19)) == 0:
        line = draw(st.sampled_from([b"\r\n"] if legal else [b"\n", b" ", b"\r"])) + line
    lines = [b"Host: portal.test", b"User-Agent: case-fuzz",
             *[e.encode("latin-1") for e in extra], *draw(fields(legal))]
    body = b""
    if draw(st.integers(0, 3 if not legal else 11)) == 0:
        frame, body = draw(framing())
        lines += frame
    if draw(st.integers(0, 19)) == 0:
        lines += draw(sized())
    lines = draw(st.permutations(lines))
    ends = [b"\r\n"] * len(lines)
    if not legal and lines and draw(st.booleans()):
        ends[draw(st.integers(0, len(lines) - 1))] = draw(LINE_ENDS)
    head = line + b"\r\n" + b"".join(f + e for f, e in zip(lines, ends, strict=True))
    blank = b"\r\n" if legal or draw(st.integers(0, 3)) else draw(LINE_ENDS)
    return head + blank + body


@st.composite
def connection(draw, paths) -> list[bytes]:
    """One to three requests pipelined, cut into one to four segments."""
    raw = b"".join(draw(st.lists(request(paths), min_size=1, max_size=3)))
    cuts = sorted(draw(st.lists(st.integers(1, max(1, len(raw) - 1)), max_size=3,
                                unique=True)))
    bounds = [0, *cuts, len(raw)]
    return [raw[a:b] for a, b in itertools.pairwise(bounds) if raw[a:b]]


def test_generated_heads_are_answered_alike(servers):
    lean, _, ids, cookie = servers
    paths = warm_paths(ids, cookie)
    since = len(lean.log.read_text("utf-8"))

    @settings(max_examples=CASES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.function_scoped_fixture])
    @given(connection(paths))
    def answered_alike(pieces):
        same_on_both(servers, pieces)

    answered_alike()
    # Not a vacuous equality: the lean cycle answered a good share of them itself (about
    # one connection in six does it now).
    wait_for(lambda: lean_lines(lean, since).get("fuzz", []).count("1") >= CASES // 20,
             PATIENCE, "generated downloads answered in the lean cycle")


# ---------------------------------------------------------------------------
# The findings, by name
# ---------------------------------------------------------------------------

def smuggled(path: str, hidden: str, field: str) -> bytes:
    """A download whose X-Pad value hides ``field`` behind a bare CR, then a second request
    (what a proxy that splits lines on CR would see as the body), then a third."""
    second = f"GET {hidden} HTTP/1.1\r\nHost: x\r\nUser-Agent: case-hidden\r\n\r\n"
    return (f"GET {path} HTTP/1.1\r\nHost: x\r\nUser-Agent: case-smuggle\r\n"
            f"X-Pad: a\r{field}\r\n\r\n{second}"
            f"GET {path} HTTP/1.1\r\nHost: x\r\nUser-Agent: case-third\r\n\r\n").encode()


@pytest.mark.parametrize("field", ["Content-Length: 77", "Transfer-Encoding: chunked"])
@pytest.mark.parametrize("door", ["download", "grant"])
def test_a_bare_cr_in_a_value_smuggles_nothing(servers, field, door):
    lean, _, ids, _ = servers
    public = f"/files/{ids['public']}/download"
    path = public if door == "download" else f"/_portal/grant/files/{ids['public']}/download"
    raw = smuggled(path, f"/files/{ids['private']}/download", field)
    same_on_both(servers, [raw])
    responses, _, closed = exchange_all(lean, [raw])
    assert [r[0].split()[1] for r in responses] == ["400"]
    assert closed


@pytest.mark.parametrize("byte", [b"\x01", b"\x0b", b"\x0c", b"\x7f", b"\x1b[31m", b"\r"])
def test_control_characters_in_a_value_are_refused(servers, byte):
    lean, _, ids, _ = servers
    raw = req("ctl", f"/files/{ids['public']}/download").replace(
        b"User-Agent: case-ctl", b"User-Agent: case-ctl" + byte + b"x")
    same_on_both(servers, [raw])
    responses, _, _ = exchange_all(lean, [raw])
    assert [r[0].split()[1] for r in responses] == ["400"]


def test_a_range_with_a_control_character_is_refused(servers):
    lean, _, ids, cookie = servers
    raw = req("range-vt", f"/files/{ids['private']}/download", f"Cookie: {cookie}",
              "Range: bytes=0-9\x0b")
    same_on_both(servers, [raw])
    responses, _, _ = exchange_all(lean, [raw])
    assert [r[0].split()[1] for r in responses] == ["400"]


def test_bare_lf_line_ends_are_answered_at_once(servers):
    lean, _, ids, _ = servers
    raw = req("bare-lf", f"/files/{ids['public']}/download").replace(b"\r\n", b"\n")
    # No FIN after it: the answer may not wait for the client to give up.
    sock = socket.create_connection(("127.0.0.1", lean.port), timeout=PATIENCE)
    try:
        sock.sendall(raw)
        assert sock.recv(65536).startswith(b"HTTP/1.1 400 ")
    finally:
        sock.close()
    same_on_both(servers, [raw])


def test_a_head_sent_a_byte_at_a_time_has_gunicorns_deadline(servers):
    """gunicorn gives a head keepalive seconds (5 under gunicorn.conf.py) to arrive whole;
    a client that keeps trickling it is closed, however often each byte comes."""
    lean, plain, ids, _ = servers
    head = req("trickle", f"/files/{ids['public']}/download")[:-4] + b"\r\nX-Pad: "
    for server in (lean, plain):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=PATIENCE)
        try:
            sock.sendall(head)
            closed, started = False, time.monotonic()
            while not closed and time.monotonic() - started < 4 * PATIENCE:
                try:
                    sock.sendall(b"a")
                    sock.settimeout(0.3)
                    closed = sock.recv(1) == b""
                except TimeoutError:
                    pass
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
            assert closed, server.port
        finally:
            sock.close()


def test_the_access_line_escapes_what_is_not_printable(servers):
    lean, _, ids, _ = servers
    since = len(lean.log.read_text("utf-8"))
    # A tab and obs-text pass gunicorn's parser; 0x9b is a terminal's CSI.
    raw = req("esc\tme", f"/files/{ids['public']}/download").replace(
        b"case-esc\tme", b"case-esc\tme\x9b31m\xe4")
    responses, _, _ = exchange_all(lean, [raw])
    assert responses[0][0] == "HTTP/1.1 200 OK"
    wait_for(lambda: "case-esc" in lean.log.read_text("utf-8")[since:], PATIENCE,
             "the access line")
    line = next(line for line in lean.log.read_text("utf-8")[since:].splitlines()
                if "case-esc" in line)
    assert "case-esc\\x09me\\x9B31m\\xE4" in line
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in line)


def test_a_refused_head_is_answered_in_the_language_it_asks_for(servers):
    """gunicorn's refusal, said with the portal's page: English when the refused head's
    Accept-Language can be read and prefers it (portal/errorpages.py)."""
    lean, plain, ids, _ = servers
    raw = req("refused-en", f"/files/{ids['public']}/download", "Accept-Language: en-GB,en",
              "X-Filler: " + "a" * (FIELD_LIMIT + 10))
    got, want = exchange_all(lean, [raw]), exchange_all(plain, [raw])
    statuses = [r[0] for r in want[0]]
    assert [r[0] for r in got[0]] == statuses == ["HTTP/1.1 431 Request Header Fields Too Large"]
    assert_portal_error_page(got[0][0], statuses[0], "en")
    assert got[2] and want[2]  # both closed


def test_a_plain_download_is_still_answered_in_the_lean_cycle(servers):
    """The refusals above are not the lean cycle switched off."""
    lean, _, ids, _ = servers
    since = len(lean.log.read_text("utf-8"))
    exchange_all(lean, [req("plain", f"/files/{ids['public']}/download")])
    wait_for(lambda: lean_lines(lean, since).get("plain"), PATIENCE, "the access line")
    assert lean_lines(lean, since)["plain"] == ["1"]
