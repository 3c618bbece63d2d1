"""Content-Disposition (RFC 6266, RFC 8187) with an ASCII fallback and a UTF-8 filename."""

from __future__ import annotations

import functools
import re
import unicodedata
from urllib.parse import quote

from ...filenames import FALLBACK_NAME, cap_length, clean_filename, split_extension

# RFC 8187 attr-char minus what urllib.parse.quote already leaves alone.
_ATTR_CHAR_EXTRA = "!#$&+^`|"


# What a transliteration may leave in the fallback: letters, digits and the punctuation of
# ordinary names. Anything else it produces (":" from an emoji's ":grinning:", "<<" from
# guillemets) is not welcome in a file name on every system and becomes "_".
_TRANSLITERATED_OK = re.compile(r"[A-Za-z0-9 ._\-()'+,]")


def _transliterate(run: str) -> str:
    """ASCII for a run of non-ASCII characters: pinyin for Chinese, a romanisation for
    other scripts (anyascii: ISC, a few KB per script loaded on first use; pypinyin would
    read Chinese polyphones better, but keeps ~55 MB in every worker for a name only
    clients that ignore ``filename*`` ever see)."""
    from anyascii import anyascii

    out = "".join(ch if _TRANSLITERATED_OK.match(ch) else "_" for ch in anyascii(run))
    return re.sub("_{2,}", "_", out) or "_"


def _ascii_fallback(name: str) -> str:
    """ASCII approximation of an already cleaned name for ``filename=``: accents dropped,
    other scripts transliterated ("数据结构-第02章.pdf" -> "ShuJuJieGou-Di02Zhang.pdf")."""
    out: list[str] = []
    run: list[str] = []  # non-ASCII characters waiting to be transliterated together
    # NFKD splits accented letters into base + combining mark (é -> e) and
    # maps compatibility forms (fullwidth letters, ligatures) to ASCII.
    for ch in unicodedata.normalize("NFKD", name) + "\0":
        if unicodedata.combining(ch):
            continue
        if ch.isascii() and run:
            out.append(_transliterate("".join(run)))
            run = []
        if ch == "\0":
            break
        if ch.isascii() and ch.isprintable():
            if ch in '"\\':
                continue  # cannot appear inside a quoted-string unescaped
            # "/" can come back from NFKD (fullwidth solidus); "%" followed by
            # hex is percent-decoded by some agents (RFC 6266 appendix D).
            out.append("_" if ch in "/%" else ch)
        elif not ch.isascii():
            run.append(ch)
    fallback = re.sub(" {2,}", " ", "".join(out)).strip(" .")
    fallback = cap_length(fallback)
    stem, ext = split_extension(fallback)
    if not stem.strip("_ ."):
        # Nothing recognisable survived (characters no table knows): a generic stem
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
