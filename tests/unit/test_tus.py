"""The tus header grammar (portal/uploads/tus.py), without an app."""

import base64
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portal.uploads import tus


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(("header", "expected"), [
    (None, {}),
    ("", {}),
    ("   ", {}),
    (f"filename {b64('a.pdf')}", {"filename": b"a.pdf"}),
    (f"filename {b64('课程表.pdf')},title {b64('课程表')}",
     {"filename": "课程表.pdf".encode(), "title": "课程表".encode()}),
    (f"filename {b64('a.pdf')}, is_confidential", {"filename": b"a.pdf", "is_confidential": None}),
    ("empty ", {"empty": None}),  # an empty value is no value
    (f"empty ,filename {b64('a')}", {"empty": None, "filename": b"a"}),
    ("nopad YQ", {"nopad": b"a"}),  # some clients drop the padding
])
def test_parse_metadata_accepts(header, expected):
    assert tus.parse_metadata(header) == expected


@pytest.mark.parametrize("header", [
    f"filename {b64('a')},filename {b64('b')}",  # duplicate key
    "filename not*base64",
    "filename YQ=x",
    "filename Y",  # impossible base64 length
    f"filename {b64('a')} extra",  # three parts
    f" ,filename {b64('a')}",  # empty key
    "fil\u00e9name YQ==",  # non-ASCII key
    "a" * (tus.MAX_METADATA_CHARS + 1),
])
def test_parse_metadata_refuses(header):
    with pytest.raises(tus.TusHeaderError):
        tus.parse_metadata(header)


@given(st.dictionaries(
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=","),
            min_size=1, max_size=20),
    st.one_of(st.none(), st.binary(max_size=100)), max_size=8))
def test_metadata_round_trip(pairs):
    assert tus.parse_metadata(tus.format_metadata(pairs)) == {
        key: value or None for key, value in pairs.items()}


@pytest.mark.parametrize(("value", "expected"), [
    ("0", 0), ("42", 42), (" 7 ", 7), ("9223372036854775807", 2**63 - 1)])
def test_parse_size_accepts(value, expected):
    assert tus.parse_size(value, "Upload-Length") == expected


@pytest.mark.parametrize("value", [None, "", "-1", "+1", "1.0", "0x10", "1e3", "١٢",
                                   "9223372036854775808", "99999999999999999999"])
def test_parse_size_refuses(value):
    with pytest.raises(tus.TusHeaderError, match="Upload-Offset"):
        tus.parse_size(value, "Upload-Offset")


def test_parse_checksum():
    digest = hashlib.sha256(b"hello").digest()
    assert tus.parse_checksum(None) is None
    assert tus.parse_checksum("") is None
    assert tus.parse_checksum("sha256 " + base64.b64encode(digest).decode()) == ("sha256", digest)
    assert tus.parse_checksum("SHA256 " + base64.b64encode(digest).decode()) == ("sha256", digest)
    sha1 = hashlib.sha1(b"hello").digest()
    assert tus.parse_checksum("sha1 " + base64.b64encode(sha1).decode()) == ("sha1", sha1)
    assert tus.format_checksum("sha256", b"hello") == "sha256 " + base64.b64encode(
        digest).decode()


@pytest.mark.parametrize("value", [
    "md5 XUFAKrxLKna5cZ2REBfFkg==",  # not offered
    "crc32 AAAAAA==",
    "sha256",  # no digest
    "sha256 ***",
    "sha256 " + base64.b64encode(b"short").decode(),  # wrong digest length
    "sha1 " + base64.b64encode(hashlib.sha256(b"x").digest()).decode(),
])
def test_parse_checksum_refuses(value):
    with pytest.raises(tus.TusHeaderError):
        tus.parse_checksum(value)


@pytest.mark.parametrize(("value", "expected"), [
    ("application/offset+octet-stream", True),
    ("Application/Offset+Octet-Stream; charset=binary", True),
    ("application/octet-stream", False),
    ("", False),
    (None, False),
])
def test_is_offset_stream(value, expected):
    assert tus.is_offset_stream(value) is expected


def test_version_and_options():
    assert tus.supports_version("1.0.0")
    assert not tus.supports_version("0.2.2")
    assert not tus.supports_version(None)
    headers = tus.options_headers(1234)
    assert headers["Tus-Version"] == "1.0.0"
    assert headers["Tus-Max-Size"] == "1234"
    assert set(headers["Tus-Extension"].split(",")) == {
        "creation", "creation-with-upload", "termination", "checksum"}
    assert set(headers["Tus-Checksum-Algorithm"].split(",")) == {"sha256", "sha1"}
    with pytest.raises(tus.TusHeaderError):
        tus.new_checksum("md5")
