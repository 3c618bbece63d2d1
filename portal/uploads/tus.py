"""The tus 1.0.0 header grammar, without Flask: parse, validate and format.

Covers what the portal speaks (core, creation, creation-with-upload, termination, checksum):
``Tus-Resumable``, ``Upload-Length``, ``Upload-Offset``, ``Upload-Metadata`` and
``Upload-Checksum``. Every parser raises ``TusHeaderError`` (a ValueError) with a message
fit for the client; the views turn it into 400 JSON.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping

from .errors import N_, WordedError

VERSION = "1.0.0"
SUPPORTED_VERSIONS = (VERSION,)
EXTENSIONS = ("creation", "creation-with-upload", "termination", "checksum")
CHECKSUM_ALGORITHMS = ("sha256", "sha1")
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"
CHECKSUM_MISMATCH = 460  # tus-specific status: the body does not match Upload-Checksum

MAX_METADATA_CHARS = 8192  # the whole header; a browser sends a few hundred bytes
_DIGITS = re.compile(r"^[0-9]{1,19}$")  # fits a signed 64-bit BigInteger
# A key is any run of visible ASCII except comma (the pair separator); space separates key/value.
_KEY = re.compile(r"^[\x21-\x2b\x2d-\x7e]+$")
_BASE64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")


class TusHeaderError(WordedError, ValueError):
    """A tus header that is missing where required, malformed or unsupported."""


def supports_version(value: str | None) -> bool:
    """True when the client's Tus-Resumable names a version this server speaks."""
    return (value or "").strip() in SUPPORTED_VERSIONS


def parse_size(value: str | None, name: str) -> int:
    """A non-negative decimal integer header (Upload-Length, Upload-Offset)."""
    value = (value or "").strip()
    if not _DIGITS.match(value):
        raise TusHeaderError(N_("%(name)s must be a non-negative integer"), name=name)
    number = int(value)
    if number > 2**63 - 1:
        raise TusHeaderError(N_("%(name)s is too large"), name=name)
    return number


def _b64decode(text: str, refusal: str, **values: object) -> bytes:
    """Strict standard base64 (padding optional, as some clients omit it); else a
    TusHeaderError with the given message."""
    if not _BASE64.match(text) or len(text.rstrip("=")) % 4 == 1:
        raise TusHeaderError(refusal, **values)
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise TusHeaderError(refusal, **values) from exc


def parse_metadata(value: str | None) -> dict[str, bytes | None]:
    """Upload-Metadata: ``key base64value`` pairs separated by commas; a key may stand alone.

    Keys must be unique. Values are returned as raw bytes (the caller decides the text
    encoding); a key without a value, or with an empty one, maps to None (HTTP trims the
    trailing space that would tell them apart). An empty or absent header gives {}.
    """
    value = (value or "").strip()
    if not value:
        return {}
    if len(value) > MAX_METADATA_CHARS:
        raise TusHeaderError(N_("Upload-Metadata is too long"))
    pairs: dict[str, bytes | None] = {}
    for item in value.split(","):
        parts = item.strip().split(" ")
        if len(parts) > 2 or not parts[0]:
            raise TusHeaderError(N_("Upload-Metadata must be comma-separated 'key base64' pairs"))
        key = parts[0]
        if not _KEY.match(key):
            raise TusHeaderError(N_("invalid Upload-Metadata key %(key)s"), key=repr(key[:40]))
        if key in pairs:
            raise TusHeaderError(N_("duplicate Upload-Metadata key %(key)s"), key=repr(key[:40]))
        value = _b64decode(parts[1], N_("the Upload-Metadata value of %(key)s is not valid "
                                        "base64"), key=repr(key)) if len(parts) == 2 else b""
        pairs[key] = value or None
    return pairs


def format_metadata(pairs: Mapping[str, str | bytes | None]) -> str:
    """The Upload-Metadata header for these pairs (str values are UTF-8 encoded)."""
    items = []
    for key, raw in pairs.items():
        if not _KEY.match(key):
            raise ValueError(f"invalid Upload-Metadata key {key!r}")
        if raw is None:
            items.append(key)
            continue
        data = raw.encode() if isinstance(raw, str) else raw
        items.append(f"{key} {base64.b64encode(data).decode('ascii')}")
    return ",".join(items)


def parse_checksum(value: str | None) -> tuple[str, bytes] | None:
    """Upload-Checksum: ``algorithm base64digest``; None when absent.

    An unsupported algorithm or a digest of the wrong length is a TusHeaderError (the
    spec answers 400 for an algorithm the server does not support).
    """
    value = (value or "").strip()
    if not value:
        return None
    algorithm, _, encoded = value.partition(" ")
    algorithm = algorithm.lower()
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise TusHeaderError(N_("unsupported checksum algorithm %(algorithm)s; use %(known)s"),
                             algorithm=repr(algorithm[:20]), known=" / ".join(CHECKSUM_ALGORITHMS))
    digest = _b64decode(encoded.strip(), N_("Upload-Checksum is not valid base64"))
    if len(digest) != hashlib.new(algorithm).digest_size:
        raise TusHeaderError(N_("Upload-Checksum is not a %(algorithm)s digest"),
                             algorithm=algorithm)
    return algorithm, digest


def new_checksum(algorithm: str):
    """A fresh hashlib object for a supported algorithm."""
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise TusHeaderError(N_("unsupported checksum algorithm %(algorithm)s; use %(known)s"),
                             algorithm=repr(algorithm), known=" / ".join(CHECKSUM_ALGORITHMS))
    return hashlib.new(algorithm)


def format_checksum(algorithm: str, data: bytes) -> str:
    """The Upload-Checksum header a client sends for this body."""
    digest = new_checksum(algorithm)
    digest.update(data)
    return f"{algorithm} {base64.b64encode(digest.digest()).decode('ascii')}"


def is_offset_stream(content_type: str | None) -> bool:
    """True for ``application/offset+octet-stream`` (parameters and case ignored)."""
    return (content_type or "").split(";", 1)[0].strip().lower() == OFFSET_CONTENT_TYPE


def options_headers(max_size: int) -> dict[str, str]:
    """What OPTIONS advertises: versions, extensions, the size limit, checksum algorithms."""
    return {
        "Tus-Resumable": VERSION,
        "Tus-Version": ",".join(SUPPORTED_VERSIONS),
        "Tus-Extension": ",".join(EXTENSIONS),
        "Tus-Max-Size": str(max_size),
        "Tus-Checksum-Algorithm": ",".join(CHECKSUM_ALGORITHMS),
    }
