"""Content-type safety, digests, validators: what the stored bytes allow us to say."""

from __future__ import annotations

import base64
import re

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
