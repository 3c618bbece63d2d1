"""Tests for portal.filenames: cleaning untrusted names, and the one set of hidden characters."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portal.filenames import (
    FALLBACK_NAME,
    cap_length,
    clean_filename,
    has_hidden_characters,
    split_extension,
)

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    database=None,  # do not write .hypothesis/ into the repository
    suppress_health_check=[HealthCheck.too_slow],
)

# Every invisible character the portal refuses in a title and removes from a name: bidi
# embeddings, overrides, isolates and marks, and the zero-width space, word joiner and BOM.
INVISIBLE = [
    "\u061c", "\u200b", "\u200e", "\u200f", "\u202a", "\u202b", "\u202c", "\u202d", "\u202e",
    "\u2060", "\u2066", "\u2067", "\u2068", "\u2069", "\ufeff",
]
CONTROLS = ["\x00", "\x07", "\x1b", "\x7f", "\x80", "\x9b", "\x9f"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        ("a/b\\c.txt", "c.txt"),
        ("dir/", "download"),
        ("", "download"),
        ("   ", "download"),
        ("...", "download"),
        ("\u202e\u2066\u200f", "download"),
        (".bashrc", "bashrc"),
        ("name. ", "name"),
        ("a \t\n  b.txt", "a b.txt"),
        ("a\u3000\u00a0b.txt", "a b.txt"),
        ("a\x00b\x07c\x7fd\x9be.txt", "abcde.txt"),
        ("a \x00 b.txt", "a b.txt"),
        ("\u202egnp.exe", "gnp.exe"),
        ("invoice\u202efdp.exe", "invoicefdp.exe"),
        ("x\u202a\u202b\u202c\u202d\u2066\u2067\u2068\u2069\u200e\u200f\u061cy", "xy"),
        ("zero\u200bwidth\ufeff.txt", "zerowidth.txt"),
        ("a\udcffb.txt", "ab.txt"),
        ("e\u0301.txt", "\u00e9.txt"),  # NFC
        ("a" * 300 + ".pdf", "a" * 196 + ".pdf"),
        ("字" * 300 + ".pdf", "字" * 196 + ".pdf"),
        ("b" * 250, "b" * 200),
        ("c" * 195 + "  " + "d" * 10 + ".pdf", "c" * 195 + ".pdf"),
        # zero-width characters, each on its own
        ("lec\u200bture.pdf", "lecture.pdf"),
        ("lec\u2060ture.pdf", "lecture.pdf"),
        ("\ufefflecture.pdf", "lecture.pdf"),
        ("\u200b\u2060\ufeff", "download"),
        ("report\u200b.\u2060pdf", "report.pdf"),
        # RLO: "作业\u202efdp.exe" would display as "作业exe.pdf"
        ("作业\u202efdp.exe", "作业fdp.exe"),
        ("\u202e\u200b.exe", "exe"),
        # ZWJ and ZWNJ stay: emoji sequences and Persian, Indic scripts need them
        ("family \U0001f468\u200d\U0001f469\u200d\U0001f467.txt",
         "family \U0001f468\u200d\U0001f469\u200d\U0001f467.txt"),
        ("\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645.txt",
         "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645.txt"),
        # Chinese names are kept as they are, whatever the path around them
        ("2026年秋季学期课程表.pdf", "2026年秋季学期课程表.pdf"),
        ("C:\\Users\\me\\作业.doc", "作业.doc"),
        ("课程/讲义 第1章.pdf", "讲义 第1章.pdf"),
        ("讲义\u3000第1章.pdf", "讲义 第1章.pdf"),
        ("..\\..\\boot.ini", "boot.ini"),
        # what Windows refuses (macOS and Linux with it), and its device names
        ("a/b\\c:d*e?f.txt", "c_d_e_f.txt"),
        ('报告<终稿>|"v2"?.pdf', "报告_终稿___v2__.pdf"),
        ("CON", "_CON"),
        ("nul.txt", "_nul.txt"),
        ("Com1 .tar.gz", "_Com1 .tar.gz"),
        ("LPT9.doc", "_LPT9.doc"),
        ("CONSOLE.txt", "CONSOLE.txt"),
        ("COM10.txt", "COM10.txt"),
        ("/srv/portal/../../x.txt", "x.txt"),
        # length cap: the extension survives only if it is one (<= 16 characters, no space)
        ("字" * 199 + ".pdf", "字" * 196 + ".pdf"),
        ("x" * 200 + ".abcdefghijklmnopq", "x" * 200),
        ("y" * 198 + ". pdf", "y" * 198),
        ("z" * 250 + "." * 3, "z" * 200),
    ],
)
def test_clean_filename(name, expected):
    assert clean_filename(name) == expected


@pytest.mark.parametrize("ch", INVISIBLE + CONTROLS)
def test_one_set_of_hidden_characters_for_names_and_titles(ch):
    assert has_hidden_characters(f"a{ch}b")
    assert clean_filename(f"a{ch}b.txt") == "ab.txt"


@pytest.mark.parametrize(
    ("text", "allow", "expected"),
    [
        ("", "", False),
        ("第一章讲义", "", False),
        ("Lecture 1: intro (v2)", "", False),
        ("a\u200db \u200c", "", False),  # ZWJ, ZWNJ
        ("\u00a0\u3000", "", False),  # visible spaces
        ("bad\u202etitle", "", True),
        ("bad\u200btitle", "", True),
        ("bad\u2060title", "", True),
        ("\ufeffbad", "", True),
        ("line\nbreak", "", True),
        ("line\nbreak\ttab\r", "\t\n\r", False),
        ("line\n\x00", "\t\n\r", True),
        ("line\n\u200b", "\t\n\r", True),
    ],
)
def test_has_hidden_characters(text, allow, expected):
    assert has_hidden_characters(text, allow=allow) is expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("notes.pdf", ("notes", ".pdf")),
        ("archive.tar.gz", ("archive.tar", ".gz")),
        (".bashrc", (".bashrc", "")),
        ("notes", ("notes", "")),
        ("notes.", ("notes.", "")),
        ("a.b c", ("a.b c", "")),
        ("a." + "x" * 16, ("a", "." + "x" * 16)),
        ("a." + "x" * 17, ("a." + "x" * 17, "")),
        ("讲义.幻灯片", ("讲义", ".幻灯片")),
    ],
)
def test_split_extension(name, expected):
    assert split_extension(name) == expected


def test_cap_length_keeps_short_names_and_the_extension():
    assert cap_length("a.pdf") == "a.pdf"
    assert cap_length("a" * 200) == "a" * 200
    assert cap_length("a" * 201 + ".pdf") == "a" * 196 + ".pdf"
    assert cap_length("a" * 195 + " " * 10 + ".pdf") == "a" * 195 + ".pdf"


@SETTINGS
@given(name=st.text(max_size=400))
def test_property_a_cleaned_name_is_safe_and_stable(name):
    cleaned = clean_filename(name)
    assert cleaned and len(cleaned) <= 200
    assert "/" not in cleaned and "\\" not in cleaned
    assert not set('<>:"|?*') & set(cleaned)
    assert cleaned.split(".", 1)[0].rstrip(" ").upper() not in {
        "CON", "PRN", "AUX", "NUL", *(f"{d}{n}" for d in ("COM", "LPT") for n in range(1, 10))}
    assert not has_hidden_characters(cleaned)
    assert cleaned == cleaned.strip(" .")
    assert unicodedata.is_normalized("NFC", cleaned)
    assert clean_filename(cleaned) == cleaned


@SETTINGS
@given(text=st.text(alphabet=st.sampled_from([*INVISIBLE, *CONTROLS, "a", "字", " "]),
                    max_size=30))
def test_property_hidden_means_removed(text):
    assert has_hidden_characters(text) is any(ch in INVISIBLE + CONTROLS for ch in text)
    assert not set(clean_filename(text)) & set(INVISIBLE + CONTROLS)
    if not text.strip(" "):
        assert clean_filename(text) == FALLBACK_NAME
