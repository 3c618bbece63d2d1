"""Content-Disposition (RFC 6266, RFC 8187) with an ASCII fallback and a UTF-8 filename."""

from __future__ import annotations

import functools
import re
import unicodedata
from urllib.parse import quote

from ...filenames import FALLBACK_NAME, cap_length, clean_filename, split_extension

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
