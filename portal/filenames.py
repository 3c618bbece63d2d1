"""Untrusted names made safe to show and store: one set of hidden characters for all doors.

A file name arrives from an upload, an archive member or a stored version; a title or a
description arrives with an upload. Whatever the door, the same characters are the danger:
C0/C1 controls, and invisible characters that reorder or hide text ("\\u202egnp.exe" displays
as "exe.png"). :func:`clean_filename` removes them from a name; :func:`has_hidden_characters`
says whether a text carries any, for fields that are refused rather than cleaned. No Flask, no
HTTP: ``download/http/`` builds Content-Disposition on top of this, ``download/zipplan.py``
names archive members with it.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = [
    "FALLBACK_NAME",
    "cap_length",
    "clean_filename",
    "has_hidden_characters",
    "split_extension",
]

FALLBACK_NAME = "download"
_MAX_FILENAME_CHARS = 200
_MAX_EXTENSION_CHARS = 16
# Invisible characters that reorder or hide text: the bidi embeddings,
# overrides, isolates and marks, plus zero-width characters that can disguise
# a name (U+200B, U+2060, U+FEFF).  ZWJ/ZWNJ are kept because emoji sequences
# and several scripts need them.
_INVISIBLE = frozenset(
    "\u061c\u200b\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2060\u2066\u2067\u2068\u2069\ufeff"
)
_WHITESPACE_RE = re.compile(r"\s+")
# What Windows refuses in a name (macOS Finder shows ":" as "/", Linux refuses only "/",
# split off before): each becomes "_" so that the name saves as it is shown, everywhere.
_UNPORTABLE_RE = re.compile(r'[<>:"|?*]')
# Names Windows reserves for devices, with or without an extension ("CON.txt" too).
_RESERVED = frozenset(["CON", "PRN", "AUX", "NUL", *(f"COM{n}" for n in range(1, 10)),
                       *(f"LPT{n}" for n in range(1, 10))])


def _is_removed(ch: str) -> bool:
    code = ord(ch)
    return (
        code < 0x20  # C0 controls
        or 0x7F <= code <= 0x9F  # DEL and C1 controls
        or 0xD800 <= code <= 0xDFFF  # lone surrogates (surrogateescape'd bytes)
        or ch in _INVISIBLE
    )


def has_hidden_characters(text: str, *, allow: str = "") -> bool:
    """True when ``text`` holds a control or invisible character (those not in ``allow``).

    The same characters :func:`clean_filename` removes from a name; ``allow`` lets a
    multi-line field keep, say, ``"\\t\\n\\r"``.
    """
    return any(_is_removed(ch) and ch not in allow for ch in text)


def split_extension(name: str) -> tuple[str, str]:
    """``(stem, ".ext")`` for a short dotted suffix without spaces after a non-empty stem,
    else ``(name, "")``."""
    dot = name.rfind(".")
    ext_len = len(name) - dot - 1
    if dot > 0 and 1 <= ext_len <= _MAX_EXTENSION_CHARS and " " not in name[dot:]:
        return name[:dot], name[dot:]
    return name, ""


def cap_length(name: str) -> str:
    """``name`` cut to 200 characters, keeping its extension."""
    if len(name) <= _MAX_FILENAME_CHARS:
        return name
    stem, ext = split_extension(name)
    stem = stem[: _MAX_FILENAME_CHARS - len(ext)].rstrip(" .")
    return stem + ext if stem else name[:_MAX_FILENAME_CHARS].rstrip(" .")


def clean_filename(name: str) -> str:
    """Turn an untrusted file name into a safe, display-honest base name.

    Steps: keep only the last path component (both ``/`` and ``\\``
    separate); map every run of whitespace to one space; drop C0/C1 controls,
    DEL, lone surrogates, bidi controls (U+202A-U+202E, U+2066-U+2069, U+200E,
    U+200F, U+061C) and zero-width spaces/BOM (U+200B, U+2060, U+FEFF); NFC-normalise;
    strip leading/trailing spaces and dots (a leading dot would make a hidden
    file, a trailing one is dropped by Windows anyway); replace the characters Windows
    refuses (``<>:"|?*``) by ``_`` and put ``_`` before its device names (``CON``,
    ``NUL.txt``, ``COM1``...), so the name saves as shown on every system while Chinese and
    other scripts stay as they are; cap at 200 characters
    keeping the extension; fall back to ``"download"`` if nothing is left.
    """
    name = re.split(r"[/\\]", name)[-1]
    name = _WHITESPACE_RE.sub(" ", name)
    name = "".join(ch for ch in name if not _is_removed(ch))
    # NFC only after removal: a removed control between a letter and its
    # combining mark would otherwise leave a non-normalised pair behind.
    name = unicodedata.normalize("NFC", name)
    name = _UNPORTABLE_RE.sub("_", name)
    # Removing characters can bring two spaces together again.
    name = re.sub(" {2,}", " ", name).strip(" .")
    if name.split(".", 1)[0].rstrip(" ").upper() in _RESERVED:
        name = "_" + name
    name = cap_length(name)
    return name or FALLBACK_NAME
